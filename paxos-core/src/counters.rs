//! Counters of rare events, for status reports, metrics and the simulation. Each only ever
//! goes up, by one, where its event happens; nothing reads them to decide anything.

/// How often each rare event happened since the replica started.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counters {
    /// Accepts for slots already applied here, refused because their value cannot be checked.
    pub(crate) stale_accepts_refused: u64,
    /// Leaderships given up because another ballot chose at a slot this leader had in flight.
    pub(crate) superseded_leaderships: u64,
    /// Messages dropped because they break a rule no honest peer breaks (a ballot above
    /// `Ballot::ROUND_MAX`).
    pub(crate) rejected_messages: u64,
    /// Leadership transfers this replica abandoned (the target did not take over in time).
    pub(crate) transfers_abandoned: u64,
    /// `TimeoutNow`s this replica obeyed (campaigns it started on a leader's word).
    pub(crate) transfers_taken: u64,
    /// See `Status::prepares_ignored`.
    pub(crate) prepares_ignored: u64,
    /// See `Status::pre_votes_refused`.
    pub(crate) pre_votes_refused: u64,
}
