//! Client history pages, read on a thread of their own so that no read delays a tick, a
//! heartbeat or a vote.
//!
//! A full page is up to 8 MiB read from RocksDB and encoded; on the driver thread, twelve
//! connections pipelining such pages moved leadership (the driver missed heartbeats while it
//! read). The driver now hands each `History` request to this reader with what only it knows
//! (the applied prefix and the history start at that moment) and goes on; the reader answers
//! the client itself. Its queue is bounded: past `JOBS_QUEUED_MAX` the request is answered
//! `Unavailable` at once (clients retry), so a flood of reads costs the driver a channel send
//! each, never a read.

use crate::input::{Input, Responder};
use crate::storage::HistoryView;
use crate::wire::{HistoryError, HistoryPage, Response, HISTORY_PAGE_BYTES_MAX, HISTORY_PAGE_ENTRIES_MAX};
use paxos_core::{Slot, Value};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};

/// History requests waiting for the reader. Each connection's answers are bounded by its answer
/// budget already; this bounds what the reader owes all of them together.
const JOBS_QUEUED_MAX: usize = 64;

/// One history request, with the node's view of the log when it arrived.
#[derive(Debug)]
struct Job {
    from_slot: Slot,
    limit: u64,
    applied_upto: Slot,
    history_start: Slot,
    respond: Responder,
}

/// The driver's end of the reader: hands requests over without waiting.
///
/// # Correctness
/// Dropping it waits for the thread to end: the thread holds the database too, and a database
/// closed by a thread that outlives the driver raced the process's exit (RocksDB aborted with
/// "pthread lock: Invalid argument" on a graceful stop).
#[derive(Debug)]
pub struct HistoryReader {
    jobs: Option<SyncSender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for HistoryReader {
    fn drop(&mut self) {
        // The thread ends once the queue is closed and what it holds is answered.
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl HistoryReader {
    /// Starts the reader thread on `view`. A record that fails its checksum is reported to the
    /// driver through `inputs` (the node stops: its disk cannot be trusted). The thread ends
    /// when the reader is dropped.
    pub fn spawn(
        node_id: paxos_core::NodeId,
        view: HistoryView,
        inputs: SyncSender<Input>,
    ) -> std::io::Result<Self> {
        let (jobs, queue) = sync_channel(JOBS_QUEUED_MAX);
        let thread = std::thread::Builder::new()
            .name(format!("paxos-history-{node_id}"))
            .spawn(move || serve(view, queue, inputs))?;
        Ok(HistoryReader { jobs: Some(jobs), thread: Some(thread) })
    }

    /// Asks for entries from `from_slot` (at most `limit`), as of the applied prefix
    /// `applied_upto` and the history start `history_start`; the answer goes to `respond`.
    pub fn read(
        &self,
        from_slot: Slot,
        limit: u64,
        applied_upto: Slot,
        history_start: Slot,
        respond: Responder,
    ) {
        if from_slot < history_start {
            respond.send(Response::History(Err(HistoryError::Truncated {
                requested: from_slot,
                history_start,
            })));
            return;
        }
        let job = Job { from_slot, limit, applied_upto, history_start, respond };
        let Some(jobs) = &self.jobs else {
            job.respond.send(Response::Unavailable("node is shutting down".into()));
            return;
        };
        match jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => {
                job.respond
                    .send(Response::Unavailable("node busy: too many history reads queued; retry".into()));
            }
            Err(TrySendError::Disconnected(job)) => {
                job.respond.send(Response::Unavailable("node is shutting down".into()));
            }
        }
    }
}

fn serve(view: HistoryView, queue: Receiver<Job>, inputs: SyncSender<Input>) {
    while let Ok(job) = queue.recv() {
        let limit = job.limit.clamp(1, HISTORY_PAGE_ENTRIES_MAX) as usize;
        let result = match view.read(job.from_slot, job.applied_upto, limit, HISTORY_PAGE_BYTES_MAX) {
            Ok(entries) => page(job.from_slot, entries, job.applied_upto, job.history_start),
            Err(error) => {
                let text = error.to_string();
                tracing::error!(%error, "reading history");
                // The driver stops the node: a record that fails its checksum means the disk
                // cannot be trusted. Never blocking: a driver that is stopping waits for this
                // thread, and a full queue then would never drain.
                let _ = inputs.try_send(Input::StorageFailed(error));
                Err(HistoryError::Storage(text))
            }
        };
        job.respond.send(Response::History(result));
    }
}

/// The page for `entries` read from `from_slot`. Entries start at `from_slot` unless a
/// truncation landed between the request and the read: then the slots asked for are gone.
fn page(
    from_slot: Slot,
    entries: Vec<(Slot, Value)>,
    applied_upto: Slot,
    history_start: Slot,
) -> Result<HistoryPage, HistoryError> {
    if let Some((first, _)) = entries.first() {
        if *first > from_slot {
            return Err(HistoryError::Truncated { requested: from_slot, history_start: *first });
        }
    }
    let entries = entries
        .into_iter()
        .map(|(slot, value)| match value {
            Value::Noop | Value::Config(_) => (slot, None),
            // A registration carries its client's first value.
            Value::Command { payload, .. } | Value::Register { payload, .. } => (slot, Some(payload)),
        })
        .collect();
    Ok(HistoryPage { entries, history_start, applied_upto })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_that_starts_after_the_slot_asked_for_was_truncated_meanwhile() {
        let entries = vec![(7, Value::Noop)];
        assert_eq!(page(3, entries, 9, 3), Err(HistoryError::Truncated { requested: 3, history_start: 7 }));
        let entries = vec![(3, Value::Noop)];
        assert_eq!(page(3, entries, 9, 3).map(|p| p.entries), Ok(vec![(3, None)]));
    }
}
