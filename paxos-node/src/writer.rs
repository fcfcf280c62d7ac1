//! The writer thread: where the node's log is written beside the driver (and, when there is
//! nothing to overlap with, the driver's own small writes: see below).
//!
//! The driver hands each Ready's `persist` (with the catch-up and Promise reads that must see
//! it) to this thread and goes on stepping input: the leader's Accepts are out before its own
//! fsync starts, and the next batch of proposals is replicated while this one is written.
//! Writes complete in the order they were handed over; the thread reports each completion on
//! its own channel (and wakes the driver), and the driver then does the rest of the Ready
//! contract for those Readies (see `paxos_core::Ready`).
//!
//! Jobs queued behind a write in progress are written together when it is done: one atomic
//! batch and one fsync for all of them (group commit). A batch is synced if any of its Readies
//! needs it; RocksDB's WAL is ordered, so a synced batch makes every earlier one durable too.
//!
//! A hand-off costs two thread wake-ups (the writer's, then the driver's when it is done): on
//! a disk whose fsync takes a tenth of a millisecond that is a good part of a write's time. So
//! when nothing is queued here, no input waits for the driver and the write is small, the
//! driver writes the Ready itself (`write_now`), after its early messages are out: the
//! leader's write still overlaps its followers', and the thread is kept for when there is
//! something to overlap with (a big write blocks the driver for longer than a hand-off costs).

use crate::input::Input;
use crate::storage::{Storage, StorageError};
use paxos_core::{HistoryRead, PersistOp, Slot, Value};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Readies merged into one write at most: a bound on the batch a backlog builds.
const JOBS_PER_WRITE_MAX: usize = 64;
/// ...and on its operations' payload bytes, about (a write always takes one Ready whole).
const WRITE_BYTES_MAX: usize = 32 << 20;

/// One Ready's write.
#[derive(Debug)]
pub struct Job {
    pub number: u64,
    pub persist: Vec<PersistOp>,
    pub needs_sync: bool,
    /// Performed right after this write, before any later one.
    pub history_reads: Vec<HistoryRead>,
}

impl Job {
    /// About how many bytes it writes: its values'.
    pub fn bytes(&self) -> usize {
        self.persist.iter().map(op_bytes).sum()
    }

    /// A write short enough to be done on the driver's thread: at most `bytes_max` of values,
    /// no reads (a catch-up or Promise page is up to megabytes) and no snapshot (a record per
    /// session, and a range delete).
    pub fn is_short(&self, bytes_max: usize) -> bool {
        self.history_reads.is_empty()
            && !self
                .persist
                .iter()
                .any(|op| matches!(op, PersistOp::InstallSnapshot(_) | PersistOp::Truncate(_)))
            && self.bytes() <= bytes_max
    }
}

/// What a completed write reports: every Ready up to `number` is written.
#[derive(Debug)]
pub struct Written {
    pub number: u64,
    /// The reads of the Readies written, in their order, with what they found.
    pub reads: Vec<(HistoryRead, Vec<(Slot, Value)>)>,
    /// How long a synced write took (None: no sync), and its records.
    pub synced: Option<(Duration, usize)>,
    pub fsyncs: u64,
    pub written_bytes: u64,
}

