//! Mutual TLS on every link, and what a certificate entitles its holder to.
//!
//! A cluster has its own certificate authority; every node and every client holds a certificate
//! it issued ([`crate::certs`] makes them). Both ends of every connection present one and check
//! the other's against the CA, so only holders of the cluster's certificates get in. What a
//! certificate may do is written in its DNS names, for this cluster's name:
//!
//! | holder | names | may |
//! |---|---|---|
//! | node `N` | `node-N.<cluster>`, `node.<cluster>` | be peer `N` (its Hello must say `N`) |
//! | client | `client.<cluster>` | propose, read history and status |
//! | admin | `admin.<cluster>`, `client.<cluster>` | also gc and truncation |
//!
//! A client dials any node as `node.<cluster>`; a node dials peer `N` as `node-N.<cluster>`, so a
//! node's certificate cannot answer for another node. Node certificates are for both TLS roles
//! (server and client authentication); client certificates are for client authentication only,
//! so a client's certificate cannot pose as a node even to a careless verifier.
//!
//! `Security::InsecurePlaintext` turns all of this off: anyone who can reach the port is a
//! member and an admin. Only an explicit `--insecure-plaintext` chooses it.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Whether links are authenticated and encrypted.
#[derive(Clone, Debug)]
pub enum Security {
    Tls(Arc<Tls>),
    /// No authentication, no encryption: anyone who reaches the port is trusted fully.
    InsecurePlaintext,
}

impl Security {
    pub fn is_tls(&self) -> bool {
        matches!(self, Security::Tls(_))
    }
}

/// Where one holder's certificate material is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    /// The cluster's CA certificate (PEM): the only issuer trusted.
    pub ca: PathBuf,
    /// This holder's certificate (PEM), possibly followed by intermediates.
    pub cert: PathBuf,
    /// This holder's private key (PEM).
    pub key: PathBuf,
}

impl CertFiles {
    /// The files of one identity's directory, as `paxos-cli certs` writes it (`certs/node-1/`,
    /// `certs/client/`, ...): `ca.pem`, `cert.pem` and `key.pem`, all a process needs and
    /// nothing more. This directory is what an operator hands to one process.
    pub fn identity(dir: &Path) -> CertFiles {
        CertFiles { ca: dir.join("ca.pem"), cert: dir.join("cert.pem"), key: dir.join("key.pem") }
    }

    /// The files of node `id` in a certificates directory laid out by `paxos-cli certs`.
    pub fn node(dir: &Path, id: paxos_core::NodeId) -> CertFiles {
        CertFiles::named(dir, &format!("node-{id}"))
    }

    /// The files of the holder called `name` (`client`, `admin`, `node-2`, ...) in a
    /// certificates directory laid out by `paxos-cli certs`: its own directory `dir/name`.
    pub fn named(dir: &Path, name: &str) -> CertFiles {
        CertFiles::identity(&dir.join(name))
    }
}

/// Why TLS could not be set up. All fatal: the files or the cluster name must change.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {error}", path.display())]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{} holds no PEM {what}", path.display())]
    Missing { path: PathBuf, what: &'static str },
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("cluster name {0:?} cannot be used with TLS: use lowercase letters, digits and '-', not only digits (it goes into certificate names)")]
    ClusterName(String),
    #[error("{} is not a certificate of {expected} (issued by {}?)", path.display(), ca.display())]
    WrongHolder { path: PathBuf, expected: String, ca: PathBuf },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The DNS name in node `id`'s certificate.
pub fn node_name(cluster: &str, id: paxos_core::NodeId) -> String {
    format!("node-{id}.{cluster}")
}

/// The DNS name every node's certificate carries: what a client checks when it dials a node.
pub fn any_node_name(cluster: &str) -> String {
    format!("node.{cluster}")
}

/// The DNS name of certificates allowed to propose and read.
pub fn client_name(cluster: &str) -> String {
    format!("client.{cluster}")
}

/// The DNS name of certificates allowed to collect garbage and truncate.
pub fn admin_name(cluster: &str) -> String {
    format!("admin.{cluster}")
}

/// A cluster name goes into certificate names, so it must be one DNS label.
pub fn check_cluster_name(cluster: &str) -> Result<(), TlsError> {
    let valid = !cluster.is_empty()
        && cluster.len() <= 63
        && cluster.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !cluster.starts_with('-')
        && !cluster.ends_with('-');
    // rustls refuses names whose last label looks numeric ("42", "0x1f"): ask it.
    if valid
        && ServerName::try_from(any_node_name(cluster)).is_ok()
        && !cluster.bytes().all(|b| b.is_ascii_digit())
    {
        Ok(())
    } else {
        Err(TlsError::ClusterName(cluster.to_owned()))
    }
}

/// The TLS side of one node or client: its certificate, the cluster's CA and the cluster name.
pub struct Tls {
    cluster: String,
    connector: TlsConnector,
    /// Only nodes accept connections.
    acceptor: Option<TlsAcceptor>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("cluster", &self.cluster).finish_non_exhaustive()
    }
}

