//! Durable storage in RocksDB: one database per data directory.
//!
//! Column families:
//! - `meta`: identity (cluster id, node id), promised ballot, applied prefix, truncation;
//! - `accepted`: slot -> (ballot, value), the acceptor's records;
//! - `history`: slot -> chosen value, the applied log;
//! - `requests`: (client id, seq) -> (slot, digest), the duplicate table (the digest is the
//!   session's key for a registration record, seq 0, else the payload's).
//!
//! Slot keys are big-endian so key order is slot order. Every value is `crc32 ++ bincode`; a
//! record whose checksum fails stops the node with an error naming the record. A `Ready`'s
//! operations are written as one `WriteBatch` with sync on: one fsync per batch (group commit).

use crate::codec;
use paxos_core::{
    Ballot, Digest, DurableState, NodeId, PersistOp, RequestId, RequestTable, Slot, TruncationSnapshot, Value,
};
use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const CF_META: &str = "meta";
const CF_ACCEPTED: &str = "accepted";
const CF_HISTORY: &str = "history";
const CF_REQUESTS: &str = "requests";
const CF_NAMES: [&str; 4] = [CF_META, CF_ACCEPTED, CF_HISTORY, CF_REQUESTS];

const KEY_CLUSTER_ID: &[u8] = b"cluster_id";
const KEY_NODE_ID: &[u8] = b"node_id";
const KEY_PROMISED: &[u8] = b"promised";
/// The applied prefix. The key keeps its first name (`chosen_upto`) so that data directories
/// written before the field was renamed still open.
const KEY_APPLIED_UPTO: &[u8] = b"chosen_upto";
const KEY_TRUNCATION: &[u8] = b"truncation";
/// Written once with the identity: what tells this directory from a new one under the same id.
const KEY_INCARNATION: &[u8] = b"incarnation";
/// The `--role` the directory was first started with (see `paxos_core::Config::role`).
const KEY_ROLE: &[u8] = b"role";
/// Reads the applied history of an open database from any thread, each page from one RocksDB
/// snapshot (a consistent view: a truncation or an apply that lands meanwhile is either wholly
/// in the page's view or not at all). It never writes.
#[derive(Debug)]
pub struct HistoryView {
    storage: Storage,
}

impl HistoryView {
    /// Applied entries in `[from_slot, upto_slot)`, bounded by count and bytes (at least one
    /// entry when any is there), in slot order, from one snapshot.
    pub fn read(
        &self,
        from_slot: Slot,
        upto_slot: Slot,
        entries_max: usize,
        bytes_max: usize,
    ) -> Result<Vec<(Slot, Value)>, StorageError> {
        let storage = &self.storage;
        let snapshot = storage.db.snapshot();
        let mut entries = Vec::new();
        let mut bytes = 0;
        let start = slot_key(from_slot);
        let mode = IteratorMode::From(&start, Direction::Forward);
        for item in snapshot.iterator_cf(storage.cf(CF_HISTORY), mode) {
            let (key, record) = item.map_err(|error| storage.db_error(error))?;
            let slot = storage.slot_of(CF_HISTORY, &key)?;
            if slot >= upto_slot {
                break;
            }
            let value: Value = storage.unseal(CF_HISTORY, &key, &record)?;
            if !paxos_core::page_has_room(entries.len(), bytes, value.size_bytes(), entries_max, bytes_max) {
                break;
            }
            bytes += value.size_bytes();
            entries.push((slot, value));
        }
        Ok(entries)
    }
}

/// RocksDB's memory: the block cache, with the memtables' memory charged to it.
pub const ROCKSDB_MEMORY_BYTES_MAX: usize = 40 << 20;
/// Of which the memtables of all column families together, at most.
pub const ROCKSDB_MEMTABLES_BYTES_MAX: usize = 32 << 20;

/// Table files RocksDB keeps open at most (its `max_open_files`); the file budget reserves them.
pub const ROCKSDB_OPEN_FILES_MAX: i32 = 256;

/// The layout of the records (absent: format 1, before session keys): written with the
/// identity, checked before any record is read.
const KEY_FORMAT: &[u8] = b"format";
/// Format 2: values carry session keys, the duplicate table payload digests. Format 3: a
/// registration carries its client's first value and floor, the table keeps each session's
/// nonce and the eviction watermark.
pub const STORAGE_FORMAT: u32 = 3;
/// The configuration in force as of the applied prefix (absent: the bootstrap one).
const KEY_MEMBERSHIP: &[u8] = b"membership";

/// Storage failures. All are fatal for the node: it must not answer anything it cannot store.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("rocksdb at {path}: {error}")]
    Db { path: PathBuf, error: rocksdb::Error },
    #[error("corrupt record in {path} (column family {cf}, key {key}): {reason}")]
    Corrupt { path: PathBuf, cf: &'static str, key: String, reason: String },
    #[error(
        "data directory {path} belongs to node {found_node} of cluster {found_cluster:?}; \
         refusing to start it as node {node} of cluster {cluster:?}"
    )]
    IdentityMismatch {
        path: PathBuf,
        found_node: NodeId,
        found_cluster: String,
        node: NodeId,
        cluster: String,
    },
    #[error("encoding a record: {0}")]
    Encode(String),
    #[error("data directory {path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error(
        "data directory {path} is in use by another paxos-node (it holds {path}/LOCK); stop that \
         node, or give this one another --data-dir"
    )]
    InUse { path: PathBuf },
    #[error(
        "data directory {path} holds storage format {found}, written by an older paxos-node; this \
         one reads format {expected}: give it a new --data-dir (and `paxos-cli member replace` it \
         into the cluster), or run the version that wrote it"
    )]
    Format { path: PathBuf, found: u32, expected: u32 },
    /// A directory written by a newer binary: refused before anything is read, so a downgrade
    /// never misreads records it does not understand (nor rewrites them).
    #[error(
        "data directory {path} holds storage format {found}, written by a newer paxos-node; this \
         one reads formats up to {newest}: run the version that wrote it, or a newer one"
    )]
    FormatTooNew { path: PathBuf, found: u32, newest: u32 },
}

