//! paxos-cli as scripts use it: every command in human and JSON form, and every error path
//! with a non-zero exit and one line on stderr.

use paxos_tests::{binary, wait_until, Cluster};
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn cli(cluster: &Cluster, endpoints: &str, args: &[&str]) -> Output {
    cluster.cli_command().env("PAXOS_ENDPOINTS", endpoints).args(args).output().expect("run paxos-cli")
}

/// paxos-cli with exactly `env` (no cluster's certificates).
fn run_cli(env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(binary("paxos-cli")).envs(env.iter().copied()).args(args).output().expect("run paxos-cli")
}

fn cli_stdin(cluster: &Cluster, endpoints: &str, args: &[&str], input: &[u8]) -> Output {
    let mut child = cluster
        .cli_command()
        .env("PAXOS_ENDPOINTS", endpoints)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn paxos-cli");
    child.stdin.take().expect("stdin").write_all(input).expect("write stdin");
    child.wait_with_output().expect("paxos-cli output")
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "paxos-cli failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout.clone()).expect("utf-8")
}

/// A failure: non-zero exit, nothing on stdout, exactly one line on stderr.
fn one_line_error(output: &Output) -> String {
    assert!(!output.status.success(), "expected failure, got {}", String::from_utf8_lossy(&output.stdout));
    let stderr = String::from_utf8(output.stderr.clone()).expect("utf-8");
    assert_eq!(stderr.trim_end().lines().count(), 1, "stderr must be one line: {stderr:?}");
    stderr
}