/// The driver's end of the writer thread.
///
/// # Correctness
/// Dropping it waits for the thread to end (it owns the database; see `HistoryReader`). A
/// write that fails is reported as `Err` and nothing more is written, by the thread or by
/// `write_now`: after a failed fsync the data may be lost, and a later write must not make
/// anything look durable.
#[derive(Debug)]
pub struct Writer {
    jobs: Option<Sender<Job>>,
    /// Shared with the thread, which holds it for each of its writes; `write_now` takes it only
    /// when nothing is queued, so it is never contended on the driver's path.
    storage: Arc<Mutex<Storage>>,
    /// Set by the first failed write, of either path.
    failed: Arc<AtomicBool>,
    /// The number of the last job handed to the thread, and of the last completion reported
    /// back: `write_now` asserts they are equal (nothing queued it could pass).
    handed_upto: Cell<u64>,
    reported_upto: Cell<u64>,
    done: Receiver<Result<Written, StorageError>>,
    /// Set while an `Input::Written` wake-up is queued and not yet taken by the driver.
    wake_queued: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Writer {
    /// Starts the thread on `storage`. Each completion is also announced with `Input::Written`
    /// on `inputs` (at most one outstanding), so a driver waiting for input wakes up.
    pub fn spawn(
        node_id: paxos_core::NodeId,
        storage: Storage,
        inputs: SyncSender<Input>,
    ) -> std::io::Result<Self> {
        let (jobs, queue) = channel();
        let (done_tx, done) = channel();
        let wake_queued = Arc::new(AtomicBool::new(false));
        let wake = Wake { queued: wake_queued.clone(), inputs };
        let storage = Arc::new(Mutex::new(storage));
        let failed = Arc::new(AtomicBool::new(false));
        let (thread_storage, thread_failed) = (storage.clone(), failed.clone());
        let thread = std::thread::Builder::new()
            .name(format!("paxos-writer-{node_id}"))
            .spawn(move || write_loop(thread_storage, thread_failed, queue, done_tx, wake))?;
        Ok(Writer {
            jobs: Some(jobs),
            storage,
            failed,
            handed_upto: Cell::new(0),
            reported_upto: Cell::new(0),
            done,
            wake_queued,
            thread: Some(thread),
        })
    }

    /// Writes one Ready on the caller's thread and returns its completion (the report the
    /// thread would have sent).
    ///
    /// # Correctness
    /// Only when every job handed to `write` has been reported done: completions are in the
    /// order of the Readies, and a Ready written here must not pass one still queued.
    pub fn write_now(&self, job: Job) -> Result<Written, StorageError> {
        if self.failed.load(Ordering::Acquire) || self.storage.is_poisoned() {
            return Err(StorageError::WriterStopped);
        }
        assert_eq!(
            self.handed_upto.get(),
            self.reported_upto.get(),
            "a write on the driver's thread would pass one queued for the writer thread"
        );
        let mut storage = self.storage.lock().map_err(|_| StorageError::WriterStopped)?;
        let result = write_jobs(&mut storage, vec![job]);
        if result.is_err() {
            self.failed.store(true, Ordering::Release);
        }
        result
    }

    /// The driver took an `Input::Written`: the next completion queues another.
    pub fn woken(&self) {
        self.wake_queued.store(false, Ordering::Release);
    }

    /// Queues one Ready's write. The driver bounds how many are queued (see `driver.rs`).
    pub fn write(&self, job: Job) -> Result<(), StorageError> {
        let jobs = self.jobs.as_ref().ok_or(StorageError::WriterStopped)?;
        let number = job.number;
        jobs.send(job).map_err(|_| StorageError::WriterStopped)?;
        self.handed_upto.set(number);
        Ok(())
    }

    fn reported(&self, done: &Result<Written, StorageError>) {
        if let Ok(written) = done {
            self.reported_upto.set(self.reported_upto.get().max(written.number));
        }
    }

    /// A completed write, if one is reported.
    pub fn try_done(&self) -> Option<Result<Written, StorageError>> {
        match self.done.try_recv() {
            Ok(done) => {
                self.reported(&done);
                Some(done)
            }
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Err(StorageError::WriterStopped)),
        }
    }

    /// Waits for the next completed write.
    pub fn wait_done(&self) -> Result<Written, StorageError> {
        let done = self.done.recv().unwrap_or(Err(StorageError::WriterStopped));
        self.reported(&done);
        done
    }
}

/// Wakes a driver waiting for input when a write completes.
struct Wake {
    queued: Arc<AtomicBool>,
    inputs: SyncSender<Input>,
}

impl Wake {
    fn wake(&self) {
        if !self.queued.swap(true, Ordering::AcqRel) && self.inputs.try_send(Input::Written).is_err() {
            // A full queue wakes the driver anyway, and it looks for completions after every
            // batch of input.
            self.queued.store(false, Ordering::Release);
        }
    }
}

