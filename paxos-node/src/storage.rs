//! Durable storage in RocksDB: one database per data directory.
//!
//! Column families (storage format 4):
//! - `meta`: identity (cluster id, node id), format, promised ballot, applied prefix,
//!   truncation, configuration;
//! - `log`: slot -> one record per slot, the value written once: below the applied prefix it
//!   is the history entry, from the applied prefix up it is the acceptor's accepted value (see
//!   `LogRecord`);
//! - `requests`: (client id, seq) -> (slot, digest), the duplicate table (the digest is the
//!   session's key for a registration record, seq 0, else the payload's);
//! - `accepted` and `history`: format 3's, empty since its migration (see `migrate_from_3`).
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
const CF_LOG: &str = "log";
const CF_REQUESTS: &str = "requests";
/// Format 3's accepted records and history, moved into `log` at the first open by format 4.
/// Kept, empty: a format 3 binary opens a directory's read-only view with these names, and
/// with them present it gets as far as the format record and refuses the directory as newer,
/// in one line, instead of failing on a missing column family.
const CF_ACCEPTED_FORMAT_3: &str = "accepted";
const CF_HISTORY_FORMAT_3: &str = "history";
const CF_NAMES: [&str; 5] = [CF_META, CF_LOG, CF_REQUESTS, CF_ACCEPTED_FORMAT_3, CF_HISTORY_FORMAT_3];

/// One slot's record in `log`, as stored.
///
/// # Correctness
/// Which one a record is says how it was written, not whether its slot is chosen: that is the
/// applied prefix's to say. An `Accepted` record below the prefix is the history entry (the
/// replica wrote `PersistOp::ApplyAccepted` only because the entry equals it); an `Entry` is
/// only ever written below the prefix (`Apply`, in the batch that raises it), so one at or
/// above it is corrupt.
#[derive(Debug, serde::Deserialize)]
enum LogRecord {
    Accepted(Ballot, Value),
    Entry(Value),
}

impl LogRecord {
    fn into_value(self) -> Value {
        match self {
            LogRecord::Accepted(_, value) | LogRecord::Entry(value) => value,
        }
    }
}

/// [`LogRecord`] to write, borrowing its parts (bincode encodes both alike).
#[derive(serde::Serialize)]
enum LogRecordRef<'a> {
    Accepted(&'a Ballot, &'a Value),
    Entry(&'a Value),
}

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
        // Only entries: the log's records from the applied prefix up are accepted values, so the
        // page ends at the prefix as of the same snapshot.
        let applied_upto: Slot = match snapshot
            .get_cf(storage.cf(CF_META), KEY_APPLIED_UPTO)
            .map_err(|error| storage.db_error(error))?
        {
            Some(record) => storage.unseal(CF_META, KEY_APPLIED_UPTO, &record)?,
            None => 0,
        };
        let upto_slot = upto_slot.min(applied_upto);
        let mut entries = Vec::new();
        let mut bytes = 0;
        let start = slot_key(from_slot);
        let mode = IteratorMode::From(&start, Direction::Forward);
        for item in snapshot.iterator_cf(storage.cf(CF_LOG), mode) {
            let (key, record) = item.map_err(|error| storage.db_error(error))?;
            let slot = storage.slot_of(CF_LOG, &key)?;
            if slot >= upto_slot {
                break;
            }
            let value = storage.unseal::<LogRecord>(CF_LOG, &key, &record)?.into_value();
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
/// nonce and the eviction watermark. Format 4: one `log` of values written once, in place of
/// format 3's `accepted` and `history` (a format 3 directory is migrated at open).
pub const STORAGE_FORMAT: u32 = 4;
/// The oldest format this binary opens (migrating it to [`STORAGE_FORMAT`]).
pub const STORAGE_FORMAT_OLDEST: u32 = 3;
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
         one reads formats {oldest} to {expected}: give it a new --data-dir (and `paxos-cli member \
         replace` it into the cluster), or run the version that wrote it"
    )]
    Format { path: PathBuf, found: u32, oldest: u32, expected: u32 },
    /// A directory written by a newer binary: refused before anything is read, so a downgrade
    /// never misreads records it does not understand (nor rewrites them).
    #[error(
        "data directory {path} holds storage format {found}, written by a newer paxos-node; this \
         one reads formats up to {newest}: run the version that wrote it, or a newer one"
    )]
    FormatTooNew { path: PathBuf, found: u32, newest: u32 },
    /// A directory of an older format, read without writing (`inspect`): the node migrates
    /// it at its next start, and only then is it read.
    #[error(
        "data directory {path} holds storage format {found}: this paxos-node migrates it to \
         format {current} at its next start; start the node once, then inspect it",
        current = STORAGE_FORMAT
    )]
    NotMigrated { path: PathBuf, found: u32 },
    /// The writer thread ended (an invariant of a write broke, and it panicked): nothing after
    /// its last reported write is known to be stored.
    #[error("the storage writer thread stopped (an invariant broke; see the log above)")]
    WriterStopped,
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
    /// The applied prefix on disk: an accepted value written below it would overwrite a history
    /// entry, a bug in the replica (asserted, as `MemStorage` does).
    applied_upto: Slot,
    incarnation: paxos_core::Incarnation,
    /// Tests only: how many of the next writes fail as a disk's would (an error, no panic).
    #[cfg(test)]
    writes_to_fail: u32,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").field("path", &self.path).finish()
    }
}