fn endpoints(cluster: &Cluster) -> String {
    cluster.addrs.values().cloned().collect::<Vec<_>>().join(",")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_in_human_and_json_form() {
    let cluster = Cluster::start(3).await.expect("cluster");
    let all = endpoints(&cluster);
    let node2 = cluster.addrs[&2].clone();

    // Slot 0 holds the configuration that bound the bootstrap. Each paxos-cli process opens a
    // client session with its first value, in that value's entry: one slot per value.
    assert_eq!(stdout(&cli(&cluster, &all, &["propose", "first"])).trim(), "1");
    let json: Value =
        serde_json::from_str(&stdout(&cli(&cluster, &all, &["propose", "second", "--json"]))).expect("json");
    assert_eq!(json, serde_json::json!({ "slot": 2 }));
    // --endpoint before or after the command, repeated.
    let out = cluster
        .cli_command()
        .args(["--endpoint", &node2, "propose", "third", "--endpoint", &cluster.addrs[&3]])
        .output()
        .expect("run");
    assert_eq!(stdout(&out).trim(), "3");

    let lines: String = (0..500).map(|i| format!("line-{i}\n")).collect();
    let out = stdout(&cli_stdin(&cluster, &all, &["propose", "--stdin"], lines.as_bytes()));
    let slots: Vec<u64> = out.lines().map(|l| l.parse().expect("slot")).collect();
    assert_eq!(slots, (4..504).collect::<Vec<u64>>(), "one slot per input line, in input order");
    let out = stdout(&cli_stdin(&cluster, &all, &["propose", "--stdin", "--json"], b"a\nb\n"));
    let objects: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert_eq!(objects, vec![serde_json::json!({"slot": 504}), serde_json::json!({"slot": 505})]);

    // history and status answer from the node asked: wait until node 2 has applied everything.
    wait_until("node 2 applies every slot", Duration::from_secs(10), || async {
        Ok((cluster.status(2).await?.applied_upto == 506).then_some(()))
    })
    .await
    .expect("caught up");
    let history = stdout(&cli(&cluster, &node2, &["history", "--from", "1", "--limit", "3"]));
    assert_eq!(history, "1\tfirst\n2\tsecond\n3\tthird\n");
    let json: Value =
        serde_json::from_str(&stdout(&cli(&cluster, &node2, &["history", "--json", "--from", "503"])))
            .expect("json");
    assert_eq!(
        json,
        serde_json::json!([{"slot": 503, "value": "line-499"}, {"slot": 504, "value": "a"}, {"slot": 505, "value": "b"}])
    );
    let all_history = stdout(&cli(&cluster, &node2, &["history"]));
    assert_eq!(all_history.lines().count(), 506);

    let status = stdout(&cli(&cluster, &node2, &["status"]));
    assert!(
        status.contains("node 2") && status.contains("leader:") && status.contains("applied up to: 506"),
        "{status}"
    );
    let json: Value =
        serde_json::from_str(&stdout(&cli(&cluster, &node2, &["status", "--json"]))).expect("json");
    assert_eq!(json["node"], 2);
    assert_eq!(json["applied_upto"], 506);
    assert_eq!(json["history_start"], 0);
    assert_eq!(json["sessions"], 5, "one session per paxos-cli process that proposed");
    assert!(json["leader"].is_u64());

    // status --all: every member in one table, asked through one node.
    let leader = json["leader"].as_u64().expect("leader");
    let table = stdout(&cli(&cluster, &node2, &["status", "--all"]));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID  ADDRESS") && lines[0].ends_with("REACHABLE"), "{table}");
    assert_eq!(lines.len(), 4, "a header and 3 members: {table}");
    // IS LEADER is yes on one row, and LEADER names the same node on every row.
    let cells = |line: &str| line.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    let leads: Vec<usize> = (1..=3).filter(|i| cells(lines[*i])[3] == "yes").collect();
    assert_eq!(leads, vec![leader as usize], "one leader: {table}");
    assert!((1..=3).all(|i| cells(lines[i])[4] == leader.to_string()), "{table}");
    let all: Value =
        serde_json::from_str(&stdout(&cli(&cluster, &node2, &["status", "--all", "--json"]))).expect("json");
    let members = all["members"].as_array().expect("members");
    assert_eq!(members.len(), 3);
    assert!(members
        .iter()
        .all(|m| m["reachable"] == true && m["applied_upto"].is_u64() && m["lag_slots"].is_u64()));
    assert_eq!(members.iter().filter(|m| m["is_leader"] == true).count(), 1);
    assert!(json["ballot"].as_str().is_some_and(|b| b.split_once('.').is_some()), "{json}");
    assert_eq!(json["members"].as_array().expect("members").len(), 3);
    assert_eq!(json["configuration_chosen_at"], 0, "the bootstrap's binding entry is slot 0");
    assert_eq!(json["can_vote"], true);

    // member list: every member a voter, from the node asked.
    let list = stdout(&cli(&cluster, &node2, &["member", "list"]));
    assert!(list.starts_with("configuration chosen at slot 0"), "{list}");
    assert_eq!(list.lines().filter(|l| l.contains(" voter ")).count(), 3, "{list}");
    let json: Value =
        serde_json::from_str(&stdout(&cli(&cluster, &node2, &["member", "list", "--json"]))).expect("json");
    let members = json["members"].as_array().expect("members");
    assert!(members
        .iter()
        .all(|m| m["role"] == "voter" && m["incarnation"].as_str().is_some_and(|i| i.len() == 16)));
    // Changes need the admin certificate: the client's is refused in one line.
    let error = one_line_error(&cli(&cluster, &node2, &["member", "remove", "3", "--identity", "client"]));
    assert!(error.contains("admin certificate"), "{error}");

    // gc: human, then JSON with truncation, through whichever node (it goes to the leader).
    let out = stdout(&cli(&cluster, &node2, &["gc"]));
    assert!(out.starts_with("removed ") && out.contains("history starts at 0"), "{out}");
    wait_until("the leader hears every member at 506", Duration::from_secs(10), || async {
        let leader = cluster.wait_for_leader(Duration::from_secs(5)).await?;
        let status = cluster.status(leader).await?;
        Ok(status.members.iter().all(|m| m.applied_upto == Some(506)).then_some(()))
    })
    .await
    .expect("progress known");
    let json: Value =
        serde_json::from_str(&stdout(&cli(&cluster, &node2, &["gc", "--truncate-below", "100", "--json"])))
            .expect("json");
    assert_eq!(json["history_start"], 100);
    assert_eq!(json["history_entries_removed"], 100);
    assert_eq!(json["applied_upto"], 506);
    // gc waits (a few seconds at most) until every member has followed the cut, and says so.
    assert_eq!(json["members_followed"], serde_json::json!([1, 2, 3]), "{json}");
    assert_eq!(json["members_not_followed"], serde_json::json!([]), "{json}");

    // A no-op prints as an empty value: none here, so check the format through JSON's null
    // elsewhere (the teaching scenario fills holes); the history from the cut is intact.
    assert_eq!(cluster.status(2).await.expect("status").history_start, 100, "node 2 followed the cut");
    assert_eq!(
        stdout(&cli(&cluster, &node2, &["history", "--from", "100", "--limit", "1"])),
        "100\tline-96\n"
    );
    let error = one_line_error(&cli(&cluster, &node2, &["history", "--from", "5"]));
    assert!(error.contains("truncated") && error.contains("100"), "{error}");
    // Without --from, the history starts where the node's does.
    let out = stdout(&cli(&cluster, &node2, &["history"]));
    assert!(out.starts_with("100\tline-96\n"), "{}", &out[..out.len().min(200)]);
    assert_eq!(out.lines().count(), 406, "slots 100..506");
    // A truncation in the human form says who followed.
    let out = stdout(&cli(&cluster, &node2, &["gc", "--truncate-below", "200"]));
    assert!(out.contains("every member has truncated below 200"), "{out}");
}

/// `propose --stdin` prints each acknowledgement as it arrives, not at exit: a script that
/// feeds values one at a time reads each slot before it sends the next (the output was
/// block-buffered: three values fed 1 s apart printed together at exit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn propose_stdin_prints_each_acknowledgement_as_it_arrives() {
    use std::io::BufRead;
    let cluster = Cluster::start(3).await.expect("cluster");
    let mut child = cluster
        .cli_command()
        .env("PAXOS_ENDPOINTS", endpoints(&cluster))
        .args(["propose", "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn paxos-cli");
    let mut input = child.stdin.take().expect("stdin");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let output = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(output).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send((line, std::time::Instant::now())).is_err() {
                break;
            }
        }
    });
    let started = std::time::Instant::now();
    let mut slots = Vec::new();
    for value in ["first", "second", "third"] {
        writeln!(input, "{value}").expect("write a line");
        input.flush().expect("flush");
        // The slot must come while standard input is still open.
        let (line, at) =
            lines_rx.recv_timeout(Duration::from_secs(10)).expect("the slot printed before the next value");
        eprintln!("{:>6} ms: sent {value:?}, read slot {line}", at.duration_since(started).as_millis());
        slots.push(line.parse::<u64>().expect("a slot"));
    }
    drop(input);
    assert!(child.wait().expect("exit").success());
    assert!(slots.windows(2).all(|w| w[0] < w[1]), "{slots:?}");
}

