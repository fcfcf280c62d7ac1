//! The lazy filesystem: a [`Disk`] served over FUSE at a mount point, so that real processes
//! (paxos-node and its RocksDB) write to a disk whose power a test can cut.
//!
//! One mount is one machine's disk: a power cut drops what is not durable on the whole mount,
//! so each node gets a mount of its own. The filesystem runs on a thread of the test process;
//! [`LazyMount::power_cut`] reaches its state directly.
//!
//! The kernel must not remember anything the disk forgets: entries and attributes are given a
//! time-to-live of zero, and files are opened without `FOPEN_KEEP_CACHE`, so the page cache of
//! a file is dropped at each open (the node reopens every file after a restart). No writeback
//! cache is asked for: each `write(2)` reaches the disk before it returns.

use crate::disk::{Attributes, CutMode, CutReport, Disk, DiskOptions, Ino};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

const TTL: Duration = Duration::ZERO;
const BLOCK_BYTES: u32 = 4096;

/// Whether this machine can mount a FUSE filesystem (`/dev/fuse` present). Tests that need one
/// print one line and return when it cannot.
pub fn available() -> Result<(), String> {
    if Path::new("/dev/fuse").exists() {
        Ok(())
    } else {
        Err("/dev/fuse is missing: the power-loss tests need FUSE (a Linux machine with the fuse module)"
            .into())
    }
}

struct LazyFs {
    disk: Arc<Mutex<Disk>>,
}

fn lock(disk: &Mutex<Disk>) -> MutexGuard<'_, Disk> {
    // A panic while holding the lock leaves a disk the test cannot trust; the panic itself
    // fails the test, so keep serving rather than wedge every process on the mount.
    disk.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn file_attr(attributes: &Attributes, request: &Request) -> FileAttr {
    FileAttr {
        ino: INodeNo(attributes.ino),
        size: attributes.size,
        blocks: attributes.size.div_ceil(512),
        atime: attributes.mtime,
        mtime: attributes.mtime,
        ctime: attributes.mtime,
        crtime: attributes.mtime,
        kind: if attributes.is_dir { FileType::Directory } else { FileType::RegularFile },
        perm: attributes.perm,
        nlink: attributes.nlink,
        uid: request.uid(),
        gid: request.gid(),
        rdev: 0,
        blksize: BLOCK_BYTES,
        flags: 0,
    }
}

fn perm(mode: u32, umask: u32) -> u16 {
    ((mode & !umask) & 0o7777) as u16
}

impl LazyFs {
    fn reply_entry(&self, disk: &Disk, ino: Result<Ino, Errno>, request: &Request, reply: ReplyEntry) {
        match ino.and_then(|ino| disk.attributes(ino)) {
            Ok(attributes) => reply.entry(&TTL, &file_attr(&attributes, request), Generation(0)),
            Err(errno) => reply.error(errno),
        }
    }
}

fn reply_empty(result: Result<(), Errno>, reply: ReplyEmpty) {
    match result {
        Ok(()) => reply.ok(),
        Err(errno) => reply.error(errno),
    }
}

impl Filesystem for LazyFs {
    fn lookup(&self, request: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let disk = lock(&self.disk);
        self.reply_entry(&disk, disk.lookup(parent.0, name), request, reply);
    }

    fn getattr(&self, request: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match lock(&self.disk).attributes(ino.0) {
            Ok(attributes) => reply.attr(&TTL, &file_attr(&attributes, request)),
            Err(errno) => reply.error(errno),
        }
    }

    fn setattr(
        &self,
        request: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut disk = lock(&self.disk);
        let mut result = Ok(());
        if let Some(size) = size {
            result = disk.set_size(ino.0, size);
        }
        if let (Ok(()), Some(mode)) = (result, mode) {
            result = disk.set_perm(ino.0, perm(mode, 0));
        }
        match result.and_then(|()| disk.attributes(ino.0)) {
            Ok(attributes) => reply.attr(&TTL, &file_attr(&attributes, request)),
            Err(errno) => reply.error(errno),
        }
    }

    fn mknod(
        &self,
        request: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        // Regular files only: nothing the node writes is a device, fifo or socket.
        if mode & 0o170000 != 0o100000 {
            return reply.error(Errno::EPERM);
        }
        let mut disk = lock(&self.disk);
        let ino = disk.create(parent.0, name, perm(mode, umask), true);
        self.reply_entry(&disk, ino, request, reply);
    }

    fn mkdir(
        &self,
        request: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut disk = lock(&self.disk);
        let ino = disk.mkdir(parent.0, name, perm(mode, umask));
        self.reply_entry(&disk, ino, request, reply);
    }

    fn unlink(&self, _request: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(lock(&self.disk).unlink(parent.0, name), reply);
    }

    fn rmdir(&self, _request: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(lock(&self.disk).rmdir(parent.0, name), reply);
    }

    fn rename(
        &self,
        _request: &Request,
        parent: INodeNo,
        name: &OsStr,
        new_parent: INodeNo,
        new_name: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            return reply.error(Errno::EINVAL);
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        reply_empty(lock(&self.disk).rename(parent.0, name, new_parent.0, new_name, no_replace), reply);
    }

    fn link(
        &self,
        request: &Request,
        ino: INodeNo,
        new_parent: INodeNo,
        new_name: &OsStr,
        reply: ReplyEntry,
    ) {
        let mut disk = lock(&self.disk);
        let result = disk.link(ino.0, new_parent.0, new_name).map(|()| ino.0);
        self.reply_entry(&disk, result, request, reply);
    }

