//! The node's file-descriptor budget: how many connections it may hold so that RocksDB and the
//! members always have descriptors left.
//!
//! Every connection is a descriptor, and so is every file RocksDB opens. Under the usual
//! `ulimit -n 1024` a node that accepted a client per descriptor ran out with ~1,000 idle
//! clients, and the next RocksDB open killed it ("Too many open files"). So at start the node
//! raises its soft limit to the hard one, then divides what it got: a fixed reserve for itself
//! and RocksDB (whose `max_open_files` is capped to fit), a reserve for member links, and the
//! rest for handshakes and clients, whose caps the server enforces.

use crate::storage::ROCKSDB_OPEN_FILES_MAX;

/// Descriptors the process needs besides connections and RocksDB's tables: stdio, the epoll
/// and event descriptors of the runtime, the listeners, RocksDB's WAL, MANIFEST, LOCK and LOG,
/// the data directory's fsyncs.
const RESERVED_MISC: u64 = 64;
/// Member links: a link out to each member and up to four in from each, for a cluster of up to
/// 24 members.
const RESERVED_PEERS: u64 = 24 * 5;
/// The caps when descriptors are plenty (what the server used before it derived them).
pub const CLIENT_CONNECTIONS_CAP: usize = 1024;
pub const HANDSHAKES_CAP: usize = 256;
/// Below this many descriptors for clients and handshakes the node refuses to start.
const CONNECTIONS_MIN: u64 = 32;

/// What the node may open, derived from its `RLIMIT_NOFILE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileBudget {
    /// The soft limit the node runs with (after raising it).
    pub open_files_limit: u64,
    /// Client connections established at once.
    pub client_connections_max: usize,
    /// TCP and TLS handshakes in progress at once.
    pub handshakes_max: usize,
}

impl FileBudget {
    /// The caps for a process allowed `open_files_limit` descriptors.
    pub fn derive(open_files_limit: u64) -> Result<FileBudget, String> {
        let reserved = RESERVED_MISC + RESERVED_PEERS + ROCKSDB_OPEN_FILES_MAX as u64;
        let available = open_files_limit.saturating_sub(reserved);
        if available < CONNECTIONS_MIN {
            return Err(format!(
                "only {open_files_limit} file descriptors (ulimit -n): a node needs {reserved} for RocksDB and \
                 its members and at least {CONNECTIONS_MIN} more for clients; raise `ulimit -n` (4096 is plenty)"
            ));
        }
        // A fifth for handshakes (each is short), the rest for established clients.
        let handshakes_max = ((available / 5) as usize).clamp(8, HANDSHAKES_CAP);
        let client_connections_max = ((available as usize) - handshakes_max).min(CLIENT_CONNECTIONS_CAP);
        Ok(FileBudget { open_files_limit, client_connections_max, handshakes_max })
    }

    /// The budget when descriptors are no concern (tests that run nodes in-process).
    pub fn unlimited() -> FileBudget {
        FileBudget {
            open_files_limit: u64::MAX,
            client_connections_max: CLIENT_CONNECTIONS_CAP,
            handshakes_max: HANDSHAKES_CAP,
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (what an unprivileged process may do) and
/// returns the soft limit in force afterwards.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Ok(hard);
    }
    Ok(soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usual_limit_leaves_room_for_rocksdb_and_members() {
        let budget = FileBudget::derive(1024).expect("enough");
        let used = budget.client_connections_max + budget.handshakes_max;
        assert!(used as u64 + RESERVED_MISC + RESERVED_PEERS + ROCKSDB_OPEN_FILES_MAX as u64 <= 1024);
        assert!(budget.client_connections_max >= 400, "{budget:?}");
        let plenty = FileBudget::derive(1 << 20).expect("enough");
        assert_eq!(plenty.client_connections_max, CLIENT_CONNECTIONS_CAP);
        assert_eq!(plenty.handshakes_max, HANDSHAKES_CAP);
        assert!(FileBudget::derive(300).is_err());
    }
}
