//! Each session's numbered stream: delivery of frames under the byte budgets, the replay buffer, acknowledgements,
//! the client's own numbering, and resume.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use rand::RngCore;

use super::{ConnId, MemoryHub, Now, Output, SessionEvent};
use crate::budget::{Budget, Over, Source, FRAME_OVERHEAD};
use crate::frame::{Frame, Meta, HEADER_MAX};
use crate::id::{PeerId, SessionSecret};
use crate::protocol::{CloseCode, ErrorCode, Refusal};

/// A peer in a room; outlives its socket for the resume grace period.
pub(super) struct Session {
    pub secret: SessionSecret,
    pub room: Arc<str>,
    /// Charged for every kept frame: the source of the socket that joined.
    pub source: Source,
    /// Bytes of `buffer` as charged to the budgets.
    pub held: usize,
    /// Shown to the other peers.
    pub meta: Meta,
    pub conn: Option<ConnId>,
    pub next_seq: u64,
    /// Highest client `seq` handled: a resent message at or below it is a duplicate and is dropped.
    pub client_seq: u64,
    pub buffer: VecDeque<Buffered>,
    pub disconnected: Option<Disconnected>,
    /// Peers this session exchanged a `signal` with (either way) since their pair was last diagnosed: an `outcome`
    /// report is taken only about one of them (`outcomes.rs`). At most `max_peers_per_room`.
    pub signaled: Vec<PeerId>,
    /// `outcome` reports this session may still send now, and when the next one is added (`outcomes.rs`).
    pub reports: ReportAllowance,
    /// Its calls may have been diagnosed connected elsewhere: it joined again after its resume failed (a restarted
    /// server), or was restored from a node that died. A drop or interruption report by or about it is then taken
    /// on a negotiation since (`outcomes.rs`).
    pub rebound: bool,
}

/// A session's `outcome` reports: a burst (two per peer a room may have), then one per [`ReportAllowance::EVERY`].
#[derive(Debug, Clone, Copy)]
pub(super) struct ReportAllowance {
    left: u16,
    next: Instant,
}

impl ReportAllowance {
    /// One more report per this long, up to the burst.
    pub const EVERY: std::time::Duration = std::time::Duration::from_secs(10);

    pub fn new(burst: usize, now: Instant) -> Self {
        Self {
            left: u16::try_from(burst).unwrap_or(u16::MAX),
            next: now + Self::EVERY,
        }
    }

    /// Takes one report; false when none is left.
    pub fn take(&mut self, burst: usize, now: Instant) -> bool {
        let burst = u16::try_from(burst).unwrap_or(u16::MAX);
        while now >= self.next && self.left < burst {
            self.left += 1;
            self.next += Self::EVERY;
        }
        if self.left == burst {
            self.next = now + Self::EVERY;
        }
        match self.left.checked_sub(1) {
            Some(left) => {
                self.left = left;
                true
            }
            None => false,
        }
    }
}

pub(super) struct Disconnected {
    pub at: Instant,
    /// The newest sequence number sent before the socket dropped: later ones surely were not delivered.
    pub last_sent: u64,
}

pub(super) struct Buffered {
    pub seq: u64,
    text: Bytes,
    /// For a `signal`: who sent it, told if it is never delivered.
    pub signal_from: Option<SignalFrom>,
}

/// A signal's sender and message id, told if it is never delivered.
pub(super) struct SignalFrom {
    pub sender: PeerId,
    pub id: Option<String>,
}

/// A frame refused by a budget: which one, and the signal's sender handed back so the caller can name it.
pub(super) struct Refused {
    pub over: Over,
    pub signal_from: Option<SignalFrom>,
}

impl Buffered {
    /// The frame's bytes, as sent.
    pub fn text(&self) -> &Bytes {
        &self.text
    }

    /// A frame another node kept (see [`super::Restored`]); who sent it is not recorded there.
    pub fn restored(seq: u64, text: Bytes) -> Self {
        Self {
            seq,
            text,
            signal_from: None,
        }
    }
}

impl Session {
    pub fn new(
        secret: SessionSecret,
        room: Arc<str>,
        source: Source,
        meta: Meta,
        conn: ConnId,
        reports: ReportAllowance,
    ) -> Self {
        Self {
            secret,
            room,
            source,
            held: 0,
            meta,
            conn: Some(conn),
            next_seq: 1,
            client_seq: 0,
            buffer: VecDeque::new(),
            disconnected: None,
            signaled: Vec::new(),
            reports,
            rebound: false,
        }
    }

    /// When its grace ends, if its socket dropped: the instant of its one live entry in the deadline queue.
    pub fn grace_end(&self, grace: std::time::Duration) -> Option<Instant> {
        self.disconnected.as_ref().map(|d| d.at + grace)
    }