    fn open(&self, _request: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut disk = lock(&self.disk);
        // O_TRUNC arrives as a setattr of the size (no FUSE_ATOMIC_O_TRUNC is asked for).
        match disk.open(ino.0) {
            Ok(handle) => reply.opened(FileHandle(handle), FopenFlags::empty()),
            Err(errno) => reply.error(errno),
        }
    }

    fn create(
        &self,
        request: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut disk = lock(&self.disk);
        let exclusive = flags & libc::O_EXCL != 0;
        let result = disk.create(parent.0, name, perm(mode, umask), exclusive).and_then(|ino| {
            if flags & libc::O_TRUNC != 0 {
                disk.set_size(ino, 0)?;
            }
            let handle = disk.open(ino)?;
            Ok((disk.attributes(ino)?, handle))
        });
        match result {
            Ok((attributes, handle)) => reply.created(
                &TTL,
                &file_attr(&attributes, request),
                Generation(0),
                FileHandle(handle),
                FopenFlags::empty(),
            ),
            Err(errno) => reply.error(errno),
        }
    }

    fn read(
        &self,
        _request: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match lock(&self.disk).read(ino.0, offset, size) {
            Ok(data) => reply.data(data),
            Err(errno) => reply.error(errno),
        }
    }

    fn write(
        &self,
        _request: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match lock(&self.disk).write(ino.0, offset, data) {
            Ok(written) => reply.written(written),
            Err(errno) => reply.error(errno),
        }
    }

    fn flush(
        &self,
        _request: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) makes nothing durable.
        reply.ok();
    }

    fn release(
        &self,
        _request: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        lock(&self.disk).release(fh.0);
        reply.ok();
    }

    fn fsync(&self, _request: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply_empty(lock(&self.disk).fsync(ino.0), reply);
    }

    fn opendir(&self, _request: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match lock(&self.disk).open_listing(ino.0) {
            Ok(handle) => reply.opened(FileHandle(handle), FopenFlags::empty()),
            Err(errno) => reply.error(errno),
        }
    }

    fn releasedir(
        &self,
        _request: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.disk).release_listing(fh.0);
        reply.ok();
    }

    fn readdir(
        &self,
        _request: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        // The listing as it was at opendir: offsets stay positions in one list.
        let entries = match lock(&self.disk).listing(fh.0) {
            Ok(entries) => entries.to_vec(),
            Err(errno) => return reply.error(errno),
        };
        let dots = [(OsStr::new(".").to_owned(), ino.0, true), (OsStr::new("..").to_owned(), ino.0, true)];
        for (index, (name, child, is_dir)) in
            dots.into_iter().chain(entries).enumerate().skip(offset as usize)
        {
            let kind = if is_dir { FileType::Directory } else { FileType::RegularFile };
            if reply.add(INodeNo(child), index as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _request: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(lock(&self.disk).fsync(ino.0), reply);
    }

    fn statfs(&self, _request: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = (64u64 << 30) / u64::from(BLOCK_BYTES);
        reply.statfs(blocks, blocks, blocks, 1 << 20, 1 << 20, BLOCK_BYTES, 255, BLOCK_BYTES);
    }

    fn fallocate(
        &self,
        _request: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        // RocksDB preallocates its logs with KEEP_SIZE: space only, nothing a cut could lose.
        let result = match mode {
            0 => lock(&self.disk).allocate(ino.0, offset.saturating_add(length)),
            libc::FALLOC_FL_KEEP_SIZE => Ok(()),
            _ => Err(Errno::EOPNOTSUPP),
        };
        reply_empty(result, reply);
    }
}

/// A [`Disk`] mounted at a directory. Unmounted when dropped (after the processes using it
/// were killed, or the unmount waits for them).
pub struct LazyMount {
    disk: Arc<Mutex<Disk>>,
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl std::fmt::Debug for LazyMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyMount").field("mountpoint", &self.mountpoint).finish()
    }
}

impl LazyMount {
    /// Mounts a new, empty disk at `mountpoint` (an existing empty directory).
    pub fn mount(mountpoint: &Path, options: DiskOptions, seed: u64) -> std::io::Result<LazyMount> {
        let disk = Arc::new(Mutex::new(Disk::new(options, seed)));
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("paxos-lazyfs".into()),
            fuser::MountOption::Subtype("lazyfs".into()),
            fuser::MountOption::DefaultPermissions,
        ];
        let session = fuser::Session::new(LazyFs { disk: disk.clone() }, mountpoint, &config)
            .map_err(|error| {
                let hint = "the power-loss tests mount FUSE directly, which needs root (or fusermount3, \
                            from Debian's fuse3, on the PATH)";
                std::io::Error::new(
                    error.kind(),
                    format!("mounting at {}: {error}; {hint}", mountpoint.display()),
                )
            })?
            .spawn()?;
        Ok(LazyMount { disk, mountpoint: mountpoint.to_owned(), session: Some(session) })
    }

    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// The power goes out. Every process that used the mount must have been killed and
    /// reaped already (see [`crate::disk`]'s contract).
    pub fn power_cut(&self, mode: CutMode) -> CutReport {
        lock(&self.disk).power_cut(mode)
    }

    /// Writes what a cut now would leave under `dir` (for a person reading a failed test).
    pub fn write_durable_image(&self, dir: &Path) -> std::io::Result<()> {
        lock(&self.disk).write_durable_image(dir)
    }
}

impl Drop for LazyMount {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            if let Err(error) = session.umount_and_join() {
                eprintln!("unmounting {}: {error}", self.mountpoint.display());
            }
        }
    }
}
