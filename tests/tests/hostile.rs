//! Attacks from the network, replayed against real processes: each is refused or bounded, and
//! the honest workload goes on, checked by the history checker afterwards. Figures (RSS, an
//! honest client's latency) are printed with `--nocapture`.

use futures::SinkExt;
use paxos_core::{Ballot, MemberRole, Message, RequestId, Value};
use paxos_node::certs::IssueRequest;
use paxos_node::connection::{ConnectError, Connection, FrameSink, FrameStream};
use paxos_node::tls::{CertFiles, Security, Tls};
use paxos_node::wire::{Caller, Frame, Hello, Request, PROTOCOL_VERSION};
use paxos_tests::workload::{check, Recorder};
use paxos_tests::{wait_until, Cluster, CLUSTER};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

const TIMEOUT: Duration = Duration::from_secs(5);
const MIB: f64 = (1 << 20) as f64;

fn hello(caller: Caller) -> Hello {
    Hello { protocol_version: PROTOCOL_VERSION, cluster_id: CLUSTER.into(), caller }
}

/// Dials `addr` as `caller`, presenting `security`'s certificate; the node answers as any node.
async fn dial(addr: &str, caller: Caller, security: &Security) -> Result<Connection, ConnectError> {
    let name = paxos_node::tls::any_node_name(CLUSTER);
    Connection::connect(addr, hello(caller), security, &name, TIMEOUT, TIMEOUT).await.map(|(c, _)| c)
}

/// TLS presenting node `id`'s certificate from `dir`.
fn node_tls(dir: &std::path::Path, id: u64) -> Security {
    Security::Tls(Arc::new(Tls::for_node(&CertFiles::node(dir, id), CLUSTER, id).expect("node tls")))
}

/// An attacker's TLS: it accepts whatever certificate the node presents (so only the node's own
/// check of the attacker's certificate can stop it) and presents `holder`'s certificate from
/// `dir`, or none.
fn attacker_tls(dir: &std::path::Path, holder: Option<&str>) -> Security {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)));
    let config = match holder {
        None => builder.with_no_client_auth(),
        Some(name) => {
            let files = CertFiles::named(dir, name);
            let chain = CertificateDer::pem_file_iter(&files.cert)
                .expect("cert")
                .collect::<Result<Vec<_>, _>>()
                .expect("pem");
            let key = PrivateKeyDer::from_pem_file(&files.key).expect("key");
            builder.with_client_auth_cert(chain, key).expect("client auth")
        }
    };
    Security::Tls(Arc::new(Tls::from_client_config(CLUSTER, config).expect("tls")))
}

#[derive(Debug)]
struct AcceptAnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn client_tls(dir: &std::path::Path, name: &str) -> Security {
    Security::Tls(Arc::new(Tls::for_client(&CertFiles::named(dir, name), CLUSTER).expect("client tls")))
}

/// A forged catch-up answer: invented values at the first slots. Before mutual TLS, one such
/// frame put them into every node's history.
fn forged_catch_up() -> Message {
    let value = |i: u64| Value::Command {
        request_id: RequestId { client_id: 999, seq: i },
        key: [0; 16],
        payload: format!("forged-{i}").into_bytes(),
    };
    Message::CatchUpEntries {
        entries: (1..6).map(|i| (i, value(i))).collect(),
        applied_upto: 6,
        log_id: 0,
        request: 0,
    }
}

/// Proposes `count` values through `client`, recording them.
async fn honest(recorder: &Recorder, client: &paxos_node::client::Client, tag: &str, count: usize) {
    for i in 0..count {
        recorder.propose(client, format!("{tag}-{i}")).await.expect("honest proposal chosen");
    }
}

/// A cluster whose node 1 holds 8 MiB of history (eight 1 MiB values), so that a history
/// page from slot 0 is a full page.
async fn cluster_with_full_pages() -> Cluster {
    let cluster = Cluster::start(3).await.expect("cluster");
    let client = cluster.client_for(&[1]);
    for i in 0..8u8 {
        client.propose(vec![i; 1 << 20]).await.expect("propose 1 MiB");
    }
    cluster
}

