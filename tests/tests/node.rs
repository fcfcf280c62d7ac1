//! The node daemon as a user runs it: real processes, kill -9, restarts, bad input.

use paxos_tests::{wait_until, Cluster};
use std::io::{Read, Write};
use std::time::Duration;

const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Asserts every running node holds the same history and that each acknowledged value sits at
/// its acknowledged slot.
async fn assert_histories_agree(cluster: &Cluster, acknowledged: &[(u64, String)], ids: &[u64]) {
    let upto = cluster.wait_converged(acknowledged.len() as u64, CONVERGE_TIMEOUT).await.expect("converged");
    let reference = cluster.history(ids[0]).await.expect("history");
    assert_eq!(reference.len() as u64, upto);
    for id in &ids[1..] {
        assert_eq!(
            cluster.history(*id).await.expect("history"),
            reference,
            "node {id} differs from node {}",
            ids[0]
        );
    }
    for (slot, value) in acknowledged {
        let entry = &reference[*slot as usize];
        assert_eq!(entry.0, *slot);
        assert_eq!(entry.1.as_deref(), Some(value.as_bytes()), "acknowledged value missing at slot {slot}");
    }
    // No value twice.
    let mut values: Vec<_> = reference.iter().filter_map(|(_, v)| v.clone()).collect();
    let count = values.len();
    values.sort();
    values.dedup();
    assert_eq!(values.len(), count, "a value was chosen twice");
}