    /// Forgets the oldest kept frame and refunds its bytes.
    fn forget_oldest(&mut self, budget: &mut Budget) -> Option<Buffered> {
        let b = self.buffer.pop_front()?;
        let n = charge_of(&b.text);
        self.held = self.held.saturating_sub(n);
        budget.release(self.source, n);
        Some(b)
    }

    /// Forgets every frame up to `seq`: acknowledged, or before a resume's `lastSeq`. An emptied buffer gives its
    /// slots back (an idle session that acknowledges keeps none).
    fn forget_through(&mut self, seq: u64, budget: &mut Budget) {
        while self.buffer.front().is_some_and(|b| b.seq <= seq) {
            self.forget_oldest(budget);
        }
        if self.buffer.is_empty() {
            self.buffer = VecDeque::new();
        }
    }
}

/// The number of a session's first frame, `joined`.
const JOINED_SEQ: u64 = 1;

/// What a kept frame costs its budgets.
fn charge_of(text: &Bytes) -> usize {
    text.len() + FRAME_OVERHEAD
}

impl<R: RngCore + Send> MemoryHub<R> {
    /// Appends `frame` to a peer's stream and sends it if the peer is connected: written once, into one allocation
    /// shared by the replay buffer and the socket's queue. A refusal hands `signal_from` back, so the caller can name
    /// the message without having copied its id beforehand.
    ///
    /// Budgets: a disconnected peer's queue is never trimmed, so a frame over a budget is refused (nothing queued
    /// is dropped silently). A connected peer has been sent everything already; only its replay window shrinks:
    /// its own oldest unacknowledged frames are forgotten until the new one fits, and if none are left the frame
    /// is sent without being kept (a resume from before it fails). So a reader that never acknowledges holds at
    /// most its session budget, and no one else's frames are dropped to make room.
    pub(super) fn deliver(
        &mut self,
        peer: &PeerId,
        frame: &Frame<'_>,
        signal_from: Option<SignalFrom>,
    ) -> Result<(), Refused> {
        let limits = &self.limits;
        let budget = &mut self.budget;
        let Some(s) = self.sessions.get_mut(peer) else {
            return Err(Refused {
                over: Over::Session,
                signal_from,
            });
        };
        if let Some(d) = &s.disconnected {
            let queued = (s.next_seq - 1).saturating_sub(d.last_sent) as usize;
            let checked = if queued >= limits.max_queued {
                Err(Over::Session)
            } else {
                // Checked before anything is allocated, with the longest header a sequence number can take.
                budget.check(s.source, s.held, HEADER_MAX + frame.body_len() + FRAME_OVERHEAD)
            };
            if let Err(over) = checked {
                self.refused += 1;
                return Err(Refused { over, signal_from });
            }
        }
        let seq = s.next_seq;
        s.next_seq += 1;
        let text = frame.encode(seq);
        let n = charge_of(&text);
        let oldest_before = s.buffer.front().map(|b| b.seq);
        // `joined` is never kept: a client can resume only with the session secret that `joined` carries, so every
        // client that resumes has it (a session's first frame; see `resume`).
        let keep = if matches!(frame, Frame::Joined(_)) {
            false
        } else if s.disconnected.is_some() {
            true
        } else {
            if s.buffer.len() >= limits.max_unacked {
                s.forget_oldest(budget);
            }
            loop {
                if budget.check(s.source, s.held, n).is_ok() {
                    break true;
                }
                if s.forget_oldest(budget).is_none() {
                    break false;
                }
            }
        };
        if keep {
            budget.charge(s.source, n);
            s.held += n;
            if s.buffer.capacity() == 0 {
                // One slot first, not the four a `VecDeque` starts with: most idle sessions keep a frame or none.
                s.buffer.reserve_exact(1);
            }
            s.buffer.push_back(Buffered {
                seq,
                text: text.clone(),
                signal_from,
            });
        }
        if self.session_events {
            // Recorded before the frame is sent (the I/O layer writes these first), so a node that takes the
            // session over never numbers a frame twice.
            let oldest_after = s.buffer.front().map(|b| b.seq);
            if oldest_before.is_some() && oldest_after != oldest_before {
                let through = oldest_after.map_or(seq - 1, |o| o - 1);
                let forgot = SessionEvent::Forgot {
                    peer: peer.clone(),
                    through,
                };
                self.outputs.push_back(Output::Session(forgot));
            }
            let numbered = SessionEvent::Numbered {
                peer: peer.clone(),
                seq,
                kept: keep.then(|| text.clone()),
            };
            self.outputs.push_back(Output::Session(numbered));
        }
        if let Some(conn) = s.conn {
            self.outputs.push_back(Output::Send { conn, text });
        }
        Ok(())
    }