/// Opens `connections` client connections to `node`, each pipelining up to `per_connection`
/// history requests for a full page and reading none of the answers (the node stops reading a
/// connection once its budget is spent: sending stops there). The connections stay open while
/// the returned value lives.
async fn pipeline_unread_pages(
    cluster: &Cluster,
    node: u64,
    connections: usize,
    per_connection: u64,
) -> Vec<(FrameSink, FrameStream)> {
    let mut held = Vec::new();
    for _ in 0..connections {
        let connection =
            dial(&cluster.addrs[&node], Caller::Client, &cluster.security).await.expect("client");
        let (mut sink, stream) = connection.split();
        for id in 0..per_connection {
            let request = Request::History { from_slot: 0, limit: 10_000, consistency: Default::default() };
            let sent =
                tokio::time::timeout(Duration::from_millis(200), sink.send(Frame::Request { id, request }));
            if !matches!(sent.await, Ok(Ok(()))) {
                break;
            }
        }
        held.push((sink, stream));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    held
}

async fn check_histories(cluster: &Cluster, recorder: &Recorder) {
    let operations = recorder.operations();
    let max_slot = operations.iter().filter_map(|o| o.slot).max().map_or(0, |s| s + 1);
    cluster.wait_converged(max_slot, Duration::from_secs(30)).await.expect("converged");
    let histories = cluster.histories().await.expect("histories");
    for history in histories.values() {
        for (slot, value) in history {
            let text = value.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            assert!(!text.starts_with("forged"), "a forged value reached slot {slot}");
        }
    }
    check(&operations, &histories).assert_clean();
}

/// Posing as member 2 in every way an attacker on the network could: without TLS, with a
/// client's certificate, with member 3's certificate, and with a node-2 certificate from
/// another CA. Each is refused at the handshake, so forged votes and catch-up entries never
/// reach the protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonating_a_member_is_refused() {
    let cluster = Cluster::start(3).await.expect("cluster");
    let recorder = Recorder::default();
    let client = cluster.client();
    honest(&recorder, &client, "before", 5).await;
    let certs = cluster.certs_dir();
    let other_ca = tempfile::tempdir().expect("tempdir");
    let request = IssueRequest { cluster: CLUSTER.into(), nodes: vec![2], ..Default::default() };
    paxos_node::certs::issue(other_ca.path(), &request).expect("another CA");
    // A genuine node certificate of this cluster's CA, for a node that is not a member.
    let node_4 = IssueRequest { cluster: CLUSTER.into(), nodes: vec![4], ..Default::default() };
    paxos_node::certs::issue(&certs, &node_4).expect("node 4's certificate");

    // The last three trust any server, so only the node's check of their certificate (or of
    // its absence) can refuse them.
    let attempts: Vec<(&str, Security)> = vec![
        ("no TLS", Security::InsecurePlaintext),
        ("a client's certificate", client_tls(&certs, "client")),
        ("an admin's certificate", client_tls(&certs, "admin")),
        ("member 3's certificate", node_tls(&certs, 3)),
        ("node 2's name from another CA", node_tls(other_ca.path(), 2)),
        ("TLS without a certificate", attacker_tls(&certs, None)),
        (
            "node 2's certificate from another CA, trusting any server",
            attacker_tls(other_ca.path(), Some("node-2")),
        ),
        ("member 3's certificate, trusting any server", attacker_tls(&certs, Some("node-3"))),
    ];
    for target in [1, 3] {
        for (what, security) in &attempts {
            // Member 3's own certificate is fine for member 3; claim 2 everywhere.
            let result = dial(&cluster.addrs[&target], Caller::Node(2, 2, MemberRole::Voter), security).await;
            match result {
                Err(error) => eprintln!("posing as node 2 to node {target} with {what}: refused ({error})"),
                Ok(connection) => {
                    // Show what it would have done, then fail.
                    let (mut sink, _) = connection.split();
                    let _ = sink.send(Frame::Peer(forged_catch_up())).await;
                    panic!("node {target} welcomed a peer posing as node 2 with {what}");
                }
            }
        }
    }
    // Node 4's own certificate, genuine, but node 4 is no member and no --peer names it.
    for target in [1, 3] {
        let result =
            dial(&cluster.addrs[&target], Caller::Node(4, 4, MemberRole::Voter), &node_tls(&certs, 4)).await;
        match result {
            Err(error) => {
                eprintln!("non-member node 4 with its own certificate to node {target}: refused ({error})");
                assert!(error.to_string().contains("neither a member"), "{error}");
            }
            Ok(_) => panic!("node {target} welcomed node 4, which is not a member"),
        }
    }
    // The real member 2 is welcomed (the refusals were about the credentials, not the id).
    let real = dial(&cluster.addrs[&1], Caller::Node(2, 2, MemberRole::Voter), &node_tls(&certs, 2)).await;
    assert!(real.is_ok(), "member 2 with its own certificate: {:?}", real.err());
    drop(real);
    honest(&recorder, &client, "after", 5).await;
    for id in 1..=3 {
        assert_eq!(cluster.status(id).await.expect("status").rejected_messages, 0);
    }
    assert!(cluster.log(1).contains("is not node 2's"), "the refusal is logged with its reason");
    check_histories(&cluster, &recorder).await;
}