fn write_loop(
    storage: Arc<Mutex<Storage>>,
    failed: Arc<AtomicBool>,
    queue: Receiver<Job>,
    done: Sender<Result<Written, StorageError>>,
    wake: Wake,
) {
    while let Ok(first) = queue.recv() {
        let mut jobs = vec![first];
        let mut bytes = jobs[0].bytes();
        while jobs.len() < JOBS_PER_WRITE_MAX && bytes < WRITE_BYTES_MAX {
            match queue.try_recv() {
                Ok(job) => {
                    bytes += job.bytes();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let result = if failed.load(Ordering::Acquire) {
            Err(StorageError::WriterStopped)
        } else {
            match storage.lock() {
                Ok(mut storage) => write_jobs(&mut storage, jobs),
                Err(_) => Err(StorageError::WriterStopped),
            }
        };
        let stop = result.is_err();
        if stop {
            failed.store(true, Ordering::Release);
        }
        if done.send(result).is_err() {
            return;
        }
        wake.wake();
        if stop {
            return;
        }
    }
}

/// Writes `jobs` as one batch, then performs their reads.
fn write_jobs(storage: &mut Storage, jobs: Vec<Job>) -> Result<Written, StorageError> {
    let number = jobs.iter().map(|job| job.number).max().unwrap_or(0);
    let needs_sync = jobs.iter().any(|job| job.needs_sync);
    let mut persist = Vec::with_capacity(jobs.iter().map(|job| job.persist.len()).sum());
    let mut history_reads = Vec::new();
    for job in jobs {
        persist.extend(job.persist);
        history_reads.extend(job.history_reads);
    }
    let started = Instant::now();
    storage.write_batch(&persist, needs_sync)?;
    let synced = needs_sync.then(|| (started.elapsed(), persist.len()));
    let mut reads = Vec::with_capacity(history_reads.len());
    for read in history_reads {
        let entries =
            storage.read_history(read.from_slot, read.upto_slot, read.entries_max, read.bytes_max)?;
        reads.push((read, entries));
    }
    Ok(Written { number, reads, synced, fsyncs: storage.fsyncs(), written_bytes: storage.written_bytes() })
}

/// About how many bytes an operation writes: its value's, for the bound on a merged batch.
fn op_bytes(op: &PersistOp) -> usize {
    match op {
        PersistOp::Accept { value, .. } | PersistOp::Apply { value, .. } => value.size_bytes(),
        _ => 16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paxos_core::{Ballot, ReadPurpose, RequestId};
    use std::sync::mpsc::sync_channel;

    fn command(seq: u64) -> Value {
        Value::Command { request_id: RequestId { client_id: 1, seq }, key: [0; 16], payload: vec![7; 10] }
    }

    /// A catch-up page for node 2 of slots `from_slot..upto_slot`.
    fn catch_up_read(request: u64, from_slot: Slot, upto_slot: Slot) -> HistoryRead {
        HistoryRead {
            purpose: ReadPurpose::CatchUp { request },
            to: 2,
            from_slot,
            upto_slot,
            entries_max: 10,
            bytes_max: 1 << 20,
        }
    }

    fn written(writer: &Writer) -> Written {
        writer.wait_done().expect("the write succeeds")
    }

    /// A new node's storage in `dir`, loaded (as the driver has it before it spawns the writer).
    fn storage_in(dir: &std::path::Path) -> Storage {
        let mut storage = Storage::open(dir, "c", 1).expect("open");
        storage.load().expect("load");
        storage
    }

    /// Job `number`: a synced Accept of its command at slot `number - 1`.
    fn accept_job(number: u64) -> Job {
        let accept =
            PersistOp::Accept { slot: number - 1, ballot: Ballot::new(1, 1), value: command(number) };
        Job { number, persist: vec![accept], needs_sync: true, history_reads: Vec::new() }
    }

    /// Writes complete in the order handed over, jobs queued behind a write are merged into it
    /// (one report covers them), and a job's reads see its own write.
    #[test]
    fn writes_complete_in_order_and_reads_see_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (inputs, wakes) = sync_channel(16);
        let writer = Writer::spawn(1, storage_in(dir.path()), inputs).expect("spawn");
        let ballot = Ballot::new(1, 1);
        let mut reported = 0;
        for number in 1..=50u64 {
            let slot = number - 1;
            let persist = vec![
                PersistOp::Accept { slot, ballot, value: command(number) },
                PersistOp::ApplyAccepted { slot },
                PersistOp::AppliedUpto(slot + 1),
            ];
            let history_reads = vec![catch_up_read(number, slot, slot + 1)];
            writer
                .write(Job { number, persist, needs_sync: number % 2 == 0, history_reads })
                .expect("queued");
        }
        let mut reads = Vec::new();
        while reported < 50 {
            let done = written(&writer);
            assert!(done.number > reported, "reports go forward: {} after {reported}", done.number);
            reported = done.number;
            reads.extend(done.reads);
        }
        assert_eq!(reads.len(), 50, "every job's reads are performed");
        for (index, (read, entries)) in reads.iter().enumerate() {
            assert_eq!(read.from_slot, index as u64, "reads in the order of their jobs");
            assert_eq!(entries, &vec![(index as u64, command(index as u64 + 1))], "a read sees its write");
        }
        assert!(wakes.try_recv().is_ok(), "a completion wakes the driver");
        writer.woken();
    }

    /// A write that fails is reported, and nothing after it is written: after a failed write
    /// the node must stop, never acknowledge a later batch.
    #[test]
    fn a_failed_write_stops_the_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (inputs, _wakes) = sync_channel(16);
        let writer = Writer::spawn(1, storage_in(dir.path()), inputs).expect("spawn");
        let value = command(1);
        let write = |number, persist| Job { number, persist, needs_sync: true, history_reads: Vec::new() };
        writer
            .write(write(
                1,
                vec![PersistOp::Apply { slot: 0, value: value.clone() }, PersistOp::AppliedUpto(1)],
            ))
            .expect("queued");
        assert_eq!(written(&writer).number, 1);
        // Slot 0 applied; an Accept below the applied prefix is a replica bug the storage
        // asserts on: the thread panics, and the driver hears that the writer stopped.
        writer
            .write(write(2, vec![PersistOp::Accept { slot: 0, ballot: Ballot::new(1, 1), value }]))
            .expect("queued");
        assert!(writer.wait_done().is_err(), "the failure is reported");
        let _ = writer.write(write(3, Vec::new()));
        assert!(writer.try_done().is_none_or(|done| done.is_err()), "nothing after it is written");
        assert!(writer.write_now(write(4, Vec::new())).is_err(), "nor on the driver's thread");
    }

    /// A disk error (no panic, so no poisoned lock) on either path stops both: the `failed`
    /// flag alone keeps the other path from writing, though the disk would take the next write.
    #[test]
    fn a_disk_error_on_either_path_stops_the_other() {
        for thread_fails_first in [true, false] {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut storage = storage_in(dir.path());
            storage.fail_next_writes(1);
            let (inputs, _wakes) = sync_channel(16);
            let writer = Writer::spawn(1, storage, inputs).expect("spawn");
            if thread_fails_first {
                writer.write(accept_job(1)).expect("queued");
                assert!(writer.wait_done().is_err(), "the thread's write fails");
                assert!(!writer.storage.is_poisoned(), "an error, not a panic");
                assert!(
                    writer.write_now(accept_job(2)).is_err(),
                    "the driver's thread writes nothing after it"
                );
            } else {
                assert!(writer.write_now(accept_job(1)).is_err(), "the driver's write fails");
                assert!(!writer.storage.is_poisoned(), "an error, not a panic");
                writer.write(accept_job(2)).expect("queued");
                assert!(writer.wait_done().is_err(), "the thread writes nothing after it");
            }
            drop(writer);
            let mut reopened = Storage::open(dir.path(), "c", 1).expect("reopen");
            let state = reopened.load().expect("load");
            assert!(
                state.accepted.is_empty(),
                "nothing after the failure reached the disk: {:?}",
                state.accepted
            );
        }
    }

    /// Only short writes are done on the driver's thread: reads (a page is up to megabytes) and
    /// snapshots go to the thread whatever their values' size.
    #[test]
    fn a_short_write_has_no_reads_no_snapshot_and_few_bytes() {
        let job = |persist: Vec<PersistOp>, reads: usize| Job {
            number: 1,
            persist,
            needs_sync: true,
            history_reads: (0..reads).map(|_| catch_up_read(1, 0, 1)).collect(),
        };
        let accept = |slot| PersistOp::Accept { slot, ballot: Ballot::new(1, 1), value: command(slot) };
        assert!(job(vec![accept(0)], 0).is_short(1024));
        assert!(!job(vec![accept(0)], 1).is_short(1024), "a read makes it long");
        assert!(!job(Vec::new(), 1).is_short(1024), "even with nothing to write");
        assert!(!job((0..100).map(accept).collect(), 0).is_short(1024), "so do many values");
        let snapshot = paxos_core::TruncationSnapshot::default();
        assert!(!job(vec![PersistOp::InstallSnapshot(snapshot.clone())], 0).is_short(1024));
        assert!(!job(vec![PersistOp::Truncate(snapshot)], 0).is_short(1024));
    }

    /// The driver's own writes and the thread's go to the same storage, in the order made, and
    /// a failed write on the driver's thread stops the thread's too.
    #[test]
    fn writes_on_the_drivers_thread_join_the_threads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (inputs, _wakes) = sync_channel(16);
        let writer = Writer::spawn(1, storage_in(dir.path()), inputs).expect("spawn");
        let fsyncs_before = writer.write_now(accept_job(1)).expect("written").fsyncs;
        writer.write(accept_job(2)).expect("queued");
        let passing =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| writer.write_now(accept_job(3))));
        assert!(passing.is_err(), "a write on the driver's thread may not pass a queued one");
        assert_eq!(written(&writer).number, 2);
        let mut apply = accept_job(3);
        apply.persist = vec![
            PersistOp::ApplyAccepted { slot: 0 },
            PersistOp::ApplyAccepted { slot: 1 },
            PersistOp::AppliedUpto(2),
        ];
        apply.history_reads = vec![catch_up_read(1, 0, 2)];
        let done = writer.write_now(apply).expect("written");
        assert_eq!(done.number, 3);
        assert!(done.fsyncs >= fsyncs_before + 2, "each synced write is counted, on either thread");
        assert_eq!(
            done.reads[0].1,
            vec![(0, command(1)), (1, command(2))],
            "the read sees both writes, the driver's and the thread's"
        );
        // Slot 0 is applied: an Accept below the applied prefix is a replica bug the storage
        // asserts on, here on the driver's thread.
        let failed =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| writer.write_now(accept_job(1))));
        assert!(failed.is_err() || failed.is_ok_and(|result| result.is_err()), "the write fails");
        writer.write(accept_job(5)).expect("queued");
        assert!(writer.wait_done().is_err(), "and the thread writes nothing after it");
    }
}