/// RocksDB's error when another process holds the directory's LOCK (an `fcntl` lock, released
/// when that process exits), as a sentence a person can act on; other errors as they are.
fn db_error(path: &Path, error: rocksdb::Error) -> StorageError {
    let text = error.to_string();
    // Another process: "While lock file: DIR/LOCK: Resource temporarily unavailable"; this one
    // (a second open in the same process): "lock hold by current process".
    if text.contains("lock file") && text.contains("unavailable")
        || text.contains("lock hold by current process")
    {
        StorageError::InUse { path: path.to_owned() }
    } else {
        StorageError::Db { path: path.to_owned(), error }
    }
}

/// Makes the data directory readable by its owner only (0700) and every file in it 0600: the
/// log holds every client's values. A directory written by an older version (0755, files 0644)
/// is fixed at its next start. New files are 0600 because `paxos-node` runs with umask 077.
pub fn make_private(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            let metadata = entry.metadata()?;
            if metadata.is_file() && metadata.permissions().mode() & 0o077 != 0 {
                std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600))?;
            }
        }
    }
    Ok(())
}

/// Creates `path` and whatever ancestors it lacks, each made durable in its parent (a
/// directory fsync after each `mkdir`), and fsyncs `path`'s parent even if `path` existed.
///
/// # Correctness
///
/// A new directory's name is on disk only once its parent is fsynced. RocksDB fsyncs the data
/// directory for the files it creates in it, never the directory's own parent: without this, a
/// power cut after the first start (the power-loss tests found it) takes the whole data
/// directory with it, every promise and accepted value included, and the node comes back as a
/// new incarnation that the cluster must `member replace`.
pub fn create_dir_durably(path: &Path) -> std::io::Result<()> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    if !parent.exists() {
        create_dir_durably(parent)?;
    }
    match std::fs::create_dir(path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => {}
        Err(error) => return Err(error),
    }
    std::fs::File::open(parent)?.sync_all()
}

/// What `paxos-node inspect` reports of a data directory (see [`Storage::inspect`]).
#[derive(Debug)]
pub struct Inspection {
    pub path: PathBuf,
    pub cluster: Option<String>,
    pub node: Option<NodeId>,
    pub incarnation: Option<paxos_core::Incarnation>,
    pub role: Option<paxos_core::MemberRole>,
    pub promised: Ballot,
    pub accepted_records: u64,
    /// First and last slot of the accepted records.
    pub accepted_range: Option<(Slot, Slot)>,
    pub applied_upto: Slot,
    pub history_start: Slot,
    pub history_entries: u64,
    pub history_range: Option<(Slot, Slot)>,
    /// The duplicate table: records and the client sessions they belong to.
    pub request_records: u64,
    pub sessions: u64,
    /// The configuration as of the applied prefix (`None`: the bootstrap one, from the flags).
    pub membership: Option<paxos_core::Membership>,
    /// Records whose checksum was checked (`--verify`).
    pub records_checked: Option<u64>,
}

/// The node's RocksDB database.
pub struct Storage {
    /// Shared with the history reader's thread (see `history_reader.rs`), which only reads.
    db: std::sync::Arc<DB>,
    path: PathBuf,
    sync: WriteOptions,
    fsyncs: u64,
    /// Bytes of the write batches written since open: what RocksDB appends to its WAL (each
    /// batch is one WAL record; the WAL adds a 7-byte header per 32 KiB block).
    written_bytes: u64,
    /// What the read-only check at open recovered, for the first `load`.
    preloaded: Option<DurableState>,
    /// The promise on disk: a write that lowers it is a bug in the replica (asserted, as
    /// `MemStorage` does).
    promised: Ballot,
    incarnation: paxos_core::Incarnation,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").field("path", &self.path).finish()
    }
}

fn slot_key(slot: Slot) -> [u8; 8] {
    slot.to_be_bytes()
}

fn request_key(request_id: RequestId) -> [u8; 16] {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&request_id.client_id.to_be_bytes());
    key[8..].copy_from_slice(&request_id.seq.to_be_bytes());
    key
}

/// A key as a person reads it: meta keys are names, other 8-byte keys are slots.
fn key_text(cf: &str, key: &[u8]) -> String {
    match (cf, <[u8; 8]>::try_from(key)) {
        (CF_META, _) | (_, Err(_)) => String::from_utf8_lossy(key).into_owned(),
        (_, Ok(bytes)) => format!("slot {}", u64::from_be_bytes(bytes)),
    }
}

/// `crc32 (4 bytes, big-endian) ++ bincode(value)`.
fn seal<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    let body = codec::encode(value).map_err(|e| StorageError::Encode(e.to_string()))?;
    let mut record = Vec::with_capacity(4 + body.len());
    record.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
    record.extend_from_slice(&body);
    Ok(record)
}