/// A member that goes rogue (or whose key is stolen) still cannot crash a node: one Prepare
/// with round u64::MAX to two nodes used to kill every node within a second (the next
/// election's `round + 1` wrapped), with the bad promise on disk so that they died again at
/// every restart. Now it is rejected and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepare_at_the_top_of_the_ballot_range_is_rejected() {
    let cluster = Cluster::start(3).await.expect("cluster");
    let recorder = Recorder::default();
    let client = cluster.client();
    honest(&recorder, &client, "before", 3).await;
    let forged = Message::Prepare { ballot: Ballot::new(u64::MAX, 2), from_slot: 0, transfer: false };
    let member2 = node_tls(&cluster.certs_dir(), 2);
    for target in [1, 3] {
        let connection = dial(&cluster.addrs[&target], Caller::Node(2, 2, MemberRole::Voter), &member2)
            .await
            .expect("handshake");
        let (mut sink, _stream) = connection.split();
        sink.send(Frame::Peer(forged.clone())).await.expect("sent");
    }
    wait_until("the forged Prepares counted", TIMEOUT, || async {
        let mut rejected = 0;
        for target in [1, 3] {
            rejected += cluster.status(target).await?.rejected_messages;
        }
        Ok((rejected >= 2).then_some(()))
    })
    .await
    .expect("rejected");
    // Several election timeouts later every node is still up, no promise went to the top, and
    // the cluster still chooses values.
    honest(&recorder, &client, "after", 3).await;
    for id in 1..=3 {
        assert!(cluster.is_running(id), "node {id} died: {}", cluster.log(id));
        let status = cluster.status(id).await.expect("status");
        assert!(
            status.ballot.round <= Ballot::ROUND_MAX,
            "node {id} took the forged ballot: {}",
            status.ballot
        );
    }
    check_histories(&cluster, &recorder).await;
}

/// gc and truncation delete history for good: a client certificate is refused with one line,
/// an admin certificate (the CLI's default for gc) is obeyed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_needs_an_admin_certificate() {
    let cluster = Cluster::start(3).await.expect("cluster");
    let client = cluster.client();
    for i in 0..10 {
        client.propose(format!("v{i}").into_bytes()).await.expect("propose");
    }
    let endpoints = cluster.addrs.values().cloned().collect::<Vec<_>>().join(",");
    let run = |args: &[&str]| {
        cluster.cli_command().env("PAXOS_ENDPOINTS", &endpoints).args(args).output().expect("paxos-cli")
    };
    let refused = run(&["gc", "--truncate-below", "5", "--force", "--identity", "client"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("need an admin certificate"), "{stderr}");
    assert_eq!(cluster.status(1).await.expect("status").history_start, 0, "nothing was truncated");
    // Reading works with the client certificate; gc with the admin one.
    assert!(run(&["history", "--identity", "client"]).status.success());
    let done = run(&["gc", "--truncate-below", "5", "--json"]);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
}

/// Sends one request on a connection of its own, with `client`'s certificate, and returns the
/// answer.
async fn ask(cluster: &Cluster, node: u64, request: Request) -> paxos_node::wire::Response {
    ask_with(cluster, node, request).await.0
}

