//! A disk that loses power: an in-memory filesystem that tells what a program wrote from what
//! it made durable, so a test can cut the power and keep only the durable part.
//!
//! Each regular file holds two contents: the *volatile* one every read, size and mmap sees
//! (read-your-writes, as from a page cache), and the *durable* one a power cut leaves. Each
//! write or truncate is kept, in order, in the file's unsynced list until `fsync` (or
//! `fdatasync`) of that file copies the volatile content to the durable one. Names are held the
//! same way, stricter than LazyFS: each directory has volatile and durable entries, and a
//! create, rename, link or unlink becomes durable only when that directory is fsynced (POSIX
//! promises nothing more; ext4 often gives more, which is why a program tested on ext4 alone
//! can be wrong).
//!
//! A power cut ([`Disk::power_cut`]) replaces every volatile state by the durable one
//! ([`CutMode::DropUnsynced`]), or by the durable one plus a random in-order prefix of the
//! unsynced operations, the last write torn at a 512-byte sector boundary
//! ([`CutMode::KeepPrefix`]: a disk that had written back part of its cache). Files no durable
//! name reaches are gone. The caller kills every process using the disk first: a cut models
//! the whole machine losing power.
//!
//! # Correctness
//!
//! The model is only as good as what reaches it: the FUSE layer ([`crate::lazyfs`]) must ask
//! the kernel not to cache pages or attributes across a cut (it opens without `keep_cache` and
//! gives every entry and attribute a zero time-to-live), and the test must reap the killed
//! process before it cuts (FUSE answers every request a dying process had sent before its exit
//! completes, so nothing of it lands after the cut).

use fuser::Errno;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::time::SystemTime;

pub type Ino = u64;
/// The root directory's inode number (FUSE's).
pub const ROOT: Ino = 1;
/// The sector size a torn write is cut at.
pub const SECTOR_BYTES: u64 = 512;
/// A file may not grow past this (a runaway writer must not eat the test machine's memory).
pub const FILE_BYTES_MAX: u64 = 1 << 30;

/// What a file is, by its name, for the reports: RocksDB's write-ahead log, its MANIFEST, its
/// sorted tables, its info log (`LOG`, never fsynced, so most of what a cut drops), or anything
/// else (CURRENT, OPTIONS, IDENTITY, LOCK).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FileKind {
    Wal,
    Manifest,
    Sst,
    InfoLog,
    Other,
}

impl FileKind {
    pub const ALL: [FileKind; 5] =
        [FileKind::Wal, FileKind::Manifest, FileKind::Sst, FileKind::InfoLog, FileKind::Other];

    pub fn of(name: &OsStr) -> FileKind {
        let name = name.to_string_lossy();
        if name.ends_with(".log") {
            // `000012.log`; the info log is `LOG` / `LOG.old.<time>`, which is `Other`.
            FileKind::Wal
        } else if name.starts_with("MANIFEST-") {
            FileKind::Manifest
        } else if name.ends_with(".sst") {
            FileKind::Sst
        } else if name == "LOG" || name.starts_with("LOG.old") {
            FileKind::InfoLog
        } else {
            FileKind::Other
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            FileKind::Wal => "WAL",
            FileKind::Manifest => "MANIFEST",
            FileKind::Sst => "SST",
            FileKind::InfoLog => "info LOG",
            FileKind::Other => "other",
        }
    }
}

/// How much of the unsynced state a power cut keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutMode {
    /// Nothing: every file and directory is as its last fsync left it.
    DropUnsynced,
    /// A random in-order prefix of each file's unsynced writes (the last one torn at a sector
    /// boundary) and of each directory's unsynced name changes.
    KeepPrefix,
}

/// Options of the disk (test switches that make it less safe on purpose).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskOptions {
    /// `fsync` of a file of this kind answers success and makes nothing durable: a disk (or a
    /// program) that lies about its write-ahead log, for the harness's self-test.
    pub ignore_fsync_of: Option<FileKind>,
}

/// What one power cut dropped, by kind of file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    pub mode: Option<CutMode>,
    /// kind -> (writes dropped, bytes dropped); a torn write counts once, with its lost bytes.
    pub dropped: BTreeMap<FileKind, (u64, u64)>,
    /// Writes kept in part (prefix mode).
    pub torn_writes: u64,
    /// Unsynced name changes undone (creates, renames, links, unlinks).
    pub names_dropped: u64,
    /// Files and directories no durable name reached any more, gone with their contents.
    pub inodes_lost: u64,
}