impl Storage {
    /// Opens (creating if needed) the database in `path` for node `node` of `cluster`.
    ///
    /// The first start writes the identity; every later start checks it, so a data directory
    /// is never silently reused by another node or cluster (that would break its promises).
    ///
    /// An existing directory is first opened read-only to check the identity and every record
    /// recovery needs: a refused start (wrong node, corrupt record) must leave the directory as
    /// it was, and a read-write open already writes (WAL replay, a new MANIFEST).
    pub fn open(path: &Path, cluster: &str, node: NodeId) -> Result<Self, StorageError> {
        create_dir_durably(path).map_err(|error| StorageError::Io { path: path.to_owned(), error })?;
        make_private(path).map_err(|error| StorageError::Io { path: path.to_owned(), error })?;
        let options = Self::options();
        let sync = Self::synced_writes();
        let db_error = |error| db_error(path, error);
        let mut preloaded = None;
        if path.join("CURRENT").exists() {
            let read_only = Self::open_read_only(&options, path)?;
            read_only.check_identity(cluster, node, false)?;
            preloaded = Some(read_only.read_state()?);
        }
        let cfs = CF_NAMES
            .into_iter()
            .map(|name| ColumnFamilyDescriptor::new(name, Self::column_family_options(&options, name)));
        let db = DB::open_cf_descriptors(&options, path, cfs).map_err(db_error)?;
        let promised = preloaded.as_ref().map_or(Ballot::ZERO, |state: &DurableState| state.promised);
        let mut storage = Storage {
            db: db.into(),
            path: path.to_owned(),
            sync,
            fsyncs: 0,
            written_bytes: 0,
            preloaded,
            promised,
            incarnation: 0,
        };
        storage.check_identity(cluster, node, true)?;
        storage.incarnation = storage.load_incarnation()?;
        Ok(storage)
    }

    /// The database's options.
    ///
    /// # Correctness
    ///
    /// The node syncs only batches that hold a promise or an accepted value, and leaves the
    /// rest (applied history, the duplicate table, GC) unsynced; `Ready`'s contract allows it
    /// because a crash loses at most a *suffix* of unsynced batches, never one before a synced
    /// batch. That rule is RocksDB's, and holds only with these settings (all defaults today,
    /// named so that no later change drops one unnoticed; a test,
    /// `the_durability_options_are_those_the_ready_contract_needs`, reads them back from the
    /// OPTIONS file RocksDB writes):
    /// - one WAL for every column family, in the data directory (`wal_dir` unset): a batch
    ///   that spans column families is one WAL record, and the WAL dies with its directory;
    /// - `manual_wal_flush` off: each write reaches the WAL file before it returns, so the
    ///   fsync of a later synced batch covers every batch before it;
    /// - `wal_recovery_mode` point-in-time: recovery replays the WAL up to the first bad or
    ///   missing record and stops, so a torn tail loses a suffix, and a hole is never skipped
    ///   (skipping would apply a later batch without an earlier one);
    /// - `unordered_write` off: batches enter the WAL in the order they are applied;
    /// - no mmap writes: a mapped page reaches its file whenever the kernel writes it back, so
    ///   neither the order of writes nor what an fsync covers would be ours.
    pub fn options() -> Options {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_manual_wal_flush(false);
        options.set_wal_recovery_mode(rocksdb::DBRecoveryMode::PointInTime);
        options.set_unordered_write(false);
        options.set_allow_mmap_writes(false);
        // Memory must not grow with the log: small memtables and a small block cache.
        options.set_write_buffer_size(8 << 20);
        options.set_max_write_buffer_number(2);
        options.set_max_background_jobs(2);
        // Bounded, so that connections can never leave RocksDB without descriptors (see
        // `limits.rs`); the default (-1) keeps every table file open.
        options.set_max_open_files(ROCKSDB_OPEN_FILES_MAX);
        // One thread writes (the driver), so concurrent memtable inserts buy nothing; and the
        // vector memtable of `requests` (see `column_family_options`) does not support them.
        options.set_allow_concurrent_memtable_write(false);
        // `meta` gets a few bytes per batch and would almost never fill a memtable, pinning every
        // WAL file since its last flush: hundreds of MiB replayed on restart. Past this total
        // RocksDB flushes the column families that hold the oldest WAL.
        options.set_max_total_wal_size(32 << 20);
        // The memtables of all four column families share one budget (RocksDB flushes the
        // largest when it is reached), and their memory is charged to the block cache, so the
        // two together stay within `ROCKSDB_MEMORY_BYTES_MAX` whatever the value size.
        let cache = rocksdb::Cache::new_lru_cache(ROCKSDB_MEMORY_BYTES_MAX);
        let memtables = rocksdb::WriteBufferManager::new_write_buffer_manager_with_cache(
            ROCKSDB_MEMTABLES_BYTES_MAX,
            false,
            cache.clone(),
        );
        options.set_write_buffer_manager(&memtables);
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_block_cache(&cache);
        options.set_block_based_table_factory(&table);
        options
    }

    /// The options of one column family: the database's, except the memtable of `requests`.
    ///
    /// A request record's key is its client id, then its seq: each batch inserts (and deletes)
    /// keys all over that column family, and a skip list pays a full search for each one (a
    /// fifth of a follower's driver time at 64 clients went to `RecomputeSpliceLevels`). The
    /// column family is read only by iterating it at open (and by `inspect`), never by key, so
    /// a vector memtable (appends, sorted once when flushed or iterated) fits it. The other
    /// column families are written in slot order, which a skip list's cached splice makes cheap.
    ///
    /// A copy of `database`'s options, not new ones: the copies share its one block cache
    /// (each `Storage::options()` makes a cache of its own).
    fn column_family_options(database: &Options, name: &str) -> Options {
        let mut options = database.clone();
        if name == CF_REQUESTS {
            options.set_memtable_factory(rocksdb::MemtableFactory::Vector);
        }
        options
    }

    /// The write options of a synced batch: through the WAL (never `disable_wal`), then an
    /// fsync of the WAL before the write returns.
    fn synced_writes() -> WriteOptions {
        let mut sync = WriteOptions::default();
        sync.disable_wal(false);
        sync.set_sync(true);
        sync
    }