/// The session takeover of issue 25: a holder of the ordinary client certificate reads a
/// session id from the history and proposes its own value under it, before the session's owner.
/// Without the session's secret it is refused, under the next sequence number as under one
/// already answered; the owner's value is chosen and acknowledged at its own slot. And the
/// owner itself, reusing an answered id with another value, is refused, never told `Ok`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_clients_session_cannot_be_used() {
    use paxos_core::ProposalError;
    use paxos_node::wire::{ProposeError, Response};
    let cluster = Cluster::start(3).await.expect("cluster");
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await.expect("leader");
    let victim = cluster.client_for(&[leader]);
    let first = victim.propose(b"GOOD-1".to_vec()).await.expect("the victim's first value");
    let (session, secret) = victim.session().await.expect("the victim's session");
    // The session id is public: it is the slot of the registration entry, which holds the
    // first value, in every history.
    assert_eq!(session, first, "the first value opens the session in its own entry");
    let history = victim.history(0, 100).await.expect("history");
    let opened = history.entries.iter().find(|(slot, _)| *slot == session);
    assert_eq!(opened.and_then(|(_, value)| value.as_deref()), Some(&b"GOOD-1"[..]), "{history:?}");
    let attacker_secret = paxos_node::wire::new_session_secret().expect("random");
    for (seq, node) in [(2, leader), (1, leader), (2, leader % 3 + 1)] {
        let request_id = RequestId { client_id: session, seq };
        let evil =
            Request::Propose { request_id, secret: attacker_secret, value: b"EVIL".to_vec(), floor_slot: 0 };
        let answer = ask(&cluster, node, evil).await;
        eprintln!("takeover attempt of {request_id} through node {node}: {answer:?}");
        assert!(
            matches!(
                answer,
                Response::Proposed(Err(ProposeError::Protocol {
                    error: ProposalError::WrongSessionKey(_),
                    ..
                }))
            ),
            "{answer:?}"
        );
    }
    // The owner's next value (seq 2, which the attacker tried first) is chosen as its own.
    let good = victim.propose(b"GOOD-2".to_vec()).await.expect("the victim's second value");
    let page = victim.history(first, 100).await.expect("history");
    let value_at = |slot: u64| page.entries.iter().find(|(s, _)| *s == slot).and_then(|(_, v)| v.clone());
    assert_eq!(value_at(first).as_deref(), Some(&b"GOOD-1"[..]));
    assert_eq!(value_at(good).as_deref(), Some(&b"GOOD-2"[..]));
    assert!(page.entries.iter().all(|(_, value)| value.as_deref() != Some(&b"EVIL"[..])), "{page:?}");
    // The owner reusing an answered id with another value: refused, not Ok(first).
    let reused = Request::Propose {
        request_id: RequestId { client_id: session, seq: 1 },
        secret,
        value: b"OTHER".to_vec(),
        floor_slot: 0,
    };
    let answer = ask(&cluster, leader, reused).await;
    eprintln!("the owner's id 1 reused with another value: {answer:?}");
    assert!(
        matches!(
            answer,
            Response::Proposed(Err(ProposeError::Protocol { error: ProposalError::RequestIdReused(_), .. }))
        ),
        "{answer:?}"
    );
    // The same id with the same value is a duplicate: its slot.
    let retried = Request::Propose {
        request_id: RequestId { client_id: session, seq: 1 },
        secret,
        value: b"GOOD-1".to_vec(),
        floor_slot: 0,
    };
    assert_eq!(ask(&cluster, leader, retried).await, Response::Proposed(Ok(first)));
}