impl Tls {
    /// Node `id`'s TLS: it accepts peers and clients and dials peers. Its certificate must name
    /// it, so a node started with another node's files is refused at start, not at every link.
    pub fn for_node(files: &CertFiles, cluster: &str, id: paxos_core::NodeId) -> Result<Tls, TlsError> {
        check_cluster_name(cluster)?;
        let material = Material::load(files)?;
        material.check_holder(files, &node_name(cluster, id))?;
        let client_verifier = WebPkiClientVerifier::builder_with_provider(
            material.roots.clone(),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
        let server = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(material.chain.clone(), material.key.clone_key())
            .map_err(|e| invalid(&files.key, e))?;
        Ok(Tls {
            cluster: cluster.to_owned(),
            connector: material.connector(files)?,
            acceptor: Some(TlsAcceptor::from(Arc::new(server))),
        })
    }

    /// A client's TLS: it dials nodes, presenting `files`' certificate.
    pub fn for_client(files: &CertFiles, cluster: &str) -> Result<Tls, TlsError> {
        check_cluster_name(cluster)?;
        let material = Material::load(files)?;
        let client = client_name(cluster);
        if material.check_holder(files, &client).is_err() {
            return Err(TlsError::WrongHolder {
                path: files.cert.clone(),
                expected: format!("a client or admin of cluster {cluster:?} (name {client})"),
                ca: files.ca.clone(),
            });
        }
        Ok(Tls { cluster: cluster.to_owned(), connector: material.connector(files)?, acceptor: None })
    }

    /// A client's TLS from a rustls configuration of the caller's own (its own PKI, a hardware
    /// key): it must present a certificate naming `client.<cluster>` (or `admin.<cluster>`),
    /// and should verify nodes as `node.<cluster>`.
    pub fn from_client_config(cluster: &str, config: ClientConfig) -> Result<Tls, TlsError> {
        check_cluster_name(cluster)?;
        Ok(Tls {
            cluster: cluster.to_owned(),
            connector: TlsConnector::from(Arc::new(config)),
            acceptor: None,
        })
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    pub(crate) fn connector(&self) -> &TlsConnector {
        &self.connector
    }

    pub(crate) fn acceptor(&self) -> Option<&TlsAcceptor> {
        self.acceptor.as_ref()
    }
}

/// What the other end of an accepted connection proved about itself.
#[derive(Clone, Debug)]
pub enum Credentials {
    /// `--insecure-plaintext`: nothing was proved, and everything is allowed.
    Plaintext,
    /// A certificate the cluster's CA issued (the TLS handshake checked the chain).
    Certificate(CertificateDer<'static>),
}

impl Credentials {
    fn names(&self, name: &str) -> bool {
        match self {
            Credentials::Plaintext => true,
            Credentials::Certificate(der) => {
                let Ok(parsed) = ParsedCertificate::try_from(der) else { return false };
                let Ok(server_name) = ServerName::try_from(name) else { return false };
                rustls::client::verify_server_name(&parsed, &server_name).is_ok()
            }
        }
    }

    /// May this holder be peer `id`?
    pub fn is_node(&self, cluster: &str, id: paxos_core::NodeId) -> bool {
        self.names(&node_name(cluster, id))
    }

    /// May this holder propose and read?
    pub fn is_client(&self, cluster: &str) -> bool {
        self.names(&client_name(cluster))
    }

    /// May this holder collect garbage and truncate history?
    pub fn is_admin(&self, cluster: &str) -> bool {
        self.names(&admin_name(cluster))
    }
}

/// The PEM files of one holder, parsed.
struct Material {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Material {
    fn load(files: &CertFiles) -> Result<Material, TlsError> {
        let ca = read(&files.ca)?;
        let mut roots = RootCertStore::empty();
        let mut ca_count = 0;
        for cert in CertificateDer::pem_slice_iter(&ca) {
            roots.add(cert.map_err(|e| invalid(&files.ca, e))?).map_err(|e| invalid(&files.ca, e))?;
            ca_count += 1;
        }
        if ca_count == 0 {
            return Err(TlsError::Missing { path: files.ca.clone(), what: "certificate" });
        }
        let cert = read(&files.cert)?;
        let chain = CertificateDer::pem_slice_iter(&cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(&files.cert, e))?;
        if chain.is_empty() {
            return Err(TlsError::Missing { path: files.cert.clone(), what: "certificate" });
        }
        let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                TlsError::Missing { path: files.key.clone(), what: "private key" }
            }
            e => invalid(&files.key, e),
        })?;
        Ok(Material { roots: Arc::new(roots), chain, key })
    }

    /// Checks that the certificate carries `name` and was issued by the CA, so a wrong file is
    /// named at start rather than found by every peer's handshake.
    fn check_holder(&self, files: &CertFiles, name: &str) -> Result<(), TlsError> {
        let wrong = || TlsError::WrongHolder {
            path: files.cert.clone(),
            expected: name.to_owned(),
            ca: files.ca.clone(),
        };
        let parsed = ParsedCertificate::try_from(&self.chain[0]).map_err(|e| invalid(&files.cert, e))?;
        let server_name = ServerName::try_from(name).map_err(|_| wrong())?;
        rustls::client::verify_server_name(&parsed, &server_name).map_err(|_| wrong())?;
        let verifier = WebPkiClientVerifier::builder_with_provider(
            self.roots.clone(),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
        verifier
            .verify_client_cert(&self.chain[0], &self.chain[1..], rustls::pki_types::UnixTime::now())
            .map_err(|_| wrong())?;
        Ok(())
    }

    fn connector(&self, files: &CertFiles) -> Result<TlsConnector, TlsError> {
        let client = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| invalid(&files.key, e))?;
        Ok(TlsConnector::from(Arc::new(client)))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read { path: path.to_owned(), error })
}

fn invalid(path: &Path, error: impl std::fmt::Display) -> TlsError {
    TlsError::Invalid { path: path.to_owned(), reason: error.to_string() }
}