    /// A client-numbered `signal`/`broadcast` is handled once per number, so a resend after a resume is harmless.
    /// True when `seq` was handled already.
    pub(super) fn seen_before(&mut self, conn: ConnId, seq: u64) -> bool {
        let Some(s) = self
            .conns
            .get(&conn)
            .and_then(|c| c.peer.as_ref())
            .and_then(|p| self.sessions.get_mut(p))
        else {
            return false;
        };
        if seq <= s.client_seq {
            return true;
        }
        s.client_seq = seq;
        if self.session_events {
            let peer = self.conns.get(&conn).and_then(|c| c.peer.clone());
            if let Some(peer) = peer {
                let handled = SessionEvent::Handled { peer, client_seq: seq };
                self.outputs.push_back(Output::Session(handled));
            }
        }
        false
    }

    /// `ping`: trims the replay buffer through `ack` and answers with the newest stream number and client `seq`.
    pub(super) fn ping(&mut self, conn: ConnId, peer: Option<PeerId>, ack: Option<u64>) {
        let (mut newest, mut client_seq) = (0, 0);
        if let Some((p, s)) = peer.and_then(|p| self.sessions.get_mut(&p).map(|s| (p, s))) {
            if let Some(ack) = ack {
                s.forget_through(ack, &mut self.budget);
                if self.session_events {
                    let forgot = SessionEvent::Forgot { peer: p, through: ack };
                    self.outputs.push_back(Output::Session(forgot));
                }
            }
            newest = s.next_seq - 1;
            client_seq = s.client_seq;
        }
        self.send_unnumbered(conn, newest, &Frame::Pong { ack: client_seq });
    }

    /// `ice-servers`: a fresh credential for the session's own peer id, answered outside the stream. The session
    /// is the authentication (a join token may have expired since the join); the rate limit bounds how often.
    pub(super) fn ice_servers(&mut self, conn: ConnId, peer: &PeerId, now: Now) {
        let newest = self.sessions.get(peer).map_or(0, |s| s.next_seq - 1);
        let ice_servers = (self.ice_servers)(peer, now.unix);
        self.send_unnumbered(
            conn,
            newest,
            &Frame::IceServers {
                ice_servers: &ice_servers,
            },
        );
    }

    /// Attaches a new socket to the session `claim` names and replays every kept frame after `last_seq`.
    pub(super) fn resume(&mut self, conn: ConnId, claim: &str, last_seq: u64) {
        let failed = |why: &str| Refusal::new(ErrorCode::ResumeFailed, format!("Cannot resume: {why}; join again."));
        let Some(peer) = SessionSecret::parse(claim).and_then(|secret| self.by_secret.get(&secret).cloned()) else {
            return self.error(conn, failed("the session is unknown or has expired"));
        };
        let Some(s) = self.sessions.get(&peer) else {
            return self.error(conn, failed("the session is unknown or has expired"));
        };
        let newest = s.next_seq - 1;
        // The client has `joined` (it knows the secret) even if it says otherwise; `joined` is not kept.
        let last_seq = last_seq.max(JOINED_SEQ.min(newest));
        let oldest_kept = s.buffer.front().map_or(s.next_seq, |b| b.seq);
        if last_seq > newest {
            return self.error(conn, failed("the client claims messages the server never sent"));
        }
        if last_seq + 1 < oldest_kept {
            return self.error(conn, failed("messages after `lastSeq` are no longer kept"));
        }
        if let Some(old) = s.conn {
            // The old socket may not have been noticed dead yet; the newest socket wins.
            self.close(old, CloseCode::REPLACED, "replaced");
        }
        let Some(s) = self.sessions.get_mut(&peer) else { return };
        s.conn = Some(conn);
        s.disconnected = None;
        self.counters.resumes += 1;
        tracing::info!(%conn, %peer, room = %s.room, replay_from = last_seq + 1, "resumed a session");
        s.forget_through(last_seq, &mut self.budget);
        if self.session_events {
            let forgot = SessionEvent::Forgot {
                peer: peer.clone(),
                through: last_seq,
            };
            self.outputs.push_back(Output::Session(forgot));
        }
        let resumed = Frame::Resumed {
            peer: &peer,
            replayed: s.buffer.len(),
            ack: s.client_seq,
        };
        self.outputs.push_back(Output::Send {
            conn,
            text: resumed.encode(newest),
        });
        for b in &s.buffer {
            self.outputs.push_back(Output::Send {
                conn,
                text: b.text.clone(),
            });
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.peer = Some(peer);
        }
    }
}