impl CutReport {
    pub fn writes_dropped(&self) -> u64 {
        self.dropped.values().map(|(writes, _)| writes).sum()
    }

    pub fn bytes_dropped(&self) -> u64 {
        self.dropped.values().map(|(_, bytes)| bytes).sum()
    }

    /// Adds another cut's figures (for a soak's totals).
    pub fn add(&mut self, other: &CutReport) {
        for (kind, (writes, bytes)) in &other.dropped {
            let entry = self.dropped.entry(*kind).or_default();
            entry.0 += writes;
            entry.1 += bytes;
        }
        self.torn_writes += other.torn_writes;
        self.names_dropped += other.names_dropped;
        self.inodes_lost += other.inodes_lost;
    }
}

impl std::fmt::Display for CutReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.mode {
            Some(CutMode::DropUnsynced) => "drop unsynced: ",
            Some(CutMode::KeepPrefix) => "keep a prefix: ",
            None => "",
        };
        write!(f, "{mode}dropped")?;
        for kind in FileKind::ALL {
            let (writes, bytes) = self.dropped.get(&kind).copied().unwrap_or_default();
            write!(f, " {} {writes} writes/{bytes} B,", kind.label())?;
        }
        write!(
            f,
            " torn {}, names undone {}, files lost {}",
            self.torn_writes, self.names_dropped, self.inodes_lost
        )
    }
}

#[derive(Clone, Debug)]
enum DataOp {
    Write { offset: u64, data: Vec<u8> },
    Truncate { size: u64 },
}

impl DataOp {
    fn apply(&self, content: &mut Vec<u8>) {
        match self {
            DataOp::Write { offset, data } => {
                let start = *offset as usize;
                let end = start + data.len();
                if content.len() < end {
                    content.resize(end, 0);
                }
                content[start..end].copy_from_slice(data);
            }
            DataOp::Truncate { size } => content.resize(*size as usize, 0),
        }
    }
}

/// A change of names in one directory. A rename is one change (not an unlink and a link): a
/// cut keeps it whole or not at all, as journaling filesystems do, and RocksDB relies on it to
/// replace CURRENT.
#[derive(Clone, Debug)]
enum NameOp {
    Link(OsString, Ino),
    Unlink(OsString),
    Rename { from: OsString, to: OsString, ino: Ino },
}

impl NameOp {
    fn apply(&self, entries: &mut BTreeMap<OsString, Ino>) {
        match self {
            NameOp::Link(name, ino) => {
                entries.insert(name.clone(), *ino);
            }
            NameOp::Unlink(name) => {
                entries.remove(name);
            }
            NameOp::Rename { from, to, ino } => {
                entries.remove(from);
                entries.insert(to.clone(), *ino);
            }
        }
    }

    fn names(&self, ino: Ino) -> bool {
        matches!(self, NameOp::Link(_, v) | NameOp::Rename { ino: v, .. } if *v == ino)
    }
}

#[derive(Debug, Default)]
struct File {
    volatile: Vec<u8>,
    durable: Vec<u8>,
    unsynced: Vec<DataOp>,
}

#[derive(Debug, Default)]
struct Dir {
    volatile: BTreeMap<OsString, Ino>,
    durable: BTreeMap<OsString, Ino>,
    unsynced: Vec<NameOp>,
}

#[derive(Debug)]
enum Body {
    File(File),
    Dir(Dir),
}

#[derive(Debug)]
struct Inode {
    body: Body,
    perm: u16,
    mtime: SystemTime,
    /// The last name it was given (for the report's kind of file).
    name: OsString,
}

/// A file's or directory's attributes as `stat` shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attributes {
    pub ino: Ino,
    pub is_dir: bool,
    pub size: u64,
    pub perm: u16,
    pub nlink: u32,
    pub mtime: SystemTime,
}

