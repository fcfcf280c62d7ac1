//! Data directories written by earlier versions open with this one: each fixture under
//! `tests/fixtures/` is a directory an earlier binary wrote (its README says how), opened here
//! from a copy with the storage under test. A layout change that cannot read one fails here,
//! and must come with a migration (issue 28, item 5).

use paxos_core::Value;
use paxos_node::storage::Storage;
use std::path::Path;

/// A copy of fixture `name`'s directory `data-1` in a new temporary directory (opening a
/// RocksDB directory writes to it).
fn copy_of(name: &str) -> tempfile::TempDir {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name).join("data-1");
    let copy = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(&source).expect("the fixture is in the repository") {
        let entry = entry.expect("fixture entry");
        std::fs::copy(entry.path(), copy.path().join(entry.file_name())).expect("copy the fixture");
    }
    copy
}

/// The payload of a client's value (a one-shot proposal opens its session in the same entry).
fn payload(value: &Value) -> Option<&[u8]> {
    match value {
        Value::Register { payload, .. } | Value::Command { payload, .. } => Some(payload),
        _ => None,
    }
}

#[test]
fn a_directory_of_storage_format_3_opens_with_its_history_and_sessions() {
    let dir = copy_of("format-3");
    let mut storage = Storage::open(dir.path(), "paxos", 1).expect("a format 3 directory opens");
    let state = storage.load().expect("its state loads");
    assert_eq!(state.applied_upto, 5, "the configuration and four values are applied");
    assert!(state.membership.is_some_and(|membership| membership.contains(1)), "the bound configuration");
    assert_eq!(state.requests.sessions(), 4, "each one-shot proposal opened a session");
    let history = storage.read_history(0, 5, 100, 1 << 20).expect("its history reads");
    let slots: Vec<u64> = history.iter().map(|(slot, _)| *slot).collect();
    assert_eq!(slots, vec![0, 1, 2, 3, 4]);
    assert!(matches!(history[0].1, Value::Config(_)), "slot 0 binds the configuration");
    let payloads: Vec<&[u8]> = history[1..].iter().filter_map(|(_, value)| payload(value)).collect();
    assert_eq!(payloads, vec![&b"first"[..], b"second", b"third", b"b\x00i\xffn\n"]);
}