    /// This directory's incarnation: drawn at random when the identity is first written (and,
    /// for a directory from before incarnations existed, at its first open: the same disk,
    /// with every promise it made).
    fn load_incarnation(&self) -> Result<paxos_core::Incarnation, StorageError> {
        if let Some(incarnation) = self.get::<paxos_core::Incarnation>(CF_META, KEY_INCARNATION)? {
            return Ok(incarnation);
        }
        let mut bytes = [0u8; 8];
        let random = rustls::crypto::ring::default_provider().secure_random;
        random.fill(&mut bytes).map_err(|_| StorageError::Corrupt {
            path: self.path.clone(),
            cf: CF_META,
            key: "incarnation".into(),
            reason: "no randomness available to draw this directory's incarnation".into(),
        })?;
        // 0 means "not bound" in a configuration.
        let incarnation = u64::from_le_bytes(bytes).max(1);
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_META), KEY_INCARNATION, seal(&incarnation)?);
        self.db.write_opt(batch, &self.sync).map_err(|error| self.db_error(error))?;
        Ok(incarnation)
    }

    /// The role this directory was first started with; `flag` is written as that role if none
    /// is kept yet (synced). While the cluster is unbound the node announces this one, whatever
    /// `--role` says now (see `paxos_core::Config::role`).
    pub fn first_role(&self, flag: paxos_core::MemberRole) -> Result<paxos_core::MemberRole, StorageError> {
        if let Some(role) = self.get::<paxos_core::MemberRole>(CF_META, KEY_ROLE)? {
            return Ok(role);
        }
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_META), KEY_ROLE, seal(&flag)?);
        self.db.write_opt(batch, &self.sync).map_err(|error| self.db_error(error))?;
        Ok(flag)
    }

    /// The incarnation of this data directory (see [`paxos_core::Incarnation`]).
    pub fn incarnation(&self) -> paxos_core::Incarnation {
        self.incarnation
    }

    fn check_identity(
        &self,
        cluster: &str,
        node: NodeId,
        write_if_missing: bool,
    ) -> Result<(), StorageError> {
        let found_cluster: Option<String> = self.get(CF_META, KEY_CLUSTER_ID)?;
        let found_node: Option<NodeId> = self.get(CF_META, KEY_NODE_ID)?;
        match (found_cluster, found_node) {
            (Some(found_cluster), Some(found_node)) => {
                if found_cluster != cluster || found_node != node {
                    return Err(StorageError::IdentityMismatch {
                        path: self.path.clone(),
                        found_node,
                        found_cluster,
                        node,
                        cluster: cluster.to_owned(),
                    });
                }
                let found = self.get::<u32>(CF_META, KEY_FORMAT)?.unwrap_or(1);
                if found > STORAGE_FORMAT {
                    return Err(StorageError::FormatTooNew {
                        path: self.path.clone(),
                        found,
                        newest: STORAGE_FORMAT,
                    });
                }
                if found != STORAGE_FORMAT {
                    return Err(StorageError::Format {
                        path: self.path.clone(),
                        found,
                        expected: STORAGE_FORMAT,
                    });
                }
                Ok(())
            }
            (None, None) if !write_if_missing => Ok(()),
            (None, None) => {
                let mut batch = WriteBatch::default();
                batch.put_cf(self.cf(CF_META), KEY_CLUSTER_ID, seal(&cluster.to_owned())?);
                batch.put_cf(self.cf(CF_META), KEY_NODE_ID, seal(&node)?);
                batch.put_cf(self.cf(CF_META), KEY_FORMAT, seal(&STORAGE_FORMAT)?);
                self.db.write_opt(batch, &self.sync).map_err(|error| self.db_error(error))
            }
            _ => Err(StorageError::Corrupt {
                path: self.path.clone(),
                cf: CF_META,
                key: "identity".into(),
                reason: "only half of the identity (cluster id, node id) is present".into(),
            }),
        }
    }

    fn cf(&self, name: &'static str) -> &rocksdb::ColumnFamily {
        // The four column families are created at open; a missing one is a bug, not bad input.
        self.db.cf_handle(name).expect("column family created at open")
    }

    fn db_error(&self, error: rocksdb::Error) -> StorageError {
        StorageError::Db { path: self.path.clone(), error }
    }

    fn unseal<T: serde::de::DeserializeOwned>(
        &self,
        cf: &'static str,
        key: &[u8],
        record: &[u8],
    ) -> Result<T, StorageError> {
        self.check_sum(cf, key, record)?;
        codec::decode(&record[4..]).map_err(|e| StorageError::Corrupt {
            path: self.path.clone(),
            cf,
            key: key_text(cf, key),
            reason: e.to_string(),
        })
    }

    fn get<T: serde::de::DeserializeOwned>(
        &self,
        cf: &'static str,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        match self.db.get_cf(self.cf(cf), key).map_err(|error| self.db_error(error))? {
            Some(record) => self.unseal(cf, key, &record).map(Some),
            None => Ok(None),
        }
    }

    /// Everything the replica recovers from. Reads the accepted records and the duplicate table
    /// (both bounded by garbage collection and table limits), never the history.
    ///
    /// The state read while checking the directory at open is handed out once, not read again.
    pub fn load(&mut self) -> Result<DurableState, StorageError> {
        match self.preloaded.take() {
            Some(state) => Ok(state),
            None => self.read_state(),
        }
    }

    /// Looks at a stopped node's directory `path` without changing a byte (RocksDB opened
    /// read-only writes nothing, not even its info LOG). On a running node's directory it reads
    /// as of the moment, and may fail or miss writes if the node flushes or compacts during the
    /// open (RocksDB's read-only open reads the MANIFEST, then lists the WAL files). With
    /// `verify`, every record of every column family has its checksum checked first, and the
    /// first bad one is the error.
    pub fn inspect(path: &Path, verify: bool) -> Result<Inspection, StorageError> {
        if !path.join("CURRENT").exists() {
            let error =
                std::io::Error::new(std::io::ErrorKind::NotFound, "no database here (no CURRENT file)");
            return Err(StorageError::Io { path: path.to_owned(), error });
        }
        let mut options = Self::options();
        options.create_if_missing(false);
        let storage = Self::open_read_only(&options, path)?;
        let mut records_checked = 0;
        if verify {
            for cf in CF_NAMES {
                for item in storage.db.iterator_cf(storage.cf(cf), IteratorMode::Start) {
                    let (key, record) = item.map_err(|error| storage.db_error(error))?;
                    storage.check_sum(cf, &key, &record)?;
                    records_checked += 1;
                }
            }
        }
        let state = storage.read_state()?;
        let slots = |cf: &'static str| -> Result<(u64, Option<(Slot, Slot)>), StorageError> {
            let mut count = 0;
            let mut range: Option<(Slot, Slot)> = None;
            for item in storage.db.iterator_cf(storage.cf(cf), IteratorMode::Start) {
                let (key, _) = item.map_err(|error| storage.db_error(error))?;
                let slot = storage.slot_of(cf, &key)?;
                range = Some((range.map_or(slot, |(first, _)| first), slot));
                count += 1;
            }
            Ok((count, range))
        };
        let (accepted_records, accepted_range) = slots(CF_ACCEPTED)?;
        let (history_entries, history_range) = slots(CF_HISTORY)?;
        Ok(Inspection {
            path: path.to_owned(),
            cluster: storage.get(CF_META, KEY_CLUSTER_ID)?,
            node: storage.get(CF_META, KEY_NODE_ID)?,
            incarnation: storage.get(CF_META, KEY_INCARNATION)?,
            role: storage.get(CF_META, KEY_ROLE)?,
            promised: state.promised,
            accepted_records,
            accepted_range,
            applied_upto: state.applied_upto,
            history_start: state.truncation.history_start,
            history_entries,
            history_range,
            request_records: state.requests.len() as u64,
            sessions: state.requests.sessions() as u64,
            membership: state.membership,
            records_checked: verify.then_some(records_checked),
        })
    }

    /// A record's checksum, without decoding it.
    fn check_sum(&self, cf: &'static str, key: &[u8], record: &[u8]) -> Result<(), StorageError> {
        let corrupt = |reason: String| StorageError::Corrupt {
            path: self.path.clone(),
            cf,
            key: key_text(cf, key),
            reason,
        };
        if record.len() < 4 {
            return Err(corrupt(format!("record of {} bytes is shorter than its checksum", record.len())));
        }
        let (checksum, body) = record.split_at(4);
        if crc32fast::hash(body).to_be_bytes() != checksum {
            return Err(corrupt("checksum mismatch".into()));
        }
        Ok(())
    }

    /// What a node started on `path` would recover, read without writing anything to the
    /// directory's database (RocksDB opened read-only; a directory with no database holds
    /// nothing). For tests and tools that look at a stopped node's disk.
    pub fn read_durable_state(path: &Path) -> Result<DurableState, StorageError> {
        if !path.join("CURRENT").exists() {
            return Ok(DurableState::default());
        }
        Self::open_read_only(&Self::options(), path)?.read_state()
    }

    /// The database opened read-only (RocksDB writes nothing, takes no lock): for checks at
    /// open, `inspect` and tests; it must never be written through.
    fn open_read_only(options: &Options, path: &Path) -> Result<Storage, StorageError> {
        let db = DB::open_cf_for_read_only(options, path, CF_NAMES, false)
            .map_err(|error| db_error(path, error))?;
        Ok(Storage {
            db: db.into(),
            path: path.to_owned(),
            sync: WriteOptions::default(),
            fsyncs: 0,
            written_bytes: 0,
            preloaded: None,
            promised: Ballot::ZERO,
            incarnation: 0,
        })
    }

    fn read_state(&self) -> Result<DurableState, StorageError> {
        let promised: Ballot = self.get(CF_META, KEY_PROMISED)?.unwrap_or(Ballot::ZERO);
        let applied_upto: Slot = self.get(CF_META, KEY_APPLIED_UPTO)?.unwrap_or(0);
        let truncation: TruncationSnapshot = self.get(CF_META, KEY_TRUNCATION)?.unwrap_or_default();
        let membership: Option<paxos_core::Membership> = self.get(CF_META, KEY_MEMBERSHIP)?;
        let mut accepted = BTreeMap::new();
        for item in self.db.iterator_cf(self.cf(CF_ACCEPTED), IteratorMode::Start) {
            let (key, record) = item.map_err(|error| self.db_error(error))?;
            let slot = self.slot_of(CF_ACCEPTED, &key)?;
            let entry: (Ballot, Value) = self.unseal(CF_ACCEPTED, &key, &record)?;
            accepted.insert(slot, entry);
        }
        let mut records = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_REQUESTS), IteratorMode::Start) {
            let (key, record) = item.map_err(|error| self.db_error(error))?;
            if key.len() != 16 {
                return Err(StorageError::Corrupt {
                    path: self.path.clone(),
                    cf: CF_REQUESTS,
                    key: format!("{key:?}"),
                    reason: "request key is not 16 bytes".into(),
                });
            }
            let client_id = u64::from_be_bytes(key[..8].try_into().unwrap_or_default());
            let seq = u64::from_be_bytes(key[8..].try_into().unwrap_or_default());
            let (slot, digest): (Slot, Digest) = self.unseal(CF_REQUESTS, &key, &record)?;
            records.push((RequestId { client_id, seq }, slot, digest));
        }
        if applied_upto < truncation.history_start {
            return Err(StorageError::Corrupt {
                path: self.path.clone(),
                cf: CF_META,
                key: "applied_upto".into(),
                reason: format!(
                    "applied prefix {applied_upto} is below the history start {}",
                    truncation.history_start
                ),
            });
        }
        Ok(DurableState {
            promised,
            accepted,
            applied_upto,
            truncation,
            requests: RequestTable::from_records(records),
            membership,
            role: None,
        })
    }

    fn slot_of(&self, cf: &'static str, key: &[u8]) -> Result<Slot, StorageError> {
        let bytes: [u8; 8] = key.try_into().map_err(|_| StorageError::Corrupt {
            path: self.path.clone(),
            cf,
            key: format!("{key:?}"),
            reason: "slot key is not 8 bytes".into(),
        })?;
        Ok(Slot::from_be_bytes(bytes))
    }

    /// Writes one Ready's operations as one atomic, synced batch.
    ///
    /// # Correctness
    /// An error here is fatal: the caller must stop the node without sending anything from this
    /// Ready and without retrying (after a failed fsync the kernel may have dropped the pages).
    pub fn write(&mut self, ops: &[PersistOp]) -> Result<(), StorageError> {
        self.write_batch(ops, true)
    }

    /// Writes one Ready's operations as one atomic batch, synced only if `sync`. RocksDB's WAL
    /// is ordered: a later synced batch makes this one durable too, and a crash loses at most a
    /// suffix of unsynced batches, which is what [`paxos_core::Ready`]'s contract requires.
    pub fn write_batch(&mut self, ops: &[PersistOp], sync: bool) -> Result<(), StorageError> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut promised = self.promised;
        let mut batch = WriteBatch::default();
        let meta = self.cf(CF_META);
        let accepted = self.cf(CF_ACCEPTED);
        let history = self.cf(CF_HISTORY);
        let requests = self.cf(CF_REQUESTS);
        for op in ops {
            match op {
                PersistOp::Promise(ballot) => {
                    assert!(*ballot >= promised, "promise went down: {promised} -> {ballot}");
                    promised = *ballot;
                    batch.put_cf(meta, KEY_PROMISED, seal(ballot)?)
                }
                PersistOp::Accept { slot, ballot, value } => {
                    batch.put_cf(accepted, slot_key(*slot), seal(&(ballot, value))?)
                }
                PersistOp::Apply { slot, value } => batch.put_cf(history, slot_key(*slot), seal(value)?),
                PersistOp::AppliedUpto(slot) => batch.put_cf(meta, KEY_APPLIED_UPTO, seal(slot)?),
                PersistOp::RequestInsert { request_id, slot, digest } => {
                    batch.put_cf(requests, request_key(*request_id), seal(&(*slot, *digest))?)
                }
                PersistOp::RequestRemove { request_id } => {
                    batch.delete_cf(requests, request_key(*request_id))
                }
                PersistOp::DeleteAcceptedBelow(slot) => {
                    batch.delete_range_cf(accepted, slot_key(0), slot_key(*slot))
                }
                PersistOp::Truncate(snapshot) => {
                    let start = slot_key(snapshot.history_start);
                    batch.delete_range_cf(history, slot_key(0), start);
                    batch.delete_range_cf(accepted, slot_key(0), start);
                    batch.put_cf(meta, KEY_TRUNCATION, seal(snapshot)?);
                }
                PersistOp::InstallSnapshot(snapshot) => {
                    batch.delete_range_cf(history, slot_key(0), slot_key(u64::MAX));
                    batch.delete_cf(history, slot_key(u64::MAX));
                    batch.delete_range_cf(accepted, slot_key(0), slot_key(snapshot.history_start));
                    batch.delete_range_cf(requests, [0u8; 16], [0xFFu8; 16]);
                    batch.delete_cf(requests, [0xFFu8; 16]);
                    for (request_id, slot, digest) in snapshot.requests.records() {
                        batch.put_cf(requests, request_key(request_id), seal(&(slot, digest))?);
                    }
                    batch.put_cf(meta, KEY_APPLIED_UPTO, seal(&snapshot.history_start)?);
                    batch.put_cf(meta, KEY_TRUNCATION, seal(snapshot)?);
                    if let Some(membership) = &snapshot.membership {
                        batch.put_cf(meta, KEY_MEMBERSHIP, seal(membership)?);
                    }
                }
                PersistOp::Membership(membership) => batch.put_cf(meta, KEY_MEMBERSHIP, seal(membership)?),
            }
        }
        self.written_bytes += batch.size_in_bytes() as u64;
        if sync {
            self.db.write_opt(batch, &self.sync).map_err(|error| self.db_error(error))?;
            self.fsyncs += 1;
        } else {
            self.db.write(batch).map_err(|error| self.db_error(error))?;
        }
        self.promised = promised;
        Ok(())
    }

    /// Applied history in `[from_slot, upto_slot)`, at most `entries_max` entries and about
    /// `bytes_max` bytes (always at least one entry when there is one).
    pub fn read_history(
        &self,
        from_slot: Slot,
        upto_slot: Slot,
        entries_max: usize,
        bytes_max: usize,
    ) -> Result<Vec<(Slot, Value)>, StorageError> {
        self.history_view().read(from_slot, upto_slot, entries_max, bytes_max)
    }

    /// A handle that reads the applied history from another thread (see `HistoryView`).
    pub fn history_view(&self) -> HistoryView {
        HistoryView { storage: self.reader_shell() }
    }

    /// The fields of a `Storage` that only reads (no fsync count, no preloaded state).
    fn reader_shell(&self) -> Storage {
        Storage {
            db: self.db.clone(),
            path: self.path.clone(),
            sync: WriteOptions::default(),
            fsyncs: 0,
            written_bytes: 0,
            preloaded: None,
            promised: self.promised,
            incarnation: self.incarnation,
        }
    }

    /// Synced batches written since open (fsyncs).
    pub fn fsyncs(&self) -> u64 {
        self.fsyncs
    }

    /// Bytes of the write batches written since open (see the field).
    pub fn written_bytes(&self) -> u64 {
        self.written_bytes
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Test hook: one raw record as stored (checksum included).
    #[doc(hidden)]
    pub fn raw_record_for_test(&self, cf: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.db.get_cf(self.cf(cf), key).map_err(|error| self.db_error(error))
    }

    /// Test hook: overwrites one raw record, to simulate corruption on disk.
    #[doc(hidden)]
    pub fn corrupt_for_test(&self, cf: &'static str, key: &[u8], bytes: &[u8]) -> Result<(), StorageError> {
        self.db.put_cf(self.cf(cf), key, bytes).map_err(|error| self.db_error(error))
    }
}