/// Four connections pipelining 1 MiB proposals and never reading an answer: each connection
/// holds at most its request budget (8 MiB) in the node and is not read past it, the node's
/// window, queue and peer queues are bounded in bytes, and member traffic never waits behind
/// client requests. No node grows past 256 MiB, the leader keeps its ballot, and an honest
/// client's proposals go through. (Before the budgets: leader 86 MiB -> 3.0 GiB, followers 1.6
/// and 2.3 GiB, 3-6 leader changes in 10 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_large_proposals_never_read_are_bounded_in_bytes() {
    use paxos_node::wire::Response;
    let cluster = Cluster::start(3).await.expect("cluster");
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await.expect("leader");
    let ballot = cluster.status(leader).await.expect("status").ballot;
    let rss_before: Vec<u64> = (1..=3).map(|id| cluster.rss_bytes(id).expect("rss")).collect();
    let mut attackers = Vec::new();
    for attacker in 0..4u64 {
        let secret = paxos_node::wire::new_session_secret().expect("random");
        let register = RequestId { client_id: RequestId::REGISTER_CLIENT_ID, seq: 0xA77AC0 + attacker };
        let answer = ask_with(
            &cluster,
            leader,
            Request::Propose { request_id: register, secret, value: vec![], floor_slot: 0 },
        )
        .await;
        let (Response::Proposed(Ok(session)), (sink, stream)) = answer else {
            panic!("registration: {:?}", answer.0)
        };
        attackers.push((session, secret, sink, stream));
    }
    // Send until the node stops reading (each send that cannot finish in 200 ms ends that
    // connection's flood), then hold the connections open, unread.
    let flood = attackers.into_iter().map(|(session, secret, mut sink, stream)| {
        tokio::spawn(async move {
            let mut sent = 0u64;
            // Seq 1 is the registration's (empty) value.
            for seq in 2..=401u64 {
                let request = Request::Propose {
                    request_id: RequestId { client_id: session, seq },
                    secret,
                    value: vec![seq as u8; 1 << 20],
                    floor_slot: 0,
                };
                let send = sink.send(Frame::Request { id: seq, request });
                if !matches!(tokio::time::timeout(Duration::from_millis(200), send).await, Ok(Ok(()))) {
                    break;
                }
                sent += 1;
            }
            (sent, sink, stream)
        })
    });
    let flood: Vec<_> = flood.collect();
    let honest = cluster.client_for(&[leader]);
    let mut latencies = Vec::new();
    let mut rss_max = [0u64; 3];
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        let proposed = Instant::now();
        honest.propose(b"honest".to_vec()).await.expect("an honest proposal during the flood");
        latencies.push(proposed.elapsed());
        for id in 1..=3u64 {
            rss_max[id as usize - 1] = rss_max[id as usize - 1].max(cluster.rss_bytes(id).expect("rss"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut held = Vec::new();
    let mut sent_total = 0;
    for task in flood {
        let (sent, sink, stream) = task.await.expect("flood task");
        sent_total += sent;
        held.push((sink, stream));
    }
    latencies.sort();
    let mib = |bytes: u64| bytes as f64 / MIB;
    eprintln!(
        "4 connections pipelining 1 MiB proposals unread ({sent_total} sent before the node stopped reading): \
         RSS MiB before {:?}, max {:?}; honest proposals {} p50 {:?} max {:?}",
        rss_before.iter().map(|b| mib(*b).round()).collect::<Vec<_>>(),
        rss_max.iter().map(|b| mib(*b).round()).collect::<Vec<_>>(),
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
    );
    for id in 1..=3u64 {
        let status = cluster.status(id).await.expect("status");
        assert_eq!(status.ballot, ballot, "node {id}: the leader changed under the flood");
        assert!(
            mib(rss_max[id as usize - 1]) < 256.0,
            "node {id} grew to {:.0} MiB",
            mib(rss_max[id as usize - 1])
        );
    }
    drop(held);
}

/// Like `ask`, but returns the connection too, open.
async fn ask_with(
    cluster: &Cluster,
    node: u64,
    request: Request,
) -> (paxos_node::wire::Response, (FrameSink, FrameStream)) {
    let security = client_tls(&cluster.certs_dir(), "client");
    let connection = dial(&cluster.addrs[&node], Caller::Client, &security).await.expect("dial");
    let (mut sink, mut stream) = connection.split();
    sink.send(Frame::Request { id: 0, request }).await.expect("send");
    loop {
        match stream.next().await.expect("an answer").expect("a frame") {
            Frame::Response { id: 0, response } => return (response, (sink, stream)),
            other => eprintln!("(ignored: {other:?})"),
        }
    }
}

/// Pipelined history requests that are never read: each answer's bytes are reserved before
/// the request is taken, so a connection holds at most its answer budget (32 MiB), however
/// many it sends. Before the budget, 220 such requests grew a node by 1.6 GiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_answers_are_bounded_in_bytes() {
    let cluster = cluster_with_full_pages().await;
    let rss_before = cluster.rss_bytes(1).expect("rss");
    let held = pipeline_unread_pages(&cluster, 1, 2, 220).await;
    let rss_during = cluster.rss_bytes(1).expect("rss");
    let grown_mib = (rss_during.saturating_sub(rss_before)) as f64 / MIB;
    eprintln!(
        "unread history answers on 2 connections: RSS {:.0} -> {:.0} MiB (+{grown_mib:.0} MiB)",
        rss_before as f64 / MIB,
        rss_during as f64 / MIB
    );
    // Two connections' budgets (2 x 32 MiB) plus socket buffers and allocator slack.
    assert!(grown_mib < 160.0, "node 1 grew by {grown_mib:.0} MiB");
    // An honest client is served meanwhile.
    let started = Instant::now();
    cluster.client_for(&[1]).propose(b"honest".to_vec()).await.expect("honest client served");
    eprintln!("honest proposal during the attack: {:?}", started.elapsed());
    drop(held);
}

/// Twelve connections pipelining full history pages (8 MiB each) to the leader without reading
/// them: the pages are read on the history reader's thread, never the driver's, so the leader
/// misses no heartbeat and keeps its ballot, and an honest proposal goes through meanwhile.
/// (On the driver, the same burst moved leadership in 3 of 6 runs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_history_reads_never_moves_the_leader() {
    let cluster = cluster_with_full_pages().await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await.expect("leader");
    let ballot = cluster.status(leader).await.expect("status").ballot;
    let held = pipeline_unread_pages(&cluster, leader, 12, 10).await;
    let started = Instant::now();
    cluster.client_for(&[leader]).propose(b"honest".to_vec()).await.expect("honest proposal");
    let latency = started.elapsed();
    // Hold the burst for several election timeouts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in 1..=3 {
        let status = cluster.status(id).await.expect("status");
        assert_eq!(status.leader, Some(leader), "node {id} follows another leader: {status:?}");
        assert_eq!(status.ballot, ballot, "node {id}: the leader's ballot changed");
    }
    eprintln!("12 connections x 10 unread 8 MiB history pages to the leader: ballot {ballot} kept, honest proposal in {latency:?}");
    drop(held);
}