fn slot_key(slot: Slot) -> [u8; 8] {
    slot.to_be_bytes()
}

/// Deletes every slot-keyed record of `cf` (a range delete ends before its end key, so the
/// last possible key goes by itself).
fn delete_every_slot(batch: &mut WriteBatch, cf: &rocksdb::ColumnFamily) {
    batch.delete_range_cf(cf, slot_key(0), slot_key(u64::MAX));
    batch.delete_cf(cf, slot_key(u64::MAX));
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
    /// recovery needs: a refused start (wrong node, corrupt record, a format it does not read)
    /// must leave the directory as it was, and a read-write open already writes (WAL replay, a
    /// new MANIFEST). A directory of an older format it reads is migrated once that check passed
    /// (see `migrate_from_3`).
    pub fn open(path: &Path, cluster: &str, node: NodeId) -> Result<Self, StorageError> {
        create_dir_durably(path).map_err(|error| StorageError::Io { path: path.to_owned(), error })?;
        make_private(path).map_err(|error| StorageError::Io { path: path.to_owned(), error })?;
        let options = Self::options();
        let sync = Self::synced_writes();
        let db_error = |error| db_error(path, error);
        let mut preloaded = None;
        let mut format = None;
        if path.join("CURRENT").exists() {
            let read_only = Self::open_read_only(&options, path)?;
            format = read_only.check_identity(cluster, node, false)?;
            match format {
                Some(3) => read_only.check_format_3()?,
                _ => preloaded = Some(read_only.read_state()?),
            }
        }
        let cfs = CF_NAMES
            .into_iter()
            .map(|name| ColumnFamilyDescriptor::new(name, Self::column_family_options(&options, name)));
        let db = DB::open_cf_descriptors(&options, path, cfs).map_err(db_error)?;
        let state = preloaded.as_ref();
        let mut storage = Storage {
            db: db.into(),
            path: path.to_owned(),
            sync,
            fsyncs: 0,
            written_bytes: 0,
            promised: state.map_or(Ballot::ZERO, |state| state.promised),
            applied_upto: state.map_or(0, |state| state.applied_upto),
            preloaded,
            incarnation: 0,
            #[cfg(test)]
            writes_to_fail: 0,
        };
        if format == Some(3) {
            storage.migrate_from_3()?;
            let state = storage.read_state()?;
            (storage.promised, storage.applied_upto) = (state.promised, state.applied_upto);
            storage.preloaded = Some(state);
        }
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
    ///   neither the order of writes nor what an fsync covers would be ours;
    /// - no recycled WAL files (`recycle_log_file_num` 0, RocksDB's default): an fdatasync of a
    ///   WAL written over in place is cheaper (no size or extent update), but after a power cut
    ///   the recycled log's records end at a stale record of its previous life, which
    ///   point-in-time recovery takes for corruption; if the next log lost all its (unsynced)
    ///   records while a column family had flushed past it, the open fails with "SST file is
    ///   ahead of WALs" and the node stays down (db_impl_open.cc, RocksDB 10.4: no exemption for
    ///   an empty next log; RocksDB's own test of the case is disabled). See docs/design.md.
    pub fn options() -> Options {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_manual_wal_flush(false);
        options.set_wal_recovery_mode(rocksdb::DBRecoveryMode::PointInTime);
        options.set_unordered_write(false);
        options.set_allow_mmap_writes(false);
        options.set_recycle_log_file_num(0);
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
        // The memtables of all the column families share one budget (RocksDB flushes the
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

    /// Checks that the directory is `node`'s of `cluster` (writing that identity, and the
    /// format, into a new one if `write_if_missing`), in a format this binary reads: the
    /// format found, `None` for a new directory.
    fn check_identity(
        &self,
        cluster: &str,
        node: NodeId,
        write_if_missing: bool,
    ) -> Result<Option<u32>, StorageError> {
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
                if found < STORAGE_FORMAT_OLDEST {
                    return Err(StorageError::Format {
                        path: self.path.clone(),
                        found,
                        oldest: STORAGE_FORMAT_OLDEST,
                        expected: STORAGE_FORMAT,
                    });
                }
                Ok(Some(found))
            }
            (None, None) if !write_if_missing => Ok(None),
            (None, None) => {
                let mut batch = WriteBatch::default();
                batch.put_cf(self.cf(CF_META), KEY_CLUSTER_ID, seal(&cluster.to_owned())?);
                batch.put_cf(self.cf(CF_META), KEY_NODE_ID, seal(&node)?);
                batch.put_cf(self.cf(CF_META), KEY_FORMAT, seal(&STORAGE_FORMAT)?);
                self.db.write_opt(batch, &self.sync).map_err(|error| self.db_error(error))?;
                Ok(None)
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
        storage.check_format_is_current()?;
        let mut records_checked = 0;
        if verify {
            // The column families the directory has (an unfinished first start may lack some).
            for (cf, handle) in CF_NAMES.into_iter().filter_map(|cf| Some((cf, storage.db.cf_handle(cf)?))) {
                for item in storage.db.iterator_cf(handle, IteratorMode::Start) {
                    let (key, record) = item.map_err(|error| storage.db_error(error))?;
                    storage.check_sum(cf, &key, &record)?;
                    records_checked += 1;
                }
            }
        }
        let state = storage.read_state()?;
        // One pass over the log: below the applied prefix, entries; from it up, accepted values.
        let (mut history_entries, mut history_range) = (0, None);
        let (mut accepted_records, mut accepted_range) = (0, None);
        let log = storage.db.cf_handle(CF_LOG);
        for item in log.into_iter().flat_map(|log| storage.db.iterator_cf(log, IteratorMode::Start)) {
            let (key, _) = item.map_err(|error| storage.db_error(error))?;
            let slot = storage.slot_of(CF_LOG, &key)?;
            let (count, range): (&mut u64, &mut Option<(Slot, Slot)>) = if slot < state.applied_upto {
                (&mut history_entries, &mut history_range)
            } else {
                (&mut accepted_records, &mut accepted_range)
            };
            *range = Some((range.map_or(slot, |(first, _)| first), slot));
            *count += 1;
        }
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

    /// Refuses, for a reader that does not write (`inspect`, tests), a directory in another
    /// format than this binary writes: an older one is migrated by the node's next start, not
    /// read in its old layout.
    fn check_format_is_current(&self) -> Result<(), StorageError> {
        match self.get::<u32>(CF_META, KEY_FORMAT)? {
            None | Some(STORAGE_FORMAT) => Ok(()),
            Some(found) if found > STORAGE_FORMAT => {
                Err(StorageError::FormatTooNew { path: self.path.clone(), found, newest: STORAGE_FORMAT })
            }
            Some(found) if found < STORAGE_FORMAT_OLDEST => Err(StorageError::Format {
                path: self.path.clone(),
                found,
                oldest: STORAGE_FORMAT_OLDEST,
                expected: STORAGE_FORMAT,
            }),
            Some(found) => Err(StorageError::NotMigrated { path: self.path.clone(), found }),
        }
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
        let storage = Self::open_read_only(&Self::options(), path)?;
        storage.check_format_is_current()?;
        storage.read_state()
    }

    /// The database opened read-only (RocksDB writes nothing, takes no lock): for checks at
    /// open, `inspect` and tests; it must never be written through.
    ///
    /// It opens the column families the directory has, whatever its format: the format record
    /// is read first, and decides which of them are read.
    fn open_read_only(options: &Options, path: &Path) -> Result<Storage, StorageError> {
        let present = DB::list_cf(options, path).map_err(|error| db_error(path, error))?;
        let names = present.iter().filter(|name| CF_NAMES.contains(&name.as_str()));
        let db =
            DB::open_cf_for_read_only(options, path, names, false).map_err(|error| db_error(path, error))?;
        Ok(Storage {
            db: db.into(),
            path: path.to_owned(),
            sync: WriteOptions::default(),
            fsyncs: 0,
            written_bytes: 0,
            preloaded: None,
            promised: Ballot::ZERO,
            applied_upto: 0,
            incarnation: 0,
            #[cfg(test)]
            writes_to_fail: 0,
        })
    }

    fn read_state(&self) -> Result<DurableState, StorageError> {
        let promised: Ballot = self.get(CF_META, KEY_PROMISED)?.unwrap_or(Ballot::ZERO);
        let applied_upto: Slot = self.get(CF_META, KEY_APPLIED_UPTO)?.unwrap_or(0);
        let truncation: TruncationSnapshot = self.get(CF_META, KEY_TRUNCATION)?.unwrap_or_default();
        let membership: Option<paxos_core::Membership> = self.get(CF_META, KEY_MEMBERSHIP)?;
        // The records below the applied prefix are the history, never read here. A directory
        // without `log` holds no accepted value: one an older binary created and left before
        // writing its identity (read as new), or a format 3 one checked before its migration.
        let mut accepted = BTreeMap::new();
        let start = slot_key(applied_upto);
        let mode = IteratorMode::From(&start, Direction::Forward);
        let log = self.db.cf_handle(CF_LOG);
        for item in log.into_iter().flat_map(|log| self.db.iterator_cf(log, mode)) {
            let (key, record) = item.map_err(|error| self.db_error(error))?;
            let slot = self.slot_of(CF_LOG, &key)?;
            match self.unseal::<LogRecord>(CF_LOG, &key, &record)? {
                LogRecord::Accepted(ballot, value) => accepted.insert(slot, (ballot, value)),
                LogRecord::Entry(_) => {
                    return Err(StorageError::Corrupt {
                        path: self.path.clone(),
                        cf: CF_LOG,
                        key: key_text(CF_LOG, &key),
                        reason: format!("a history entry at or above the applied prefix {applied_upto}"),
                    })
                }
            };
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

    /// Reads every record of a format 3 directory that its migration moves, each checked
    /// (checksum and decoding) without writing: a corrupt one refuses the start before the
    /// migration writes anything.
    ///
    /// The records the migration leaves in place (promise, truncation, configuration, the
    /// duplicate table) are checked too, with `read_state`, so that whatever would refuse the
    /// start after the migration refuses it before.
    fn check_format_3(&self) -> Result<(), StorageError> {
        self.read_state()?;
        self.each_format_3_record(|_, _| Ok(()))
    }

    /// Calls `each` with every record of a format 3 directory that format 4 keeps, in slot
    /// order: the history entries (below the applied prefix), then the accepted values from
    /// the applied prefix up. Format 3's accepted records below the prefix are redundant (their
    /// slots are applied, the entries are in its history) and are left behind, as its own GC
    /// would have dropped them.
    fn each_format_3_record(
        &self,
        mut each: impl FnMut(Slot, LogRecord) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let applied_upto: Slot = self.get(CF_META, KEY_APPLIED_UPTO)?.unwrap_or(0);
        for item in self.db.iterator_cf(self.cf(CF_HISTORY_FORMAT_3), IteratorMode::Start) {
            let (key, record) = item.map_err(|error| self.db_error(error))?;
            let slot = self.slot_of(CF_HISTORY_FORMAT_3, &key)?;
            if slot >= applied_upto {
                break;
            }
            each(slot, LogRecord::Entry(self.unseal(CF_HISTORY_FORMAT_3, &key, &record)?))?;
        }
        let start = slot_key(applied_upto);
        let mode = IteratorMode::From(&start, Direction::Forward);
        for item in self.db.iterator_cf(self.cf(CF_ACCEPTED_FORMAT_3), mode) {
            let (key, record) = item.map_err(|error| self.db_error(error))?;
            let slot = self.slot_of(CF_ACCEPTED_FORMAT_3, &key)?;
            let (ballot, value) = self.unseal(CF_ACCEPTED_FORMAT_3, &key, &record)?;
            each(slot, LogRecord::Accepted(ballot, value))?;
        }
        Ok(())
    }

    /// Moves a format 3 directory's history and accepted values into `log`, then empties
    /// format 3's column families and records format 4.
    ///
    /// # Correctness
    /// The records are copied in unsynced batches of bounded size (a history can be larger
    /// than memory), and the last batch, synced, empties the old column families and writes
    /// the format: a crash before it leaves format 3 and its records whole, and the next
    /// start copies them again (the same keys, the same records); a crash after it leaves
    /// format 4 whole. The meta records (promise, applied prefix, truncation, configuration)
    /// and the duplicate table mean the same in both formats and stay as they are.
    fn migrate_from_3(&mut self) -> Result<(), StorageError> {
        const BATCH_BYTES_MAX: usize = 4 << 20;
        let log = self.cf(CF_LOG);
        let mut batch = WriteBatch::default();
        let mut records = 0u64;
        self.each_format_3_record(|slot, record| {
            let sealed = match &record {
                LogRecord::Accepted(ballot, value) => seal(&LogRecordRef::Accepted(ballot, value))?,
                LogRecord::Entry(value) => seal(&LogRecordRef::Entry(value))?,
            };
            batch.put_cf(log, slot_key(slot), sealed);
            records += 1;
            if batch.size_in_bytes() >= BATCH_BYTES_MAX {
                self.db.write(std::mem::take(&mut batch)).map_err(|error| self.db_error(error))?;
            }
            Ok(())
        })?;
        for name in [CF_ACCEPTED_FORMAT_3, CF_HISTORY_FORMAT_3] {
            delete_every_slot(&mut batch, self.cf(name));
        }
        batch.put_cf(self.cf(CF_META), KEY_FORMAT, seal(&STORAGE_FORMAT)?);
        self.db.write_opt(batch, &self.sync).map_err(|error| self.db_error(error))?;
        self.fsyncs += 1;
        tracing::info!(path = %self.path.display(), records, "migrated the data directory from storage format 3 to 4");
        Ok(())
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
        #[cfg(test)]
        if self.writes_to_fail > 0 {
            self.writes_to_fail -= 1;
            let error = std::io::Error::other("a write failure injected by a test");
            return Err(StorageError::Io { path: self.path.clone(), error });
        }
        let mut promised = self.promised;
        let mut applied_upto = self.applied_upto;
        let mut batch = WriteBatch::default();
        let meta = self.cf(CF_META);
        let log = self.cf(CF_LOG);
        let requests = self.cf(CF_REQUESTS);
        for op in ops {
            match op {
                PersistOp::Promise(ballot) => {
                    assert!(*ballot >= promised, "promise went down: {promised} -> {ballot}");
                    promised = *ballot;
                    batch.put_cf(meta, KEY_PROMISED, seal(ballot)?)
                }
                PersistOp::Accept { slot, ballot, value } => {
                    assert!(
                        *slot >= applied_upto,
                        "accepting at {slot}, below the applied prefix {applied_upto}"
                    );
                    batch.put_cf(log, slot_key(*slot), seal(&LogRecordRef::Accepted(ballot, value))?)
                }
                PersistOp::Apply { slot, value } => {
                    batch.put_cf(log, slot_key(*slot), seal(&LogRecordRef::Entry(value))?)
                }
                // The accepted record at the slot is the entry: nothing to write.
                PersistOp::ApplyAccepted { .. } => {}
                PersistOp::AppliedUpto(slot) => {
                    applied_upto = *slot;
                    batch.put_cf(meta, KEY_APPLIED_UPTO, seal(slot)?)
                }
                PersistOp::RequestInsert { request_id, slot, digest } => {
                    batch.put_cf(requests, request_key(*request_id), seal(&(*slot, *digest))?)
                }
                PersistOp::RequestRemove { request_id } => {
                    batch.delete_cf(requests, request_key(*request_id))
                }
                // The records below the applied prefix are its history entries now: the acceptor
                // forgets them, the log keeps them until a truncation.
                PersistOp::DeleteAcceptedBelow(slot) => {
                    assert!(*slot <= applied_upto, "forgetting accepted values above the applied prefix");
                }
                PersistOp::Truncate(snapshot) => {
                    batch.delete_range_cf(log, slot_key(0), slot_key(snapshot.history_start));
                    batch.put_cf(meta, KEY_TRUNCATION, seal(snapshot)?);
                }
                PersistOp::InstallSnapshot(snapshot) => {
                    // The snapshot starts above the applied prefix: every entry is below it, and
                    // the accepted values from it up are kept.
                    assert!(snapshot.history_start > applied_upto, "a snapshot below the applied prefix");
                    applied_upto = snapshot.history_start;
                    batch.delete_range_cf(log, slot_key(0), slot_key(snapshot.history_start));
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
        self.applied_upto = applied_upto;
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
            applied_upto: self.applied_upto,
            incarnation: self.incarnation,
            #[cfg(test)]
            writes_to_fail: 0,
        }
    }

    /// Tests only: the next `count` writes with operations fail as a disk error would.
    #[cfg(test)]
    pub(crate) fn fail_next_writes(&mut self, count: u32) {
        self.writes_to_fail = count;
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
    /// Accepted values and history entries, one record per slot.
    pub const LOG: &str = super::CF_LOG;
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
            Err(error @ StorageError::Format { found: 1, oldest: 3, expected: STORAGE_FORMAT, .. }) => {
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
        assert_eq!(state.accepted.len(), 1, "slot 0's record is its history entry now");
        assert_eq!(state.applied_upto, 1);
        assert_eq!(
            state.requests.records(),
            vec![(RequestId { client_id: 1, seq: 0 }, 1, [3; 16]), (request_id, 0, [4; 16])]
        );
        assert_eq!(storage.read_history(0, 10, 10, 1 << 20).expect("read"), vec![(0, command(1))]);
    }

    /// The point of format 4: a value chosen as this acceptor accepted it is written once. The
    /// entry reads back as the accepted value, the batch that applies it writes only the
    /// applied prefix, and the record no longer counts as accepted after a restart.
    #[test]
    fn a_value_applied_as_accepted_is_written_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut storage = Storage::open(dir.path(), "c", 1).expect("open");
        let value = Value::Command {
            request_id: RequestId { client_id: 1, seq: 2 },
            key: [3; 16],
            payload: vec![7; 1000],
        };
        let ballot = Ballot::new(1, 1);
        storage.write(&[PersistOp::Accept { slot: 0, ballot, value: value.clone() }]).expect("accept");
        let accepted_bytes = storage.written_bytes();
        assert!(accepted_bytes > 1000, "the accept holds the value");
        storage
            .write_batch(&[PersistOp::ApplyAccepted { slot: 0 }, PersistOp::AppliedUpto(1)], false)
            .expect("apply");
        let applied_bytes = storage.written_bytes() - accepted_bytes;
        assert!(applied_bytes < 64, "applying wrote {applied_bytes} bytes: the value again?");
        assert_eq!(storage.read_history(0, 1, 10, 1 << 20).expect("read"), vec![(0, value.clone())]);
        drop(storage);
        let mut storage = Storage::open(dir.path(), "c", 1).expect("reopen");
        let state = storage.load().expect("load");
        assert!(state.accepted.is_empty(), "an applied slot's record is history, not an accepted value");
        assert_eq!(storage.read_history(0, 1, 10, 1 << 20).expect("read"), vec![(0, value)]);
    }

    /// A chosen value other than the accepted one (a lower ballot's, or a duplicate applied as
    /// a no-op) replaces the record: the history holds what was applied.
    #[test]
    fn an_entry_unlike_the_accepted_value_replaces_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut storage = Storage::open(dir.path(), "c", 1).expect("open");
        storage
            .write(&[
                PersistOp::Accept { slot: 0, ballot: Ballot::new(1, 1), value: command(1) },
                PersistOp::Apply { slot: 0, value: Value::Noop },
                PersistOp::AppliedUpto(1),
                PersistOp::Accept { slot: 1, ballot: Ballot::new(1, 1), value: command(2) },
            ])
            .expect("write");
        drop(storage);
        let mut storage = Storage::open(dir.path(), "c", 1).expect("reopen");
        let state = storage.load().expect("load");
        assert_eq!(state.accepted.keys().copied().collect::<Vec<_>>(), vec![1]);
        assert_eq!(storage.read_history(0, 1, 10, 1 << 20).expect("read"), vec![(0, Value::Noop)]);
    }

    /// The database in `path` opened read-write with format 3's column families, as a format 3
    /// binary opens it.
    fn open_as_format_3(path: &Path) -> DB {
        let names = [CF_META, CF_REQUESTS, CF_ACCEPTED_FORMAT_3, CF_HISTORY_FORMAT_3];
        DB::open_cf(&Storage::options(), path, names).expect("open as format 3")
    }

    /// A format 3 directory as its binary left it: `log` absent, the values in `accepted` and
    /// `history`; `stale_log` adds log records as a migration cut short by a crash left them.
    fn format_3_directory(path: &Path, stale_log: bool) {
        let storage = Storage::open(path, "c", 1).expect("open");
        let put = |cf: &'static str, key: &[u8], record: Vec<u8>| {
            storage.db.put_cf(storage.cf(cf), key, record).expect("put");
        };
        put(CF_META, KEY_FORMAT, seal(&3u32).expect("seal"));
        put(CF_META, KEY_PROMISED, seal(&Ballot::new(4, 2)).expect("seal"));
        put(CF_META, KEY_APPLIED_UPTO, seal(&3u64).expect("seal"));
        put(
            CF_META,
            KEY_TRUNCATION,
            seal(&TruncationSnapshot { history_start: 1, ..Default::default() }).expect("seal"),
        );
        for slot in 1..3 {
            put(CF_HISTORY_FORMAT_3, &slot_key(slot), seal(&command(slot)).expect("seal"));
        }
        // Slot 2's record is applied (redundant); slots 3 and 5 are accepted, not chosen yet.
        for (slot, round) in [(2, 1), (3, 4), (5, 4)] {
            let record = seal(&(Ballot::new(round, 2), command(slot * 10))).expect("seal");
            put(CF_ACCEPTED_FORMAT_3, &slot_key(slot), record);
        }
        if stale_log {
            put(CF_LOG, &slot_key(1), seal(&LogRecordRef::Entry(&command(1))).expect("seal"));
        }
        let mut storage = storage;
        let db = std::sync::Arc::get_mut(&mut storage.db).expect("the only handle");
        if !stale_log {
            db.drop_cf(CF_LOG).expect("format 3 had no log");
        }
    }

    #[test]
    fn a_format_3_directory_is_migrated_at_open_and_reads_the_same() {
        for stale_log in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            format_3_directory(dir.path(), stale_log);
            let mut storage = Storage::open(dir.path(), "c", 1).expect("a format 3 directory opens");
            let state = storage.load().expect("load");
            assert_eq!(state.promised, Ballot::new(4, 2));
            assert_eq!(state.applied_upto, 3);
            assert_eq!(state.truncation.history_start, 1);
            let accepted: Vec<_> =
                state.accepted.iter().map(|(slot, (ballot, _))| (*slot, *ballot)).collect();
            assert_eq!(accepted, vec![(3, Ballot::new(4, 2)), (5, Ballot::new(4, 2))]);
            assert_eq!(state.accepted[&5].1, command(50));
            let history = storage.read_history(0, 3, 10, 1 << 20).expect("read");
            assert_eq!(history, vec![(1, command(1)), (2, command(2))]);
            // Format 4 on disk now, and format 3's column families are empty.
            assert_eq!(storage.get::<u32>(CF_META, KEY_FORMAT).expect("get"), Some(STORAGE_FORMAT));
            for cf in [CF_ACCEPTED_FORMAT_3, CF_HISTORY_FORMAT_3] {
                assert_eq!(storage.db.iterator_cf(storage.cf(cf), IteratorMode::Start).count(), 0, "{cf}");
            }
            // And the node goes on writing: the next apply, then a restart.
            storage.write(&[PersistOp::ApplyAccepted { slot: 3 }, PersistOp::AppliedUpto(4)]).expect("write");
            drop(storage);
            let mut storage = Storage::open(dir.path(), "c", 1).expect("reopen");
            assert_eq!(storage.load().expect("load").accepted.keys().copied().collect::<Vec<_>>(), vec![5]);
            assert_eq!(storage.read_history(3, 4, 10, 1 << 20).expect("read"), vec![(3, command(30))]);
        }
    }

    /// `inspect` writes nothing, so it does not migrate: on a format 3 directory it says to
    /// start the node once, and leaves it format 3.
    #[test]
    fn inspect_of_a_format_3_directory_says_to_start_the_node_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        format_3_directory(dir.path(), false);
        let error = Storage::inspect(dir.path(), true).expect_err("format 3");
        assert!(matches!(error, StorageError::NotMigrated { found: 3, .. }), "{error}");
        assert!(error.to_string().contains("start the node once"), "{error}");
        let present = DB::list_cf(&Storage::options(), dir.path()).expect("list");
        assert!(!present.iter().any(|name| name == CF_LOG), "inspect migrated: {present:?}");
    }

    /// A directory an older binary created and left before writing its identity (no `log`,
    /// no identity) opens as a new one, and `inspect` reads it, rather than panicking on the
    /// missing column family (found by a review).
    #[test]
    fn a_directory_left_before_its_identity_by_an_older_binary_opens_as_new() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(open_as_format_3(dir.path()));
        let inspection = Storage::inspect(dir.path(), false).expect("inspect");
        assert_eq!(inspection.node, None);
        let mut storage = Storage::open(dir.path(), "c", 1).expect("opens as new");
        assert_eq!(storage.load().expect("load"), DurableState::default());
    }

    /// A format 3 directory whose meta records are corrupt is refused before the migration
    /// writes (found by a review: they were read only after it).
    #[test]
    fn a_format_3_directory_with_a_corrupt_promise_is_refused_before_it_is_migrated() {
        let dir = tempfile::tempdir().expect("tempdir");
        format_3_directory(dir.path(), false);
        {
            let db = open_as_format_3(dir.path());
            let cf = db.cf_handle(CF_META).expect("meta");
            db.put_cf(cf, KEY_PROMISED, b"\0\0\0\0garbage").expect("corrupt");
        }
        let error = Storage::open(dir.path(), "c", 1).expect_err("corrupt");
        assert!(error.to_string().contains("corrupt record"), "{error}");
        let present = DB::list_cf(&Storage::options(), dir.path()).expect("list");
        assert!(!present.iter().any(|name| name == CF_LOG), "the refused start wrote no log: {present:?}");
    }

    /// A corrupt record in a format 3 directory refuses the start before the migration writes:
    /// the directory is still format 3, with no `log`.
    #[test]
    fn a_corrupt_format_3_directory_is_refused_before_it_is_migrated() {
        let dir = tempfile::tempdir().expect("tempdir");
        format_3_directory(dir.path(), false);
        {
            let storage = Storage::open_read_only(&Storage::options(), dir.path()).expect("read-only");
            drop(storage);
            let db = open_as_format_3(dir.path());
            let cf = db.cf_handle(CF_HISTORY_FORMAT_3).expect("history");
            db.put_cf(cf, slot_key(2), b"\0\0\0\0garbage").expect("corrupt");
        }
        let error = Storage::open(dir.path(), "c", 1).expect_err("corrupt");
        assert!(error.to_string().contains("corrupt record"), "{error}");
        let present = DB::list_cf(&Storage::options(), dir.path()).expect("list");
        assert!(!present.iter().any(|name| name == CF_LOG), "the refused start wrote no log: {present:?}");
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
        expect("recycle_log_file_num", "0");
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
        let mut record = storage.db.get_cf(storage.cf(CF_LOG), slot_key(5)).expect("get").expect("present");
        let last = record.len() - 1;
        record[last] ^= 0x40;
        storage.corrupt_for_test(cf::LOG, &slot_key(5), &record).expect("put");
        let error = storage.load().expect_err("corruption must be detected");
        let text = error.to_string();
        assert!(text.contains("corrupt record") && text.contains("log") && text.contains("slot 5"), "{text}");
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