async fn propose_through(cluster: &Cluster, id: u64, value: String, acknowledged: &mut Vec<(u64, String)>) {
    let slot = cluster.client_for(&[id]).propose(value.clone().into_bytes()).await.expect("proposal chosen");
    acknowledged.push((slot, value));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_survive_kill_9_of_leader_and_follower() {
    let mut cluster = Cluster::start(3).await.expect("cluster");
    let mut acknowledged = Vec::new();
    for id in 1..=3 {
        propose_through(&cluster, id, format!("through-{id}"), &mut acknowledged).await;
    }
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await.expect("leader");
    cluster.kill(leader).expect("kill leader");
    let survivors: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    for (i, id) in survivors.iter().enumerate() {
        propose_through(&cluster, *id, format!("after-leader-kill-{i}"), &mut acknowledged).await;
    }
    cluster.start_node(leader).expect("restart old leader");
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await.expect("leader");
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    cluster.kill(follower).expect("kill follower");
    propose_through(&cluster, leader, "after-follower-kill".into(), &mut acknowledged).await;
    cluster.start_node(follower).expect("restart follower");
    assert_histories_agree(&cluster, &acknowledged, &[1, 2, 3]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_connections_are_closed_and_the_node_keeps_serving() {
    let cluster = Cluster::start(3).await.expect("cluster");
    let addr = cluster.addrs[&1].clone();
    let attempts: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        u32::MAX.to_be_bytes().to_vec(),      // a length far over the limit
        [0, 0, 0, 5, 1, 2, 3, 4, 5].to_vec(), // a frame that is not a Hello
        [0, 0, 1, 0, 7].to_vec(),             // truncated frame, then close
        Vec::new(),                           // connect and close
    ];
    for bytes in attempts {
        let mut stream = std::net::TcpStream::connect(&addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let _ = stream.write_all(&bytes);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink); // the node closes it
    }
    // A client of another cluster and an unknown peer are refused with a reason.
    let mut options = paxos_node::client::ClientOptions::new(vec![addr.clone()], cluster.security.clone());
    options.cluster = "someone-else".into();
    options.timeout = Duration::from_secs(2);
    let error =
        paxos_node::client::Client::new(options).expect("client").status().await.expect_err("refused");
    assert!(error.to_string().contains("cluster"), "{error}");
    // Still serving.
    let slot = cluster.client_for(&[1]).propose(b"still-alive".to_vec()).await.expect("propose");
    assert_eq!(
        cluster.history(1).await.expect("history")[slot as usize].1.as_deref(),
        Some(&b"still-alive"[..])
    );
    assert!(cluster.log(1).contains("connection closed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_of_another_node_is_refused() {
    let mut cluster = Cluster::start(3).await.expect("cluster");
    cluster.stop(2).expect("stop node 2");
    // Start node 3's identity on node 2's directory.
    let mut command = cluster.node_command_with_dir(3, &cluster.data_dir(2));
    let output = command.output().expect("run paxos-node");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("belongs to node 2"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_node_gracefully() {
    let mut cluster = Cluster::start(1).await.expect("cluster");
    cluster.client().propose(b"x".to_vec()).await.expect("propose");
    let status = cluster.stop(1).expect("stop");
    assert!(status.success(), "exit status {status}");
    cluster.start_node(1).expect("restart");
    let history = wait_until("node 1 back with its history", Duration::from_secs(10), || async {
        Ok(cluster.history(1).await.ok().filter(|h| !h.is_empty()))
    })
    .await
    .expect("history");
    // Slot 0 bound the bootstrap configuration (no value); slot 1 holds the client's proposal,
    // which opened its session.
    assert_eq!(history, vec![(0, None), (1, Some(b"x".to_vec()))]);
}

/// `paxos-node` with no TLS flags still works: a node alone in its cluster creates
/// ./paxos-certs (ca/, node-1/, client/ and admin/) and `paxos-cli`, run from
/// the same directory, uses them. A member of a larger cluster without certificates refuses
/// to start, in one line naming the command that makes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_node_creates_its_certificates_and_a_member_without_them_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = paxos_tests::ports::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut node = std::process::Command::new(paxos_tests::binary("paxos-node"))
        .current_dir(dir.path())
        .args(["--listen", &addr])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start paxos-node");
    let propose = || {
        std::process::Command::new(paxos_tests::binary("paxos-cli"))
            .current_dir(dir.path())
            .args(["--endpoint", &addr, "propose", "no-flags", "--timeout-ms", "1000"])
            .output()
            .expect("paxos-cli")
    };
    let proposed = paxos_tests::wait_until("the lone node answers", Duration::from_secs(15), || async {
        let output = propose();
        Ok(output.status.success().then_some(output))
    })
    .await;
    let _ = node.kill();
    let _ = node.wait();
    let output = proposed.expect("proposed through a node started without flags");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "1");
    for file in
        ["ca/ca.pem", "ca/ca.key", "node-1/cert.pem", "node-1/key.pem", "client/cert.pem", "admin/key.pem"]
    {
        assert!(dir.path().join("paxos-certs").join(file).exists(), "{file}");
    }
    assert!(!dir.path().join("paxos-certs/node-1/ca.key").exists(), "the node's directory holds no CA key");
    // The log is every client's data: the directory and each file in it are the owner's only.
    {
        use std::os::unix::fs::PermissionsExt;
        let data = dir.path().join("paxos-data-1");
        let mode = std::fs::metadata(&data).expect("data dir").permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "data directory mode {mode:o}");
        for entry in std::fs::read_dir(&data).expect("read data dir") {
            let entry = entry.expect("entry");
            let mode = entry.metadata().expect("metadata").permissions().mode();
            assert_eq!(mode & 0o077, 0, "{:?} has mode {mode:o}", entry.file_name());
        }
    }

    let elsewhere = tempfile::tempdir().expect("tempdir");
    let output = std::process::Command::new(paxos_tests::binary("paxos-node"))
        .current_dir(elsewhere.path())
        .args(["--listen", &addr, "--peer", &format!("1={addr}"), "--peer", "2=127.0.0.1:1"])
        .output()
        .expect("paxos-node");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("paxos-cli certs --certs-dir paxos-certs --cluster paxos --nodes 1,2"),
        "{stderr}"
    );
}

/// Start-up errors a person can read: each is one line with its reason chain, exit code 1,
/// and no backtrace even with RUST_BACKTRACE=1 set (backtraces are for bugs): a member
/// address that is not HOST:PORT is refused naming the flag, and a data directory another
/// node holds is named as such rather than as RocksDB's lock error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_errors_are_one_line_naming_the_problem_without_a_backtrace() {
    let mut cluster = Cluster::new_plaintext(1).expect("cluster");
    let run = |command: &mut std::process::Command| {
        let output = command.env("RUST_BACKTRACE", "1").output().expect("paxos-node");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(!stderr.to_lowercase().contains("backtrace"), "no backtrace for an expected error: {stderr}");
        let last = stderr.lines().last().unwrap_or_default().to_owned();
        eprintln!("{last}");
        last
    };

    for (flag, expected) in
        [("1=bad", "\"bad\" is not an address of the form HOST:PORT"), ("1=host:99999", "is not a port")]
    {
        let mut command = cluster.node_command(1);
        command.args(["--peer", flag]);
        let last = run(&mut command);
        assert!(last.starts_with("paxos-node: --peer") && last.contains(expected), "{last}");
    }

    cluster.start_node(1).expect("start");
    cluster.wait_for_leader(Duration::from_secs(15)).await.expect("the node runs");
    // Another port, the same directory.
    let port = paxos_tests::ports::free_port();
    let mut second = std::process::Command::new(paxos_tests::binary("paxos-node"));
    second.args([
        "--id",
        "1",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--insecure-plaintext",
        "--data-dir",
    ]);
    second.arg(cluster.data_dir(1));
    let last = run(&mut second);
    assert!(last.contains("is in use by another paxos-node"), "{last}");
    assert!(cluster.status(1).await.is_ok(), "the first node keeps serving");
}

/// Every file of a directory with its bytes (the info LOG included).
fn every_byte(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap_or_default()))
        .collect();
    files.sort();
    files
}