/// Frames of 4 MiB (the most a client may send) that never finish, from 100 connections, 3 MiB
/// of each sent: half-received frames reserve their bytes from a node-wide read budget (64 MiB)
/// when their header arrives, so the node buffers at most that much of them and refuses the
/// rest (closing their connections), instead of 300 MiB; small requests are served meanwhile.
/// (Before the budget, 500 such frames held 2 GiB for the frame timeout.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_received_frames_count_against_a_node_wide_read_budget() {
    let mut cluster = Cluster::new(3).expect("cluster");
    cluster.set_extra_args(&["--frame-timeout-ms", "5000"]);
    for id in 1..=3 {
        cluster.start_node(id).expect("start");
    }
    cluster.wait_for_leader(Duration::from_secs(15)).await.expect("leader");
    let addr = cluster.addrs[&1].clone();
    let rss_before = cluster.rss_bytes(1).expect("rss");
    let body = vec![0u8; 3 << 20];
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..100 {
        let connection = dial(&addr, Caller::Client, &cluster.security).await.expect("client");
        let (sink, stream) = connection.split();
        let mut raw = sink.into_inner();
        let sent = async {
            raw.write_all(&(4u32 << 20).to_be_bytes()).await?;
            raw.write_all(&body).await?;
            raw.flush().await
        };
        match tokio::time::timeout(Duration::from_millis(500), sent).await {
            Ok(Ok(())) => held.push((raw, stream)),
            _ => refused += 1,
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown_mib = cluster.rss_bytes(1).expect("rss").saturating_sub(rss_before) as f64 / MIB;
    let started = Instant::now();
    cluster.client_for(&[1]).propose(b"small and honest".to_vec()).await.expect("a small proposal");
    let latency = started.elapsed();
    let refusals = cluster.log(1).matches("large frames are being received").count();
    eprintln!(
        "100 connections each sending 3 MiB of a 4 MiB frame: RSS +{grown_mib:.0} MiB, {refusals} frames refused \
         by the read budget ({refused} sends cut short); a small proposal meanwhile in {latency:?}"
    );
    assert!(refusals >= 50, "only {refusals} frames were refused: the read budget did not hold");
    assert!(grown_mib < 150.0, "node 1 grew by {grown_mib:.0} MiB");
    drop(held);
}

/// Idle connections, half-sent frames and a flood of silent TCP connections: each gives its
/// slot back within its timeout, a half-sent frame holds only the bytes sent (not the 16 MiB
/// its header claims), and an honest client keeps being served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_idle_and_flooding_connections_are_bounded() {
    let mut cluster = Cluster::new(3).expect("cluster");
    cluster.set_extra_args(&["--idle-timeout-ms", "1500", "--frame-timeout-ms", "1500"]);
    for id in 1..=3 {
        cluster.start_node(id).expect("start");
    }
    cluster.wait_for_leader(Duration::from_secs(15)).await.expect("leader");
    let addr = cluster.addrs[&1].clone();
    let recorder = Recorder::default();
    let client = cluster.client_for(&[1]);
    honest(&recorder, &client, "before", 3).await;

    // Idle after Hello: closed after the idle timeout.
    let connection = dial(&addr, Caller::Client, &cluster.security).await.expect("client");
    let (_sink, mut stream) = connection.split();
    let started = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("closed by the node");
    assert!(!matches!(end, Some(Ok(_))), "{end:?}");
    eprintln!("idle connection closed after {:?}", started.elapsed());

    // A client's frame claiming 16 MiB is refused at once: a request is at most a value (1 MiB
    // here) and a little more.
    let connection = dial(&addr, Caller::Client, &cluster.security).await.expect("client");
    let (sink, mut stream) = connection.split();
    let mut raw = sink.into_inner();
    raw.write_all(&(16u32 << 20).to_be_bytes()).await.expect("header");
    raw.flush().await.expect("flush");
    let end = tokio::time::timeout(Duration::from_secs(1), stream.next()).await.expect("closed at once");
    assert!(!matches!(end, Some(Ok(_))), "{end:?}");
    drop(raw);

    // Half-sent frames, each claiming the most a client may send: 100 connections hold what
    // they sent, not 100 MiB, and are closed after the frame timeout.
    let rss_before = cluster.rss_bytes(1).expect("rss");
    let mut half_sent: Vec<FrameSink> = Vec::new();
    for _ in 0..100 {
        let connection = dial(&addr, Caller::Client, &cluster.security).await.expect("client");
        let (sink, _stream) = connection.split();
        let mut raw = sink.into_inner();
        raw.write_all(&((1u32 << 20) + 1024).to_be_bytes()).await.expect("header");
        raw.write_all(&[0u8; 64 << 10]).await.expect("a little of the body");
        raw.flush().await.expect("flush");
        half_sent.push(FrameSink::new(raw, Default::default()));
    }
    let rss_during = cluster.rss_bytes(1).expect("rss");
    let grown_mib = rss_during.saturating_sub(rss_before) as f64 / MIB;
    eprintln!("100 half-sent 1 MiB frames: RSS +{grown_mib:.0} MiB");
    assert!(grown_mib < 60.0, "node 1 grew by {grown_mib:.0} MiB for 100 half-sent frames");
    wait_until("half-sent frames timed out or refused", Duration::from_secs(10), || async {
        let log = cluster.log(1);
        let closed = log.matches("a frame took longer than").count()
            + log.matches("large frames are being received").count();
        Ok((closed >= 100).then_some(()))
    })
    .await
    .expect("every half-sent frame closed");
    drop(half_sent);

    // A flood of silent TCP connections (no TLS handshake), 2,000 of them, while an honest
    // client proposes: the oldest handshakes are closed to make room, so it keeps being served.
    let flood = tokio::spawn({
        let addr = addr.clone();
        async move {
            let mut sockets = Vec::new();
            for _ in 0..2000 {
                if let Ok(socket) = tokio::net::TcpStream::connect(&addr).await {
                    sockets.push(socket);
                }
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
            sockets.len()
        }
    });
    let mut latencies = Vec::new();
    let mut honest_client = cluster.client_for(&[1]);
    while !flood.is_finished() {
        let started = Instant::now();
        recorder
            .propose(&honest_client, format!("during-{}", latencies.len()))
            .await
            .expect("honest proposal");
        latencies.push(started.elapsed());
        // A new connection each time: the flood competes for exactly what a new client needs.
        honest_client = cluster.client_for(&[1]);
    }
    let opened = flood.await.expect("flood");
    latencies.sort();
    let percentile = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
    eprintln!(
        "flood of {opened} silent connections: honest client made {} proposals on new connections, p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        percentile(50),
        percentile(99),
        latencies.last().expect("at least one")
    );
    assert!(latencies.len() >= 3);
    check_histories(&cluster, &recorder).await;
}

/// A client with a certificate that opens more connections than the node serves (1,024) and
/// leaves them idle: newcomers are told the node is busy while every client was active within
/// the last second, and then the idlest is closed to make room, so an honest client still gets
/// in at once (without this it would wait for the idle timeout, a minute), and clients at work
/// are never closed for newcomers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_do_not_lock_out_new_ones() {
    let cluster = Cluster::start(3).await.expect("cluster");
    let addr = cluster.addrs[&1].clone();
    let mut idle = Vec::new();
    let mut refused = 0;
    for _ in 0..1100 {
        match dial(&addr, Caller::Client, &cluster.security).await {
            Ok(connection) => idle.push(connection),
            Err(_) => refused += 1,
        }
    }
    let started = Instant::now();
    let slot = cluster.client_for(&[1]).propose(b"honest".to_vec()).await.expect("honest client served");
    let latency = started.elapsed();
    eprintln!(
        "{} idle client connections opened ({refused} refused); honest proposal in {latency:?}",
        idle.len()
    );
    assert!(latency < Duration::from_secs(5), "{latency:?}");
    assert!(slot > 0);
    let evicted = cluster.log(1).matches("closed to make room for a newer connection").count();
    eprintln!("idle clients closed for newcomers: {evicted}");
    assert!(evicted >= 1, "no idle client was closed for the honest one");
    assert!(
        refused + evicted >= 76,
        "{refused} refused and {evicted} closed for 1,100 + 1 connections to 1,024 places"
    );
}