/// Column family names, for tests that corrupt records on purpose.
pub mod cf {
    pub const META: &str = super::CF_META;
    pub const KEY_PROMISED: &[u8] = super::KEY_PROMISED;
    pub const ACCEPTED: &str = super::CF_ACCEPTED;
    pub const HISTORY: &str = super::CF_HISTORY;
}

#[cfg(test)]
mod tests {
    use super::*;
    use paxos_core::{Config, Envelope, Message, Replica};

    fn command(seq: u64) -> Value {
        Value::Command {
            request_id: RequestId { client_id: 1, seq },
            key: [3; 16],
            payload: format!("v{seq}").into_bytes(),
        }
    }

    /// A directory written before session keys (no format record) would fail to decode its
    /// values as corrupt: it is refused at open with what to do, before any record is read.
    #[test]
    fn a_directory_of_an_older_storage_format_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path(), "c", 1).expect("open");
        storage.db.delete_cf(storage.cf(CF_META), KEY_FORMAT).expect("delete the format record");
        drop(storage);
        match Storage::open(dir.path(), "c", 1) {
            Err(error @ StorageError::Format { found: 1, expected: STORAGE_FORMAT, .. }) => {
                assert!(error.to_string().contains("new --data-dir"), "{error}");
            }
            other => panic!("expected a format error, got {:?}", other.map(|_| ())),
        }
    }

    /// A directory a newer binary wrote is refused in one line that says so, not misread.
    #[test]
    fn a_directory_of_a_newer_format_is_refused_as_newer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path(), "c", 1).expect("open");
        let newer = seal(&(STORAGE_FORMAT + 1)).expect("seal");
        storage.db.put_cf(storage.cf(CF_META), KEY_FORMAT, newer).expect("write a newer format");
        drop(storage);
        match Storage::open(dir.path(), "c", 1) {
            Err(error @ StorageError::FormatTooNew { .. }) => {
                assert!(error.to_string().contains("written by a newer paxos-node"), "{error}");
            }
            other => panic!("expected a format error, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn round_trips_every_operation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut storage = Storage::open(dir.path(), "c", 1).expect("open");
        let request_id = RequestId { client_id: 1, seq: 1 };
        storage
            .write(&[
                PersistOp::Promise(Ballot::new(3, 2)),
                PersistOp::Accept { slot: 0, ballot: Ballot::new(3, 2), value: command(1) },
                PersistOp::Accept { slot: 1, ballot: Ballot::new(3, 2), value: Value::Noop },
                PersistOp::Apply { slot: 0, value: command(1) },
                PersistOp::AppliedUpto(1),
                // Session 1's registration (seq 0, at slot 1, its id) and one request.
                PersistOp::RequestInsert {
                    request_id: RequestId { client_id: 1, seq: 0 },
                    slot: 1,
                    digest: [3; 16],
                },
                PersistOp::RequestInsert { request_id, slot: 0, digest: [4; 16] },
            ])
            .expect("write");
        drop(storage);
        let mut storage = Storage::open(dir.path(), "c", 1).expect("reopen");
        let state = storage.load().expect("load");
        assert_eq!(state.promised, Ballot::new(3, 2));
        assert_eq!(state.accepted.len(), 2);
        assert_eq!(state.applied_upto, 1);
        assert_eq!(
            state.requests.records(),
            vec![(RequestId { client_id: 1, seq: 0 }, 1, [3; 16]), (request_id, 0, [4; 16])]
        );
        assert_eq!(storage.read_history(0, 10, 10, 1 << 20).expect("read"), vec![(0, command(1))]);
    }

    #[test]
    fn gc_truncation_and_snapshot_install_match_the_reference_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut storage = Storage::open(dir.path(), "c", 1).expect("open");
        let mut reference = paxos_core::MemStorage::default();
        let mut ops = Vec::new();
        for slot in 0..10 {
            ops.push(PersistOp::Accept { slot, ballot: Ballot::new(1, 1), value: command(slot) });
            ops.push(PersistOp::Apply { slot, value: command(slot) });
        }
        ops.push(PersistOp::AppliedUpto(10));
        ops.push(PersistOp::DeleteAcceptedBelow(5));
        let snapshot = TruncationSnapshot {
            history_start: 3,
            table_upto: 10,
            requests: RequestTable::default(),
            membership: None,
        };
        ops.push(PersistOp::Truncate(snapshot));
        storage.write(&ops).expect("write");
        reference.apply(&ops);
        let state = storage.load().expect("load");
        assert_eq!(state, reference.durable_state());
        assert_eq!(storage.read_history(0, 100, 100, 1 << 20).expect("read").len(), 7);
        let mut table = RequestTable::default();
        // One session held: opening the second evicts the first, so the snapshot carries the
        // eviction watermark and a session's nonce too.
        let limits = paxos_core::TableLimits { clients_max: 1, seqs_per_client_max: 8 };
        table.open_session(3, 0x77, [3; 16], limits);
        table.open_session(4, 0x99, [4; 16], limits);
        assert_eq!(table.evicted_upto(), Some(3));
        table.insert(RequestId { client_id: 4, seq: 4 }, 20, [5; 16], limits);
        let install = [PersistOp::InstallSnapshot(TruncationSnapshot {
            history_start: 20,
            table_upto: 25,
            requests: table,
            membership: Some(paxos_core::Membership::bound(&[1, 2, 3], |id| id + 100)),
        })];
        storage.write(&install).expect("write");
        reference.apply(&install);
        assert_eq!(storage.load().expect("load"), reference.durable_state());
        assert!(storage.read_history(0, 100, 100, 1 << 20).expect("read").is_empty());
    }

    /// The role a directory was first started with stays its role for the bootstrap: a
    /// restart with another `--role` does not change what it announces.
    /// The rules `Storage::options` documents, read back from the OPTIONS file RocksDB wrote:
    /// a change to any of them (here or in a RocksDB default) fails this test.
    #[test]
    fn the_durability_options_are_those_the_ready_contract_needs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("data");
        let storage = Storage::open(&path, "c", 1).expect("open");
        drop(storage);
        let mut options_files: Vec<_> = std::fs::read_dir(&path)
            .expect("read dir")
            .filter_map(|entry| entry.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|name| name.starts_with("OPTIONS-"))
            .collect();
        options_files.sort();
        let latest = options_files.last().expect("RocksDB writes an OPTIONS file");
        let text = std::fs::read_to_string(path.join(latest)).expect("read OPTIONS");
        let db_options: BTreeMap<&str, &str> = text
            .split("[CFOptions")
            .next()
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.trim().split_once('='))
            .collect();
        let expect = |key: &str, want: &str| {
            assert_eq!(db_options.get(key).copied(), Some(want), "{key} in {latest}");
        };
        expect("wal_recovery_mode", "kPointInTimeRecovery");
        expect("manual_wal_flush", "false");
        expect("unordered_write", "false");
        expect("allow_mmap_writes", "false");
        let wal_dir = db_options.get("wal_dir").copied().unwrap_or_default();
        assert!(
            wal_dir.is_empty() || Path::new(wal_dir) == path,
            "the WAL must live in the data directory, found wal_dir={wal_dir}"
        );
    }

    #[test]
    fn a_data_directory_in_use_is_named_as_such() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = Storage::open(dir.path(), "c", 1).expect("open");
        let second = Storage::open(dir.path(), "c", 1).expect_err("the directory is locked");
        assert!(matches!(second, StorageError::InUse { .. }), "{second}");
        assert!(second.to_string().contains("in use by another paxos-node"), "{second}");
    }

    #[test]
    fn a_data_directory_and_its_missing_parents_are_created() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a/b/data");
        create_dir_durably(&path).expect("create");
        assert!(path.is_dir());
        create_dir_durably(&path).expect("an existing directory is fine");
        std::fs::write(dir.path().join("file"), b"").expect("write");
        assert!(create_dir_durably(&dir.path().join("file")).is_err(), "a file is not a directory");
    }

    #[test]
    fn a_directory_keeps_the_role_it_was_first_started_with() {
        use paxos_core::MemberRole;
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let storage = Storage::open(dir.path(), "c", 1).expect("open");
            assert_eq!(storage.first_role(MemberRole::Proposer).expect("role"), MemberRole::Proposer);
        }
        let storage = Storage::open(dir.path(), "c", 1).expect("reopen");
        assert_eq!(storage.first_role(MemberRole::Voter).expect("role"), MemberRole::Proposer);
    }

    #[test]
    fn a_restarted_acceptor_refuses_a_ballot_below_its_promise() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config::new(1, vec![1, 2, 3]);
        {
            let mut storage = Storage::open(dir.path(), "c", 1).expect("open");
            let mut replica = Replica::new(config.clone(), 1);
            let prepare = Message::Prepare { ballot: Ballot::new(7, 2), from_slot: 0, transfer: false };
            replica.step(Envelope {
                from: 2,
                to: 1,
                incarnation: 2,
                role: Default::default(),
                message: prepare,
            });
            let ready = replica.take_ready();
            storage.write(&ready.persist).expect("write");
            replica.on_persisted(ready.number);
        }
        let mut storage = Storage::open(dir.path(), "c", 1).expect("reopen");
        let mut replica = Replica::recover(config, storage.load().expect("load"), 2);
        let prepare = Message::Prepare { ballot: Ballot::new(6, 3), from_slot: 0, transfer: false };
        replica.step(Envelope { from: 3, to: 1, incarnation: 3, role: Default::default(), message: prepare });
        let ready = replica.take_ready();
        assert!(ready.persist.is_empty());
        assert!(matches!(
            ready.messages[0].message,
            Message::Nack { promised, .. } if promised == Ballot::new(7, 2)
        ));
    }

    #[test]
    fn a_corrupt_record_is_reported_with_its_location() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut storage = Storage::open(dir.path(), "c", 1).expect("open");
        storage
            .write(&[PersistOp::Accept { slot: 5, ballot: Ballot::new(1, 1), value: Value::Noop }])
            .expect("write");
        let mut record =
            storage.db.get_cf(storage.cf(CF_ACCEPTED), slot_key(5)).expect("get").expect("present");
        let last = record.len() - 1;
        record[last] ^= 0x40;
        storage.corrupt_for_test(cf::ACCEPTED, &slot_key(5), &record).expect("put");
        let error = storage.load().expect_err("corruption must be detected");
        let text = error.to_string();
        assert!(
            text.contains("corrupt record") && text.contains("accepted") && text.contains("slot 5"),
            "{text}"
        );
    }

    #[test]
    fn a_data_directory_of_another_node_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(Storage::open(dir.path(), "c", 1).expect("open"));
        let error = Storage::open(dir.path(), "c", 2).expect_err("another node id");
        assert!(error.to_string().contains("belongs to node 1"), "{error}");
        let error = Storage::open(dir.path(), "other", 1).expect_err("another cluster");
        assert!(matches!(error, StorageError::IdentityMismatch { .. }));
        // The rightful owner still opens it.
        Storage::open(dir.path(), "c", 1).expect("reopen as node 1");
    }
}