/// `paxos-cli --help` fits a terminal: each command's summary is a short phrase (the detail is in
/// `paxos-cli COMMAND --help`), as `etcdctl --help` lists its commands.
#[test]
fn help_lists_each_command_in_a_short_phrase() {
    let output = run_cli(&[], &["--help"]);
    let help = stdout(&output);
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .collect();
    assert!(commands.len() >= 8, "{help}");
    for line in commands {
        assert!(line.len() <= 80, "a summary longer than 80 columns: {line:?}");
    }
    let detail = stdout(&run_cli(&[], &["history", "--help"]));
    assert!(detail.contains("escapes backslashes"), "the detail is in `history --help`: {detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_throughput_latency_and_fsyncs() {
    let cluster = Cluster::start(3).await.expect("cluster");
    let all = endpoints(&cluster);
    let out = stdout(&cli(
        &cluster,
        &all,
        &["bench", "--clients", "4", "--count", "400", "--value-bytes", "50", "--json"],
    ));
    let report: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(report["writes"], 400);
    assert_eq!(report["errors"], 0);
    assert!(report["writes_per_second"].as_f64().expect("rate") > 0.0);
    let p50 = report["latency_ms"]["p50"].as_f64().expect("p50");
    let p99 = report["latency_ms"]["p99"].as_f64().expect("p99");
    assert!(p50 > 0.0 && p50 <= p99, "{report}");
    assert!(report["leader_fsyncs_per_chosen_value"].as_f64().is_some(), "{report}");
    // Every write is in the log, each once.
    cluster.wait_converged(400, Duration::from_secs(20)).await.expect("converged");
    let history = cluster.history(1).await.expect("history");
    // The bench's clients each opened a session (a registration slot without a value).
    assert_eq!(history.iter().filter(|(_, value)| value.is_some()).count(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_paths_exit_non_zero_with_one_line() {
    let mut cluster = Cluster::start(3).await.expect("cluster");
    // Nothing listens on a free port.
    let port = paxos_tests::ports::free_port();
    let dead = format!("127.0.0.1:{port}");
    let error = one_line_error(&cli(&cluster, &dead, &["propose", "x", "--timeout-ms", "500"]));
    assert!(error.contains("no endpoint reachable"), "{error}");
    let error = one_line_error(&cli(&cluster, &dead, &["status", "--timeout-ms", "500"]));
    assert!(error.contains("no endpoint reachable"), "{error}");

    // Bad arguments: one line too (clap's usage text is behind --help).
    let output = cli(&cluster, &dead, &["propose"]);
    assert_eq!(output.status.code(), Some(2));
    one_line_error(&output);
    one_line_error(&cli(&cluster, &dead, &["history", "--from", "minus-one"]));
    one_line_error(&cli(&cluster, &dead, &["frobnicate"]));
    one_line_error(&cli(&cluster, &dead, &["gc", "--force"]));

    // A majority down: no quorum within the timeout.
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await.expect("leader");
    let survivor = (1..=3).find(|id| *id != leader).expect("survivor");
    for id in 1..=3 {
        if id != survivor {
            cluster.kill(id).expect("kill");
        }
    }
    let output = cli(&cluster, &cluster.addrs[&survivor], &["propose", "lonely", "--timeout-ms", "2000"]);
    let error = one_line_error(&output);
    assert!(error.contains("no quorum"), "{error}");
    // status --all still answers, naming the members it could not reach.
    let json: Value = serde_json::from_str(&stdout(&cli(
        &cluster,
        &cluster.addrs[&survivor],
        &["status", "--all", "--json"],
    )))
    .expect("json");
    let members = json["members"].as_array().expect("members");
    assert_eq!(members.iter().filter(|m| m["reachable"] == false).count(), 2, "{json}");
    assert!(members.iter().any(|m| m["id"] == survivor && m["reachable"] == true), "{json}");

    // A value over the limit is refused before it reaches the log.
    let big = format!("{}\n", "x".repeat((1 << 20) + 1));
    let output = cli_stdin(
        &cluster,
        &cluster.addrs[&survivor],
        &["propose", "--stdin", "--timeout-ms", "2000"],
        big.as_bytes(),
    );
    let error = one_line_error(&output);
    assert!(error.contains("exceeds the limit"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_starts_a_cluster_shows_it_working_and_leaves_it_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let demo_dir = dir.path().join("demo");
    let demo_dir_text = demo_dir.to_str().expect("utf-8 path");
    let out = stdout(&run_cli(&[], &["demo", "--dir", demo_dir_text]));
    assert!(out.contains("was elected leader"), "{out}");
    assert!(out.contains("kill -9 of the leader"), "{out}");
    for id in 1..=3 {
        assert!(out.contains(&format!("node {id}: 9 values in")) && out.contains("identical: true"), "{out}");
    }
    let endpoints = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("export PAXOS_ENDPOINTS="))
        .expect("endpoints line")
        .to_owned();
    let certs_dir = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("export PAXOS_CERTS_DIR="))
        .expect("certificates line")
        .to_owned();
    let env = [("PAXOS_ENDPOINTS", endpoints.as_str()), ("PAXOS_CERTS_DIR", certs_dir.as_str())];
    // Still running: usable with the printed endpoints.
    // The binding configuration and 9 values so far, each client's first value opening its
    // session in the same entry: this one lands at slot 10.
    assert_eq!(stdout(&run_cli(&env, &["propose", "more"])).trim(), "10");
    // Without the demo's certificates the nodes refuse the client, in one line.
    let error = one_line_error(&run_cli(&env[..1], &["status", "--timeout-ms", "300"]));
    assert!(error.contains("certificate"), "{error}");
    let out = stdout(&run_cli(&[], &["demo", "--stop", "--dir", demo_dir_text]));
    assert!(out.contains("stopped 3 node(s)"), "{out}");
    one_line_error(&run_cli(&env, &["status", "--timeout-ms", "300"]));
}

/// Values are bytes end to end: a file's bytes, non-UTF-8 input lines and base64 all arrive
/// intact; text output keeps each value on its line (escaped), JSON output loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_values_survive_every_path() {
    let cluster = Cluster::start(3).await.expect("cluster");
    let all = endpoints(&cluster);
    let binary_value: Vec<u8> = (0..=255u8).collect();
    let file = cluster.dir.path().join("value.bin");
    std::fs::write(&file, &binary_value).expect("write file");
    let file_slot: u64 = stdout(&cli(&cluster, &all, &["propose", "--file", file.to_str().expect("path")]))
        .trim()
        .parse()
        .expect("slot");
    // A line that is not UTF-8, and one with a tab; then base64 of "two\nlines".
    let input = b"\xff\xfe raw\nwith\ttab\n";
    let out = stdout(&cli_stdin(&cluster, &all, &["propose", "--stdin"], input));
    let stdin_slots: Vec<u64> = out.lines().map(|l| l.parse().expect("slot")).collect();
    let newline_slot: u64 =
        stdout(&cli(&cluster, &all, &["propose", "--encoding", "base64", "dHdvCmxpbmVz"]))
            .trim()
            .parse()
            .expect("slot");
    let bad = one_line_error(&cli(&cluster, &all, &["propose", "--encoding", "base64", "not base64!"]));
    assert!(bad.contains("base64"), "{bad}");

    let node1 = cluster.addrs[&1].clone();
    wait_until("node 1 applied everything", Duration::from_secs(10), || async {
        Ok((cluster.status(1).await?.applied_upto > newline_slot).then_some(()))
    })
    .await
    .expect("applied");
    let expected: Vec<(u64, Vec<u8>)> = vec![
        (file_slot, binary_value.clone()),
        (stdin_slots[0], b"\xff\xfe raw".to_vec()),
        (stdin_slots[1], b"with\ttab".to_vec()),
        (newline_slot, b"two\nlines".to_vec()),
    ];
    let held = cluster.history(1).await.expect("history");
    for (slot, value) in &expected {
        assert_eq!(held[*slot as usize].1.as_deref(), Some(&value[..]), "slot {slot}");
    }
    // JSON: text where it is UTF-8, base64 where it is not; decoding gives the bytes back.
    let json: Value =
        serde_json::from_str(&stdout(&cli(&cluster, &node1, &["history", "--json"]))).expect("json");
    let entry = |slot: u64| {
        json.as_array().expect("array").iter().find(|e| e["slot"] == slot).expect("entry").clone()
    };
    assert_eq!(entry(newline_slot)["value"], "two\nlines");
    assert!(entry(file_slot).get("value").is_none());
    assert_eq!(entry(file_slot)["value_base64"].as_str().map(str::len), Some(344));
    // Text: one line per slot, whatever the values hold.
    let text = stdout(&cli(&cluster, &node1, &["history"]));
    assert_eq!(text.lines().count() as u64, cluster.status(1).await.expect("status").applied_upto);
    assert!(text.contains(&format!("{newline_slot}\ttwo\\nlines\n")), "{text}");
    assert!(text.contains(&format!("{}\t\\xff\\xfe raw\n", stdin_slots[0])), "{text}");
    // base64 output round-trips the binary value.
    let b64 = stdout(&cli(
        &cluster,
        &node1,
        &["history", "--encoding", "base64", "--from", &file_slot.to_string(), "--limit", "1"],
    ));
    let (_, encoded) = b64.trim_end().split_once('\t').expect("slot and value");
    let resent = stdout(&cli(&cluster, &all, &["propose", "--encoding", "base64", encoded]));
    let resent_slot: u64 = resent.trim().parse().expect("slot");
    let again = cluster.client_for(&[1]).history(resent_slot, 1).await.expect("history");
    assert_eq!(again.entries[0].1.as_deref(), Some(&binary_value[..]));
}

/// `history --follow --json` prints entries as they are applied, one object per line; when the
/// node it reads from is killed it goes on through another endpoint from the slot after the
/// last one printed (no gap, no repeat), and Ctrl-C (SIGINT) stops it cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_follow_survives_the_node_it_reads_from_and_stops_on_ctrl_c() {
    let mut cluster = Cluster::start(3).await.expect("cluster");
    /// Killed if the test fails before it stops the follower itself.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut follower = KillOnDrop(
        cluster
            .cli_command()
            .env("PAXOS_ENDPOINTS", endpoints(&cluster))
            .args(["history", "--follow", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn paxos-cli history --follow"),
    );
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = lines.clone();
        let stdout = follower.0.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().expect("lines").push(line);
            }
        })
    };
    let seen = |value: &str| lines.lock().expect("lines").iter().any(|l| l.contains(&format!("\"{value}\"")));
    let client = cluster.client();
    for i in 0..20 {
        client.propose(format!("f-{i}").into_bytes()).await.expect("propose");
    }
    wait_until("the follower printed f-19", Duration::from_secs(15), || async {
        Ok(seen("f-19").then_some(()))
    })
    .await
    .expect("followed");
    // The first endpoint is the one it reads from.
    cluster.kill(1).expect("kill node 1");
    let survivors = cluster.client_for(&[2, 3]);
    for i in 20..40 {
        survivors.propose(format!("f-{i}").into_bytes()).await.expect("propose");
    }
    wait_until("the follower printed f-39 after node 1 died", Duration::from_secs(30), || async {
        Ok(seen("f-39").then_some(()))
    })
    .await
    .expect("followed through another endpoint");
    std::process::Command::new("kill")
        .args(["-INT", &follower.0.id().to_string()])
        .status()
        .expect("kill -INT");
    let status = follower.0.wait().expect("wait");
    reader.join().expect("reader");
    assert!(status.success(), "Ctrl-C stops cleanly: {status:?}");
    let lines = lines.lock().expect("lines").clone();
    let entries: Vec<Value> =
        lines.iter().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
    let slots: Vec<u64> = entries.iter().map(|e| e["slot"].as_u64().expect("slot")).collect();
    assert_eq!(slots, (0..slots.len() as u64).collect::<Vec<_>>(), "no gap, no repeat");
    for i in 0..40 {
        let value = format!("f-{i}");
        assert_eq!(entries.iter().filter(|e| e["value"] == value.as_str()).count(), 1, "{value} once");
    }
}
