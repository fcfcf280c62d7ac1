//! Creating a cluster's certificate authority and the certificates it issues, one directory per
//! identity, as [`crate::tls::CertFiles`] reads them:
//!
//! ```text
//! paxos-certs/ca/       ca.pem, ca.key         the CA: keep it off every machine that runs a process
//! paxos-certs/node-1/   ca.pem, cert.pem, key.pem   hand to node 1 only
//! paxos-certs/client/   ca.pem, cert.pem, key.pem   hand to clients (propose, read)
//! paxos-certs/admin/    ca.pem, cert.pem, key.pem   hand to operators (gc, members, leader)
//! ```
//!
//! Each identity's directory is self-contained (its own copy of `ca.pem`), so a process is given
//! exactly its own directory: no process that runs the cluster needs `ca.key`, and a client
//! handed `client/` cannot mint a member or an admin.
//!
//! An existing CA is reused (so `paxos-cli certs --nodes 4` later issues node 4's certificate
//! for the same cluster); existing identities are left alone unless asked. Directories are
//! created 0700 and private keys 0600: readable by their owner only.

use crate::tls::{admin_name, any_node_name, check_cluster_name, client_name, node_name, TlsError};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use std::io::Write;
use std::path::{Path, PathBuf};

/// How long issued certificates are valid, in days.
const VALIDITY_DAYS: i64 = 3650;

/// What to issue.
#[derive(Clone, Debug, Default)]
pub struct IssueRequest {
    pub cluster: String,
    pub nodes: Vec<paxos_core::NodeId>,
    /// Also issue `client.pem` (propose and read).
    pub client: bool,
    /// Also issue `admin.pem` (gc and truncation too).
    pub admin: bool,
    /// Replace holder files that exist already (the CA is always kept).
    pub overwrite: bool,
}

/// What was written, for the caller to report.
#[derive(Clone, Debug, Default)]
pub struct Issued {
    pub ca_created: bool,
    pub written: Vec<PathBuf>,
    pub kept: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{}: {reason}", path.display())]
    BadCa { path: PathBuf, reason: String },
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("node id 0 is reserved; ids start at 1")]
    NodeZero,
}