/// Many clients with certificates pipelining history pages they never read spend the node's
/// answer budget (256 MiB): further history reads are refused at once ("node busy"), memory
/// stays bounded, and proposals, whose answers are small, still go through. (Had the budget
/// been waited for, every request would queue behind the first large one still waiting.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_answer_budget_refuses_rather_than_queues() {
    let cluster = cluster_with_full_pages().await;
    let rss_before = cluster.rss_bytes(1).expect("rss");
    let held = pipeline_unread_pages(&cluster, 1, 16, 10).await;
    let grown_mib = cluster.rss_bytes(1).expect("rss").saturating_sub(rss_before) as f64 / MIB;
    // An honest history read is refused quickly rather than queued for ever...
    let mut options =
        paxos_node::client::ClientOptions::new(vec![cluster.addrs[&1].clone()], cluster.security.clone());
    options.timeout = Duration::from_secs(2);
    let reader = paxos_node::client::Client::new(options).expect("client");
    let refused = reader.history(0, 10_000).await.expect_err("no budget left for a page");
    assert!(refused.to_string().contains("node busy"), "{refused}");
    // ...and a proposal still goes through.
    let started = Instant::now();
    cluster.client_for(&[1]).propose(b"honest".to_vec()).await.expect("honest proposal");
    let latency = started.elapsed();
    eprintln!(
        "16 connections x 10 unread history pages: RSS +{grown_mib:.0} MiB; honest history read: {refused}; honest proposal in {latency:?}"
    );
    assert!(latency < Duration::from_secs(5), "{latency:?}");
    assert!(grown_mib < 400.0, "node 1 grew by {grown_mib:.0} MiB");
    drop(held);
}

/// A member's connections that look open but are dead to it (its host rebooted, a NAT forgot the
/// flow) must not lock it out: member links have no idle limit, so when a member's slots are
/// full the one silent the longest is closed for the newcomer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_is_never_locked_out_by_its_own_dead_connections() {
    let cluster = Cluster::start(3).await.expect("cluster");
    let recorder = Recorder::default();
    let client = cluster.client();
    honest(&recorder, &client, "before", 3).await;
    let member2 = node_tls(&cluster.certs_dir(), 2);
    let mut silent = Vec::new();
    for attempt in 0..8 {
        let connection = dial(&cluster.addrs[&1], Caller::Node(2, 2, MemberRole::Voter), &member2).await;
        let connection =
            connection.unwrap_or_else(|e| panic!("member 2's connection {attempt} refused: {e}"));
        silent.push(connection);
    }
    honest(&recorder, &client, "after", 3).await;
    check_histories(&cluster, &recorder).await;
}