/// `paxos-node inspect` shows what a stopped node's directory holds without changing a byte
/// (RocksDB's info LOG included), works on a running node's directory, and `--verify` names
/// the first record whose checksum is bad, exiting 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_reads_a_directory_without_changing_a_byte_and_verify_names_a_bad_record() {
    let mut cluster = Cluster::start(3).await.expect("cluster");
    let client = cluster.client();
    for i in 0..20 {
        client.propose(format!("inspect-{i}").into_bytes()).await.expect("propose");
    }
    let upto = cluster.wait_converged(20, CONVERGE_TIMEOUT).await.expect("converged");
    let inspect = |dir: &std::path::Path, extra: &[&str]| {
        let output = std::process::Command::new(paxos_tests::binary("paxos-node"))
            .arg("inspect")
            .arg("--data-dir")
            .arg(dir)
            .args(extra)
            .output()
            .expect("paxos-node inspect");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    // A running node's directory: read-only, as of now.
    let (code, out, err) = inspect(&cluster.data_dir(1), &["--json"]);
    assert_eq!(code, Some(0), "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(json["node"], 1);

    cluster.stop(2).expect("stop");
    let dir = cluster.data_dir(2);
    let before = every_byte(&dir);
    let (code, text, err) = inspect(&dir, &["--verify"]);
    assert_eq!(code, Some(0), "{err}");
    eprintln!("{text}");
    assert!(text.contains("identity: node 2 of cluster \"paxos\", incarnation "), "{text}");
    assert!(text.contains("first started as voter\n"), "{text}");
    assert!(text.contains(&format!("applied up to: {upto}")), "{text}");
    assert!(text.contains("verified: every record's checksum is good"), "{text}");
    let (code, out, err) = inspect(&dir, &["--json"]);
    assert_eq!(code, Some(0), "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        (json["node"].clone(), json["cluster"].clone()),
        (serde_json::json!(2), serde_json::json!("paxos"))
    );
    assert_eq!(json["applied_upto"], upto);
    assert_eq!(json["history_entries"], upto, "every applied slot is in the history");
    assert_eq!(json["configuration"]["members"].as_array().map(Vec::len), Some(3));
    assert_ne!(json["promised"], "0.0");
    assert!(every_byte(&dir) == before, "inspect changed the data directory");

    // A corrupted record: --verify names it and exits 1, the directory still untouched.
    {
        let storage = paxos_node::storage::Storage::open(&dir, "paxos", 2).expect("open");
        let key = 5u64.to_be_bytes();
        let mut record =
            storage.raw_record_for_test(paxos_node::storage::cf::LOG, &key).expect("read").expect("slot 5");
        record[4] ^= 0x01;
        storage.corrupt_for_test(paxos_node::storage::cf::LOG, &key, &record).expect("corrupt");
    }
    let before = every_byte(&dir);
    let (code, _, err) = inspect(&dir, &["--verify"]);
    assert_eq!(code, Some(1), "{err}");
    let last = err.lines().last().unwrap_or_default();
    eprintln!("{last}");
    assert!(
        last.contains("corrupt record")
            && last.contains("column family log")
            && last.contains("slot 5")
            && last.contains("checksum mismatch"),
        "{last}"
    );
    assert!(every_byte(&dir) == before, "inspect --verify changed the data directory");
}