/// Creates the CA in `dir` if it has none, then issues what `request` asks for.
pub fn issue(dir: &Path, request: &IssueRequest) -> Result<Issued, CertsError> {
    check_cluster_name(&request.cluster)?;
    if request.nodes.contains(&0) {
        return Err(CertsError::NodeZero);
    }
    if dir.join("ca.key").exists() && !dir.join("ca").exists() {
        // The flat layout of earlier versions: issuing here would make a second CA that the
        // cluster's members do not trust.
        return Err(CertsError::BadCa {
            path: dir.join("ca.key"),
            reason: "this directory has the flat layout of an earlier paxos-cli (ca.key beside the \
                     certificates); move ca.pem and ca.key into a ca/ directory beside it to issue \
                     from the same CA, then issue each identity again (--overwrite)"
                .into(),
        });
    }
    create_private_dir(dir)?;
    let mut issued = Issued::default();
    let ca_dir = dir.join("ca");
    create_private_dir(&ca_dir)?;
    let (ca_cert, ca_key) = load_or_create_ca(&ca_dir, &request.cluster, &mut issued)?;
    let ca_pem = std::fs::read(ca_dir.join("ca.pem"))
        .map_err(|error| CertsError::Io { path: ca_dir.join("ca.pem"), error })?;
    let cluster = &request.cluster;
    let mut holders: Vec<(String, Vec<String>, bool)> = Vec::new();
    for &id in &request.nodes {
        holders.push((format!("node-{id}"), vec![node_name(cluster, id), any_node_name(cluster)], true));
    }
    if request.client {
        holders.push(("client".into(), vec![client_name(cluster)], false));
    }
    if request.admin {
        holders.push(("admin".into(), vec![admin_name(cluster), client_name(cluster)], false));
    }
    for (name, dns_names, is_node) in holders {
        let holder_dir = dir.join(&name);
        let files = crate::tls::CertFiles::identity(&holder_dir);
        let (cert_path, key_path) = (files.cert, files.key);
        if !request.overwrite && (cert_path.exists() || key_path.exists()) {
            issued.kept.push(holder_dir);
            continue;
        }
        create_private_dir(&holder_dir)?;
        write_file(&files.ca, &ca_pem, false)?;
        let mut params = CertificateParams::new(dns_names)?;
        params.distinguished_name = distinguished_name(&format!("{name} of cluster {cluster}"));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Nodes both accept (server) and dial (client) links; clients only dial.
        params.extended_key_usages = if is_node {
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        set_validity(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
        write_file(&key_path, key.serialize_pem().as_bytes(), true)?;
        write_file(&cert_path, cert.pem().as_bytes(), false)?;
        issued.written.push(holder_dir);
    }
    Ok(issued)
}

/// Creates `dir` (and its parents) if missing, and makes it readable by its owner only.
fn create_private_dir(dir: &Path) -> Result<(), CertsError> {
    let io = |error| CertsError::Io { path: dir.to_owned(), error };
    std::fs::create_dir_all(dir).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    Ok(())
}

fn load_or_create_ca(
    dir: &Path,
    cluster: &str,
    issued: &mut Issued,
) -> Result<(rcgen::Certificate, KeyPair), CertsError> {
    let cert_path = dir.join("ca.pem");
    let key_path = dir.join("ca.key");
    if !cert_path.exists() && key_path.exists() {
        return Err(CertsError::BadCa {
            path: cert_path,
            reason: "missing, but ca.key exists: restore ca.pem rather than replace the CA".into(),
        });
    }
    if cert_path.exists() {
        let bad = |reason: String| CertsError::BadCa { path: cert_path.clone(), reason };
        let pem = std::fs::read_to_string(&cert_path)
            .map_err(|error| CertsError::Io { path: cert_path.clone(), error })?;
        let key_pem = std::fs::read_to_string(&key_path)
            .map_err(|error| CertsError::Io { path: key_path.clone(), error })?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| bad(format!("ca.key: {e}")))?;
        let params = CertificateParams::from_ca_cert_pem(&pem).map_err(|e| bad(e.to_string()))?;
        // Re-signing the parsed parameters gives an issuer with the CA's name and key, which is
        // all that signing needs; the file on disk stays as it is.
        let ca = params.self_signed(&key)?;
        return Ok((ca, key));
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(&format!("paxos cluster {cluster} CA"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params);
    let key = KeyPair::generate()?;
    let ca = params.self_signed(&key)?;
    write_file(&key_path, key.serialize_pem().as_bytes(), true)?;
    write_file(&cert_path, ca.pem().as_bytes(), false)?;
    issued.ca_created = true;
    issued.written.push(dir.to_owned());
    Ok((ca, key))
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

fn set_validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    // A day of slack for clocks that disagree a little.
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(VALIDITY_DAYS);
}

/// Writes `bytes` at `path` (replacing a file that exists) through a new file beside it,
/// created with mode 0600 for private keys, synced, then renamed over `path`: no process can
/// have the new key open under old permissions, and a crash leaves the old file or the new
/// one, never half of one.
fn write_file(path: &Path, bytes: &[u8], private: bool) -> Result<(), CertsError> {
    let io = |error| CertsError::Io { path: path.to_owned(), error };
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    let temporary = path.with_file_name(name);
    let _ = std::fs::remove_file(&temporary); // left by a crashed run of this process id
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options.open(&temporary).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    if let Err(error) = written.and_then(|()| std::fs::rename(&temporary, path)) {
        let _ = std::fs::remove_file(&temporary);
        return Err(io(error));
    }
    // The rename is durable once the directory is.
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{CertFiles, Tls};

    #[test]
    fn issued_certificates_load_and_name_their_holders() {
        let dir = tempfile::tempdir().expect("tempdir");
        let request = IssueRequest {
            cluster: "c1".into(),
            nodes: vec![1, 2],
            client: true,
            admin: true,
            overwrite: false,
        };
        let issued = issue(dir.path(), &request).expect("issue");
        assert!(issued.ca_created);
        assert_eq!(issued.written.len(), 5);
        Tls::for_node(&CertFiles::node(dir.path(), 1), "c1", 1).expect("node 1");
        // Node 2's files do not make node 1, and a client's files make no node.
        assert!(matches!(
            Tls::for_node(&CertFiles::node(dir.path(), 2), "c1", 1),
            Err(TlsError::WrongHolder { .. })
        ));
        assert!(Tls::for_node(&CertFiles::named(dir.path(), "client"), "c1", 1).is_err());
        Tls::for_client(&CertFiles::named(dir.path(), "client"), "c1").expect("client");
        Tls::for_client(&CertFiles::named(dir.path(), "admin"), "c1").expect("admin");
        // Another cluster's name does not match.
        assert!(Tls::for_client(&CertFiles::named(dir.path(), "client"), "c2").is_err());

        // Issuing later reuses the CA: node 3's certificate is trusted by node 1's CA file.
        let later = IssueRequest { cluster: "c1".into(), nodes: vec![3], ..Default::default() };
        let issued = issue(dir.path(), &later).expect("issue again");
        assert!(!issued.ca_created);
        let node3 = CertFiles::node(dir.path(), 3);
        Tls::for_node(&node3, "c1", 3).expect("node 3 chains to the same CA");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&node3.key).expect("key").permissions().mode();
            assert_eq!(mode & 0o077, 0, "private keys are not readable by others");
            // Replacing a key that someone made readable gives a private one again.
            std::fs::set_permissions(&node3.key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
            let again =
                IssueRequest { cluster: "c1".into(), nodes: vec![3], overwrite: true, ..Default::default() };
            issue(dir.path(), &again).expect("overwrite");
            let mode = std::fs::metadata(&node3.key).expect("key").permissions().mode();
            assert_eq!(mode & 0o077, 0, "an overwritten key is private");
            Tls::for_node(&node3, "c1", 3).expect("the new pair matches");
            // One directory per identity, each private, and no identity holds the CA's key.
            for name in ["ca", "node-1", "client", "admin"] {
                let mode = std::fs::metadata(dir.path().join(name)).expect("dir").permissions().mode();
                assert_eq!(mode & 0o777, 0o700, "{name}/ is its owner's only");
            }
            for name in ["node-1", "node-2", "node-3", "client", "admin"] {
                let files: Vec<_> = std::fs::read_dir(dir.path().join(name))
                    .expect("identity dir")
                    .map(|entry| entry.expect("entry").file_name().into_string().expect("utf-8"))
                    .collect();
                assert!(!files.iter().any(|f| f.contains("ca.key")), "{name}/ holds {files:?}");
                assert!(Path::new(&dir.path().join(name)).join("ca.pem").exists());
            }
        }
    }

    /// A directory of the earlier flat layout is not silently given a second CA.
    #[test]
    fn a_flat_directory_of_an_earlier_version_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ca.key"), "old").expect("write");
        let request = IssueRequest { cluster: "c1".into(), nodes: vec![1], ..Default::default() };
        let error = issue(dir.path(), &request).expect_err("refused");
        assert!(error.to_string().contains("flat layout"), "{error}");
        assert!(!dir.path().join("ca").exists());
    }

    #[test]
    fn another_clusters_ca_is_not_trusted() {
        let a = tempfile::tempdir().expect("tempdir");
        let b = tempfile::tempdir().expect("tempdir");
        for dir in [&a, &b] {
            let request = IssueRequest { cluster: "c1".into(), nodes: vec![1], ..Default::default() };
            issue(dir.path(), &request).expect("issue");
        }
        // b's node certificate with a's CA: the chain does not verify.
        let mixed = CertFiles { ca: a.path().join("node-1/ca.pem"), ..CertFiles::node(b.path(), 1) };
        assert!(matches!(Tls::for_node(&mixed, "c1", 1), Err(TlsError::WrongHolder { .. })));
    }
}
