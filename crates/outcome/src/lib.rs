//! Connection outcomes: what each browser saw of a peer connection, why a pair failed, and the counts an operator
//! reads.
//!
//! Model: the SDK sends one [`Report`] per peer connection (connected, failed, or not connected after a timeout)
//! in an `outcome` frame; the signaling hub pairs the two sides' reports (or waits out a deadline for the second)
//! and calls [`classify`], which is sans-IO — reports in, a [`Diagnosis`] out: the outcome, the path a connected
//! pair took, and for a failure a [`Reason`] with a stable code and a sentence in the words of the three steps
//! (signaling, discovery, connection). The I/O layer then records the diagnosis into [`Outcomes`], the store that
//! `/api/outcomes`, the metrics and the dashboard read.
//!
//! Contract: a [`Report`] comes from a stranger; [`Report::parse`] bounds and checks every field, and no field is
//! an address. [`Outcomes`] is shared as `Arc<Outcomes>` and locked once per diagnosed pair or snapshot, never on a
//! packet path.
//!
//! ```
//! use outcome::{classify, Outcomes, Report};
//!
//! let a = Report::parse(r#"{"outcome":"failed","elapsedMs":9000,"gathered":{"host":1,"srflx":1},
//!                           "offered":{"stun":1},"remoteCandidates":2}"#)?;
//! let b = Report::parse(r#"{"outcome":"failed","elapsedMs":9100,"gathered":{"host":1,"srflx":1},
//!                           "offered":{"stun":1},"remoteCandidates":2}"#)?;
//! let d = classify(&a, Some(&b)).between("lobby", "p_a", "p_b");
//! assert_eq!(d.reason.code(), "symmetric-nat-no-relay");
//! let store = Outcomes::new();
//! store.record(&d, 1_764_000_000);
//! assert_eq!(store.snapshot(1_764_000_000).by_reason["symmetric-nat-no-relay"], 1);
//! # Ok::<(), outcome::ReportError>(())
//! ```

mod classify;
mod report;
mod store;

pub use classify::{classify, classify_one, Absent, Diagnosis, Path, Reason, Step};
pub use report::{
    Browser, BrowserName, Candidate, CandidateError, CandidateType, DropCause, ErrorText, Gathered, IceUrl, Offered,
    Outcome, Policy, Protocol, RelayProtocol, Report, ReportError, SelectedPair, MAX_ERRORS, MAX_TEXT, MAX_URL,
};
pub use store::{
    Failure, Minute, OutcomeSnapshot, Outcomes, TimeToConnect, MINUTES, RECENT_FAILURES, RECENT_FAILURES_PER_ROOM,
    TIME_TO_CONNECT_BOUNDS_MS,
};
