//! The TURN side of the soak: allocations held with Refreshes and ChannelBinds, a relay stream over some of them,
//! and a churn of short-lived allocations.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rand::Rng;
use stun::{ChannelData, ChannelNumber};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use traverse_loadgen::turn::{Credentials, Session};

use crate::{pause, stopped, Stats};

/// What every allocation task of a run shares.
#[derive(Debug)]
pub(crate) struct TurnLoad {
    pub server: SocketAddr,
    pub peer: SocketAddr,
    pub credentials: Credentials,
    pub refresh: Duration,
    pub rebind: Duration,
    pub stream_size: usize,
    /// Bounds the allocations being opened at once.
    pub ramp: Arc<Semaphore>,
    /// Bounds the allocations being deleted at once.
    pub teardown: Semaphore,
    pub stats: Arc<Stats>,
}

/// Every allocation binds the same channel number to the peer: channels are per allocation.
const CHANNEL: u16 = 0x4000;

impl TurnLoad {
    async fn open(&self) -> anyhow::Result<Session> {
        let _permit = self.ramp.acquire().await?;
        let mut session = Session::allocate(self.server, &self.credentials, None).await?;
        session.channel_bind(channel()?, self.peer, &mut |_| {}).await?;
        self.stats.allocations_opened.fetch_add(1, Ordering::Relaxed);
        Ok(session)
    }

    /// Ends the allocation (Refresh with LIFETIME 0) and counts the stale nonces it met.
    async fn delete(&self, session: &mut Session) {
        if let Ok(_permit) = self.teardown.acquire().await {
            if let Err(e) = session.refresh(Some(0), &mut |_| {}).await {
                self.stats.note(&self.stats.delete_failures, "delete", e);
            }
        }
        self.stats
            .stale_nonces
            .fetch_add(session.stale_nonces(), Ordering::Relaxed);
    }
}

fn channel() -> anyhow::Result<ChannelNumber> {
    ChannelNumber::new(CHANNEL).context("channel number")
}

/// One of the held allocations, for the whole run: opened, kept alive (and streaming if `stream` gives a packet
/// interval), deleted when the run stops. A lost one is counted and replaced after a second.
pub(crate) async fn hold_slot(load: Arc<TurnLoad>, stream: Option<Duration>, mut stop: watch::Receiver<bool>) {
    let stats = &load.stats;
    while !*stop.borrow() {
        let mut session = match load.open().await {
            Ok(s) => s,
            Err(e) => {
                stats.note(&stats.allocation_failures, "allocation", e);
                pause(&mut stop, Duration::from_secs(1)).await;
                continue;
            }
        };
        stats.allocations_held.fetch_add(1, Ordering::Relaxed);
        let held = keep(&load, &mut session, stream, &mut stop).await;
        stats.allocations_held.fetch_sub(1, Ordering::Relaxed);
        if let Err(e) = held {
            stats.stale_nonces.fetch_add(session.stale_nonces(), Ordering::Relaxed);
            stats.note(&stats.allocations_lost, "held allocation lost", e);
            pause(&mut stop, Duration::from_secs(1)).await;
        }
    }
}

/// Keeps one allocation until the run stops (then deletes it), or until something fails.
async fn keep(
    load: &TurnLoad,
    session: &mut Session,
    stream: Option<Duration>,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let stats = &load.stats;
    let channel = channel()?;
    // Spread the Refreshes and ChannelBinds of allocations opened together over their whole period.
    let mut next_refresh = Instant::now() + spread(load.refresh);
    let mut next_bind = Instant::now() + spread(load.rebind);
    let mut packet = vec![0u8; 4 + load.stream_size];
    let header: &mut [u8; 4] = packet.get_mut(..4).and_then(|h| h.try_into().ok()).context("header")?;
    ChannelData::write_header(header, channel, load.stream_size as u16);
    let mut tick = tokio::time::interval(stream.unwrap_or(Duration::from_secs(3600)));
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut buf = [0u8; 1500];
    let mut count_echo = |p: &[u8]| {
        if ChannelData::parse(p).is_ok_and(|d| d.channel == channel) {
            stats.echoes_received.fetch_add(1, Ordering::Relaxed);
        }
    };
    loop {
        tokio::select! {
            _ = stopped(stop) => break,
            _ = tokio::time::sleep_until(next_refresh.min(next_bind)) => {
                if Instant::now() >= next_bind {
                    session.channel_bind(channel, load.peer, &mut count_echo).await?;
                    stats.rebinds.fetch_add(1, Ordering::Relaxed);
                    next_bind += load.rebind;
                }
                if Instant::now() >= next_refresh {
                    session.refresh(None, &mut count_echo).await?;
                    stats.refreshes.fetch_add(1, Ordering::Relaxed);
                    next_refresh += load.refresh;
                }
            }
            r = session.recv(&mut buf) => {
                let n = r.context("receive")?;
                count_echo(buf.get(..n).unwrap_or_default());
            }
            _ = tick.tick(), if stream.is_some() => {
                // A full socket buffer drops the packet; it then shows as loss, like any other.
                let _ = session.try_send(&packet);
                stats.echoes_sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    load.delete(session).await;
    Ok(())
}

/// A random delay in `(period/2, period]`: the first of a periodic action, so tasks started together spread out.
fn spread(period: Duration) -> Duration {
    period.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
}

/// Opens `rate` allocations per second, each held `hold` and then deleted, until the run stops; waits for the
/// last ones to be deleted.
pub(crate) async fn churn(load: Arc<TurnLoad>, rate: u32, hold: Duration, mut stop: watch::Receiver<bool>) {
    if rate == 0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    // Twice what the rate keeps open: beyond that the server is not keeping up, and the churn waits for it.
    let cap = (rate as usize * hold.as_secs().max(1) as usize * 2).max(16);
    let mut open = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            _ = tick.tick() => {
                while open.try_join_next().is_some() {}
                if open.len() >= cap {
                    load.stats.churn_skipped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                open.spawn(churn_one(load.clone(), hold, stop.clone()));
            }
        }
    }
    while open.join_next().await.is_some() {}
}

async fn churn_one(load: Arc<TurnLoad>, hold: Duration, mut stop: watch::Receiver<bool>) {
    let stats = &load.stats;
    let mut session = match load.open().await {
        Ok(s) => s,
        Err(e) => return stats.note(&stats.allocation_failures, "churn allocation", e),
    };
    stats.churn_allocations_held.fetch_add(1, Ordering::Relaxed);
    pause(&mut stop, hold).await;
    load.delete(&mut session).await;
    stats.churn_allocations_held.fetch_sub(1, Ordering::Relaxed);
}