/// The filesystem's state: see the module documentation.
#[derive(Debug)]
pub struct Disk {
    inodes: HashMap<Ino, Inode>,
    next_ino: Ino,
    /// Open file handles (handle -> inode); an unlinked file lives while one is open. Handles
    /// are never reused, and a cut forgets them all: a release the kernel sends late for the
    /// killed process must not close a file the restarted one opened.
    handles: HashMap<u64, Ino>,
    /// Open directory listings (handle -> entries as at `opendir`), so that a listing read in
    /// several calls neither skips nor repeats an entry while names change.
    listings: HashMap<u64, Vec<(OsString, Ino, bool)>>,
    next_handle: u64,
    options: DiskOptions,
    rng: paxos_core::Rng,
}

impl Disk {
    pub fn new(options: DiskOptions, seed: u64) -> Disk {
        let root = Inode {
            body: Body::Dir(Dir::default()),
            perm: 0o755,
            mtime: SystemTime::now(),
            name: OsString::from("/"),
        };
        Disk {
            inodes: HashMap::from([(ROOT, root)]),
            next_ino: ROOT + 1,
            handles: HashMap::new(),
            listings: HashMap::new(),
            next_handle: 1,
            options,
            rng: paxos_core::Rng::new(seed),
        }
    }

    fn inode(&self, ino: Ino) -> Result<&Inode, Errno> {
        self.inodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn inode_mut(&mut self, ino: Ino) -> Result<&mut Inode, Errno> {
        self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn dir(&self, ino: Ino) -> Result<&Dir, Errno> {
        match &self.inode(ino)?.body {
            Body::Dir(dir) => Ok(dir),
            Body::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: Ino) -> Result<&mut Dir, Errno> {
        match &mut self.inode_mut(ino)?.body {
            Body::Dir(dir) => Ok(dir),
            Body::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn file_mut(&mut self, ino: Ino) -> Result<&mut File, Errno> {
        match &mut self.inode_mut(ino)?.body {
            Body::File(file) => Ok(file),
            Body::Dir(_) => Err(Errno::EISDIR),
        }
    }

    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Ino, Errno> {
        self.dir(parent)?.volatile.get(name).copied().ok_or(Errno::ENOENT)
    }

    pub fn attributes(&self, ino: Ino) -> Result<Attributes, Errno> {
        let inode = self.inode(ino)?;
        let links = self
            .inodes
            .values()
            .filter_map(|i| match &i.body {
                Body::Dir(dir) => Some(dir.volatile.values().filter(|v| **v == ino).count() as u32),
                Body::File(_) => None,
            })
            .sum::<u32>();
        let (is_dir, size, nlink) = match &inode.body {
            Body::File(file) => (false, file.volatile.len() as u64, links),
            Body::Dir(dir) => {
                let subdirs = dir
                    .volatile
                    .values()
                    .filter(|child| matches!(self.inodes.get(child).map(|i| &i.body), Some(Body::Dir(_))))
                    .count() as u32;
                (true, 0, 2 + subdirs)
            }
        };
        Ok(Attributes { ino, is_dir, size, perm: inode.perm, nlink, mtime: inode.mtime })
    }

    /// The entries of a directory, in name order.
    pub fn entries(&self, ino: Ino) -> Result<Vec<(OsString, Ino, bool)>, Errno> {
        let dir = self.dir(ino)?;
        Ok(dir
            .volatile
            .iter()
            .map(|(name, child)| {
                let is_dir = matches!(self.inodes.get(child).map(|i| &i.body), Some(Body::Dir(_)));
                (name.clone(), *child, is_dir)
            })
            .collect())
    }

    fn add_name(&mut self, parent: Ino, name: &OsStr, ino: Ino) -> Result<(), Errno> {
        let dir = self.dir_mut(parent)?;
        dir.volatile.insert(name.to_owned(), ino);
        dir.unsynced.push(NameOp::Link(name.to_owned(), ino));
        Ok(())
    }

    fn remove_name(&mut self, parent: Ino, name: &OsStr) -> Result<Ino, Errno> {
        let dir = self.dir_mut(parent)?;
        let ino = dir.volatile.remove(name).ok_or(Errno::ENOENT)?;
        dir.unsynced.push(NameOp::Unlink(name.to_owned()));
        Ok(ino)
    }

    fn new_inode(&mut self, name: &OsStr, body: Body, perm: u16) -> Ino {
        let ino = self.next_ino;
        self.next_ino += 1;
        let inode = Inode { body, perm, mtime: SystemTime::now(), name: name.to_owned() };
        self.inodes.insert(ino, inode);
        ino
    }

    /// Creates a regular file (`exclusive`: fail if the name exists, as `O_EXCL`); an existing
    /// file is returned as it is.
    pub fn create(&mut self, parent: Ino, name: &OsStr, perm: u16, exclusive: bool) -> Result<Ino, Errno> {
        if let Ok(existing) = self.lookup(parent, name) {
            if exclusive {
                return Err(Errno::EEXIST);
            }
            return Ok(existing);
        }
        self.dir(parent)?;
        let ino = self.new_inode(name, Body::File(File::default()), perm);
        self.add_name(parent, name, ino)?;
        Ok(ino)
    }

    pub fn mkdir(&mut self, parent: Ino, name: &OsStr, perm: u16) -> Result<Ino, Errno> {
        if self.lookup(parent, name).is_ok() {
            return Err(Errno::EEXIST);
        }
        self.dir(parent)?;
        let ino = self.new_inode(name, Body::Dir(Dir::default()), perm);
        self.add_name(parent, name, ino)?;
        Ok(ino)
    }

    pub fn unlink(&mut self, parent: Ino, name: &OsStr) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?;
        if self.dir(ino).is_ok() {
            return Err(Errno::EISDIR);
        }
        self.remove_name(parent, name)?;
        self.forget_if_unused(ino);
        Ok(())
    }

    pub fn rmdir(&mut self, parent: Ino, name: &OsStr) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?;
        if !self.dir(ino)?.volatile.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        self.remove_name(parent, name)?;
        self.forget_if_unused(ino);
        Ok(())
    }

    /// `rename(2)` within a directory: replaces the target name (a file, or an empty
    /// directory) unless `no_replace`. Across directories it answers `EXDEV`, as between two
    /// filesystems (callers copy instead): a rename in two directories would be durable only
    /// when both are fsynced, which nothing here needs (RocksDB renames within its directory).
    pub fn rename(
        &mut self,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?;
        self.dir(new_parent)?;
        if new_parent != parent {
            return Err(Errno::EXDEV);
        }
        let replaced = self.lookup(new_parent, new_name).ok();
        if let Some(existing) = replaced {
            if existing == ino {
                return Ok(());
            }
            if no_replace {
                return Err(Errno::EEXIST);
            }
            match (self.dir(ino).is_ok(), self.dir(existing)) {
                (false, Ok(_)) => return Err(Errno::EISDIR),
                (true, Err(_)) => return Err(Errno::ENOTDIR),
                (true, Ok(dir)) if !dir.volatile.is_empty() => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
        }
        let op = NameOp::Rename { from: name.to_owned(), to: new_name.to_owned(), ino };
        let dir = self.dir_mut(parent)?;
        op.apply(&mut dir.volatile);
        dir.unsynced.push(op);
        self.inode_mut(ino)?.name = new_name.to_owned();
        if let Some(existing) = replaced {
            self.forget_if_unused(existing);
        }
        Ok(())
    }

    pub fn link(&mut self, ino: Ino, new_parent: Ino, new_name: &OsStr) -> Result<(), Errno> {
        if self.dir(ino).is_ok() {
            return Err(Errno::EPERM);
        }
        if self.lookup(new_parent, new_name).is_ok() {
            return Err(Errno::EEXIST);
        }
        self.add_name(new_parent, new_name, ino)?;
        self.inode_mut(ino)?.name = new_name.to_owned();
        Ok(())
    }

    pub fn set_perm(&mut self, ino: Ino, perm: u16) -> Result<(), Errno> {
        self.inode_mut(ino)?.perm = perm;
        Ok(())
    }

    /// Opens a file; returns its handle.
    pub fn open(&mut self, ino: Ino) -> Result<u64, Errno> {
        self.inode(ino)?;
        let handle = self.next_handle;
        self.next_handle += 1;
        self.handles.insert(handle, ino);
        Ok(handle)
    }

    /// Closes a handle (one the last cut forgot is ignored).
    pub fn release(&mut self, handle: u64) {
        if let Some(ino) = self.handles.remove(&handle) {
            self.forget_if_unused(ino);
        }
    }

    /// Opens a directory listing; returns its handle.
    pub fn open_listing(&mut self, ino: Ino) -> Result<u64, Errno> {
        let entries = self.entries(ino)?;
        let handle = self.next_handle;
        self.next_handle += 1;
        self.listings.insert(handle, entries);
        Ok(handle)
    }

    /// The entries of an open listing.
    pub fn listing(&self, handle: u64) -> Result<&[(OsString, Ino, bool)], Errno> {
        self.listings.get(&handle).map(Vec::as_slice).ok_or(Errno::EBADF)
    }

    pub fn release_listing(&mut self, handle: u64) {
        self.listings.remove(&handle);
    }

    pub fn read(&self, ino: Ino, offset: u64, size: u32) -> Result<&[u8], Errno> {
        match &self.inode(ino)?.body {
            Body::File(file) => {
                let start = (offset as usize).min(file.volatile.len());
                let end = start.saturating_add(size as usize).min(file.volatile.len());
                Ok(&file.volatile[start..end])
            }
            Body::Dir(_) => Err(Errno::EISDIR),
        }
    }

    pub fn write(&mut self, ino: Ino, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        if offset.saturating_add(data.len() as u64) > FILE_BYTES_MAX {
            return Err(Errno::EFBIG);
        }
        let now = SystemTime::now();
        let inode = self.inode_mut(ino)?;
        inode.mtime = now;
        let Body::File(file) = &mut inode.body else {
            return Err(Errno::EISDIR);
        };
        let op = DataOp::Write { offset, data: data.to_vec() };
        op.apply(&mut file.volatile);
        file.unsynced.push(op);
        Ok(data.len() as u32)
    }

    /// `ftruncate` / `truncate`, and `fallocate` without `FALLOC_FL_KEEP_SIZE`.
    pub fn set_size(&mut self, ino: Ino, size: u64) -> Result<(), Errno> {
        if size > FILE_BYTES_MAX {
            return Err(Errno::EFBIG);
        }
        let file = self.file_mut(ino)?;
        if file.volatile.len() as u64 == size {
            // O_TRUNC of an empty file, say: nothing for a cut to lose.
            return Ok(());
        }
        let op = DataOp::Truncate { size };
        op.apply(&mut file.volatile);
        file.unsynced.push(op);
        Ok(())
    }

    /// Grows the file to `size` if it is smaller (`fallocate` mode 0).
    pub fn allocate(&mut self, ino: Ino, size: u64) -> Result<(), Errno> {
        let current = self.attributes(ino)?.size;
        if size > current {
            self.set_size(ino, size)?;
        }
        Ok(())
    }

    /// `fsync` / `fdatasync` of a file, or `fsync` of a directory: makes its volatile state
    /// durable.
    pub fn fsync(&mut self, ino: Ino) -> Result<(), Errno> {
        let ignored = self.options.ignore_fsync_of;
        let inode = self.inode_mut(ino)?;
        let kind = FileKind::of(&inode.name);
        let mut unnamed = Vec::new();
        match &mut inode.body {
            Body::File(_) if ignored == Some(kind) => {}
            Body::File(file) => {
                file.durable.clone_from(&file.volatile);
                file.unsynced.clear();
            }
            Body::Dir(dir) => {
                unnamed = dir
                    .durable
                    .values()
                    .copied()
                    .filter(|i| !dir.volatile.values().any(|v| v == i))
                    .collect();
                dir.durable.clone_from(&dir.volatile);
                dir.unsynced.clear();
            }
        }
        // Files whose last name just went for good (deleted SSTs and WALs) need no memory any
        // more.
        for ino in unnamed {
            self.forget_if_unused(ino);
        }
        Ok(())
    }

    /// Whether any directory (volatile, durable or in an unsynced change) names `ino`.
    fn referenced(&self, ino: Ino) -> bool {
        ino == ROOT
            || self.inodes.values().any(|inode| match &inode.body {
                Body::Dir(dir) => {
                    dir.volatile.values().any(|v| *v == ino)
                        || dir.durable.values().any(|v| *v == ino)
                        || dir.unsynced.iter().any(|op| op.names(ino))
                }
                Body::File(_) => false,
            })
    }

    fn forget_if_unused(&mut self, ino: Ino) {
        let open = self.handles.values().any(|open| *open == ino);
        if self.inodes.contains_key(&ino) && !open && !self.referenced(ino) {
            self.inodes.remove(&ino);
        }
    }

    /// The power goes out: see the module documentation. Every process using the disk must
    /// have been killed and reaped: open handles are forgotten.
    pub fn power_cut(&mut self, mode: CutMode) -> CutReport {
        let mut report = CutReport { mode: Some(mode), ..CutReport::default() };
        self.handles.clear();
        self.listings.clear();
        let mut inos: Vec<Ino> = self.inodes.keys().copied().collect();
        // Sorted: the same seed cuts the same way.
        inos.sort_unstable();
        for ino in &inos {
            let keep = |rng: &mut paxos_core::Rng, unsynced: usize| match mode {
                CutMode::DropUnsynced => 0,
                CutMode::KeepPrefix => rng.range(0, unsynced as u64 + 1) as usize,
            };
            let Some(inode) = self.inodes.get_mut(ino) else { continue };
            let kind = FileKind::of(&inode.name);
            match &mut inode.body {
                Body::File(file) => {
                    let kept = keep(&mut self.rng, file.unsynced.len());
                    let mut durable = std::mem::take(&mut file.durable);
                    for (index, op) in file.unsynced.iter().enumerate() {
                        let lost_bytes = match (index.cmp(&kept), op) {
                            (std::cmp::Ordering::Less, _) => {
                                op.apply(&mut durable);
                                continue;
                            }
                            // The first write not kept whole may be torn: the sectors before a
                            // random boundary inside it reached the disk (or none of them).
                            (std::cmp::Ordering::Equal, DataOp::Write { offset, data })
                                if mode == CutMode::KeepPrefix =>
                            {
                                let end = offset + data.len() as u64;
                                let first_boundary = (offset / SECTOR_BYTES + 1) * SECTOR_BYTES;
                                let boundaries: Vec<u64> =
                                    (first_boundary..end).step_by(SECTOR_BYTES as usize).collect();
                                let pick = self.rng.range(0, boundaries.len() as u64 + 1) as usize;
                                if pick == boundaries.len() {
                                    data.len() as u64
                                } else {
                                    let cut = boundaries[pick];
                                    let kept_bytes = (cut - offset) as usize;
                                    DataOp::Write { offset: *offset, data: data[..kept_bytes].to_vec() }
                                        .apply(&mut durable);
                                    report.torn_writes += 1;
                                    (data.len() - kept_bytes) as u64
                                }
                            }
                            (_, DataOp::Write { data, .. }) => data.len() as u64,
                            (_, DataOp::Truncate { .. }) => 0,
                        };
                        let entry = report.dropped.entry(kind).or_default();
                        entry.0 += 1;
                        entry.1 += lost_bytes;
                    }
                    file.unsynced.clear();
                    file.volatile.clone_from(&durable);
                    file.durable = durable;
                }
                Body::Dir(dir) => {
                    let kept = keep(&mut self.rng, dir.unsynced.len());
                    for op in &dir.unsynced[..kept] {
                        op.apply(&mut dir.durable);
                    }
                    report.names_dropped += (dir.unsynced.len() - kept) as u64;
                    dir.unsynced.clear();
                    dir.volatile.clone_from(&dir.durable);
                }
            }
        }
        // What no durable name reaches is gone.
        let mut reachable = HashSet::from([ROOT]);
        let mut frontier = vec![ROOT];
        while let Some(ino) = frontier.pop() {
            if let Some(Inode { body: Body::Dir(dir), .. }) = self.inodes.get(&ino) {
                for child in dir.durable.values() {
                    if self.inodes.contains_key(child) && reachable.insert(*child) {
                        frontier.push(*child);
                    }
                }
            }
        }
        let before = self.inodes.len();
        self.inodes.retain(|ino, _| reachable.contains(ino));
        report.inodes_lost = (before - self.inodes.len()) as u64;
        report
    }

    /// Writes the durable image (what a cut now would leave, whole files only) under `dir`,
    /// for a person to inspect after a failed test.
    pub fn write_durable_image(&self, dir: &std::path::Path) -> std::io::Result<()> {
        fn walk(disk: &Disk, ino: Ino, path: &std::path::Path) -> std::io::Result<()> {
            std::fs::create_dir_all(path)?;
            let Some(Inode { body: Body::Dir(dir), .. }) = disk.inodes.get(&ino) else { return Ok(()) };
            for (name, child) in &dir.durable {
                match disk.inodes.get(child).map(|i| &i.body) {
                    Some(Body::Dir(_)) => walk(disk, *child, &path.join(name))?,
                    Some(Body::File(file)) => std::fs::write(path.join(name), &file.durable)?,
                    None => {}
                }
            }
            Ok(())
        }
        walk(self, ROOT, dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> &OsStr {
        OsStr::new(text)
    }

    fn content(disk: &Disk, parent: Ino, file: &str) -> Option<Vec<u8>> {
        let ino = disk.lookup(parent, name(file)).ok()?;
        let size = disk.attributes(ino).ok()?.size;
        Some(disk.read(ino, 0, size as u32).ok()?.to_vec())
    }

    #[test]
    fn unsynced_writes_are_read_back_and_lost_at_a_cut() {
        let mut disk = Disk::new(DiskOptions::default(), 1);
        let ino = disk.create(ROOT, name("a"), 0o644, true).expect("create");
        disk.fsync(ROOT).expect("dir fsync");
        disk.write(ino, 0, b"durable").expect("write");
        disk.fsync(ino).expect("fsync");
        disk.write(ino, 7, b" and not").expect("write");
        assert_eq!(content(&disk, ROOT, "a").as_deref(), Some(&b"durable and not"[..]));
        let report = disk.power_cut(CutMode::DropUnsynced);
        assert_eq!(content(&disk, ROOT, "a").as_deref(), Some(&b"durable"[..]));
        assert_eq!(report.dropped[&FileKind::Other], (1, 8));
    }

    #[test]
    fn a_name_is_durable_only_after_its_directory_is_fsynced() {
        let mut disk = Disk::new(DiskOptions::default(), 1);
        let dir = disk.mkdir(ROOT, name("d"), 0o755).expect("mkdir");
        disk.fsync(ROOT).expect("fsync root");
        let file = disk.create(dir, name("tmp"), 0o644, true).expect("create");
        disk.write(file, 0, b"x").expect("write");
        disk.fsync(file).expect("fsync file");
        // The data is durable; the name is not.
        let report = disk.power_cut(CutMode::DropUnsynced);
        assert_eq!(disk.lookup(dir, name("tmp")), Err(Errno::ENOENT));
        assert_eq!((report.names_dropped, report.inodes_lost), (1, 1));
        // A rename without a directory fsync is undone.
        let file = disk.create(dir, name("tmp"), 0o644, true).expect("create");
        disk.fsync(dir).expect("fsync dir");
        disk.rename(dir, name("tmp"), dir, name("CURRENT"), false).expect("rename");
        disk.power_cut(CutMode::DropUnsynced);
        assert_eq!(disk.lookup(dir, name("tmp")), Ok(file));
        assert_eq!(disk.lookup(dir, name("CURRENT")), Err(Errno::ENOENT));
    }

    #[test]
    fn a_prefix_cut_keeps_writes_in_order_and_tears_at_a_sector() {
        for seed in 0..200 {
            let mut disk = Disk::new(DiskOptions::default(), seed);
            let ino = disk.create(ROOT, name("000007.log"), 0o644, true).expect("create");
            disk.fsync(ROOT).expect("fsync");
            let writes: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i + 1; 700]).collect();
            for (i, data) in writes.iter().enumerate() {
                disk.write(ino, i as u64 * 700, data).expect("write");
            }
            let report = disk.power_cut(CutMode::KeepPrefix);
            let left = content(&disk, ROOT, "000007.log").expect("file");
            // Whole writes, in order, then at most part of one, ending at a sector boundary.
            let whole = left.len() / 700;
            for (i, byte) in left.iter().enumerate() {
                assert_eq!(*byte, (i / 700) as u8 + 1, "seed {seed}: byte {i}");
            }
            if left.len() % 700 != 0 {
                assert_eq!(left.len() as u64 % SECTOR_BYTES, 0, "seed {seed}: torn off a sector");
                assert_eq!(report.torn_writes, 1);
            }
            assert!(whole <= 4);
            let (writes_dropped, _) = report.dropped.get(&FileKind::Wal).copied().unwrap_or_default();
            assert_eq!(writes_dropped as usize, 4 - whole, "seed {seed}");
        }
    }

    #[test]
    fn a_rename_over_a_name_survives_a_prefix_cut_whole_or_not_at_all() {
        for seed in 0..100 {
            let mut disk = Disk::new(DiskOptions::default(), seed);
            let current = disk.create(ROOT, name("CURRENT"), 0o644, true).expect("create");
            disk.write(current, 0, b"MANIFEST-000001").expect("write");
            disk.fsync(current).expect("fsync");
            disk.fsync(ROOT).expect("fsync");
            // RocksDB's SetCurrentFile: a temporary file, fsynced, renamed over CURRENT.
            let tmp = disk.create(ROOT, name("000002.dbtmp"), 0o644, true).expect("create");
            disk.write(tmp, 0, b"MANIFEST-000002").expect("write");
            disk.fsync(tmp).expect("fsync");
            disk.rename(ROOT, name("000002.dbtmp"), ROOT, name("CURRENT"), false).expect("rename");
            disk.power_cut(CutMode::KeepPrefix);
            let left = content(&disk, ROOT, "CURRENT");
            assert!(
                left.as_deref() == Some(b"MANIFEST-000001") || left.as_deref() == Some(b"MANIFEST-000002"),
                "seed {seed}: CURRENT is {left:?}"
            );
        }
        let mut disk = Disk::new(DiskOptions::default(), 1);
        let dir = disk.mkdir(ROOT, name("d"), 0o755).expect("mkdir");
        disk.create(ROOT, name("f"), 0o644, true).expect("create");
        assert_eq!(disk.rename(ROOT, name("f"), dir, name("f"), false), Err(Errno::EXDEV));
    }

    #[test]
    fn a_release_after_a_cut_does_not_close_a_file_opened_since() {
        let mut disk = Disk::new(DiskOptions::default(), 1);
        let ino = disk.create(ROOT, name("000003.log"), 0o644, true).expect("create");
        disk.fsync(ROOT).expect("fsync");
        let before_cut = disk.open(ino).expect("open");
        disk.power_cut(CutMode::DropUnsynced);
        let after_cut = disk.open(ino).expect("open again");
        // The kernel's late release for the killed process:
        disk.release(before_cut);
        disk.unlink(ROOT, name("000003.log")).expect("unlink");
        disk.fsync(ROOT).expect("fsync");
        assert!(disk.write(ino, 0, b"still open").is_ok(), "the open file must live");
        disk.release(after_cut);
        assert_eq!(disk.write(ino, 0, b"x"), Err(Errno::ENOENT), "closed and nameless: gone");
    }

    #[test]
    fn an_unlinked_open_file_lives_until_closed_and_a_durable_name_comes_back() {
        let mut disk = Disk::new(DiskOptions::default(), 1);
        let ino = disk.create(ROOT, name("MANIFEST-000001"), 0o644, true).expect("create");
        disk.write(ino, 0, b"m").expect("write");
        disk.fsync(ino).expect("fsync");
        disk.fsync(ROOT).expect("fsync");
        let handle = disk.open(ino).expect("open");
        disk.unlink(ROOT, name("MANIFEST-000001")).expect("unlink");
        assert_eq!(disk.read(ino, 0, 10).expect("read"), b"m");
        disk.release(handle);
        // Unlinked but not durably: the cut brings it back.
        disk.power_cut(CutMode::DropUnsynced);
        assert_eq!(content(&disk, ROOT, "MANIFEST-000001").as_deref(), Some(&b"m"[..]));
    }

    #[test]
    fn an_ignored_fsync_makes_nothing_durable() {
        let mut disk = Disk::new(DiskOptions { ignore_fsync_of: Some(FileKind::Wal) }, 1);
        let wal = disk.create(ROOT, name("000004.log"), 0o644, true).expect("create");
        let other = disk.create(ROOT, name("OPTIONS-000005"), 0o644, true).expect("create");
        disk.fsync(ROOT).expect("fsync");
        for ino in [wal, other] {
            disk.write(ino, 0, b"record").expect("write");
            disk.fsync(ino).expect("fsync");
        }
        disk.power_cut(CutMode::DropUnsynced);
        assert_eq!(content(&disk, ROOT, "000004.log").as_deref(), Some(&b""[..]));
        assert_eq!(content(&disk, ROOT, "OPTIONS-000005").as_deref(), Some(&b"record"[..]));
    }
}
