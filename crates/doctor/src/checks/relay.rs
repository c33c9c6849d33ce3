//! The relay round trip: over the best TURN transport that worked, two allocations with permissions and channels to
//! each other's relayed address, then `--packets` ChannelData packets every `--interval-ms` A → relay → B → relay →
//! A: loss, RTT p50/p95/max, jitter.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{timeout, Instant};

use super::net::{connect, timed};
use super::turn::Credential;
use super::Settings;
use crate::client::TurnClient;
use crate::error::CheckError;
use crate::facts::{RelayFact, RttStats, Timed};
use crate::ice::IceUrl;
use crate::progress::Progress;

/// The channel both clients of the pair bind to each other.
pub(crate) const CHANNEL: u16 = 0x4000;

/// Two allocations on `url`, permissions and channels to each other's relayed address; both clients step by step
/// together. One after the other, over TURN over TLS, that was 14 round trips within the 9 s bound: a satellite
/// link (600 ms) had 0.6 s to spare, and a longer one read as "data did not come back through the relay". Together,
/// 7.
async fn pair(s: &Settings, url: &IceUrl, cred: &Credential) -> Result<(TurnClient, TurnClient), CheckError> {
    let ((ca, _), (cb, _)) = tokio::try_join!(connect(s, url), connect(s, url))?;
    let mut a = cred.client(s, ca);
    let mut b = cred.client(s, cb);
    let (ra, rb) = tokio::try_join!(a.allocate(), b.allocate())?;
    let (ra, rb) = (ra.relayed, rb.relayed);
    tokio::try_join!(a.create_permission(rb), b.create_permission(ra))?;
    tokio::try_join!(a.channel_bind(CHANNEL, rb), b.channel_bind(CHANNEL, ra))?;
    Ok((a, b))
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted.get(idx.min(sorted.len() - 1)).copied()
}

/// Summary of a round-trip run from RTTs in arrival order.
pub fn rtt_stats(rtts_ms: &[f64]) -> RttStats {
    let mut sorted = rtts_ms.to_vec();
    sorted.sort_by(f64::total_cmp);
    let jitter = if rtts_ms.len() >= 2 {
        let diffs: Vec<f64> = rtts_ms
            .windows(2)
            .map(|w| (w.get(1).unwrap_or(&0.0) - w.first().unwrap_or(&0.0)).abs())
            .collect();
        Some(diffs.iter().sum::<f64>() / diffs.len() as f64)
    } else {
        None
    };
    RttStats {
        p50: percentile(&sorted, 0.5),
        p95: percentile(&sorted, 0.95),
        max: sorted.last().copied(),
        jitter,
    }
}

/// The round trip; on success also the pair, for the throughput check and to release.
pub async fn round_trip(
    s: Arc<Settings>,
    url: IceUrl,
    cred: Credential,
    progress: Arc<Progress>,
) -> (RelayFact, Option<(TurnClient, TurnClient)>) {
    let line = progress.start(&format!(
        "relay round trip over {} ({} packets)",
        url.transport.word(),
        s.packets
    ));
    let start = Instant::now();
    let n = s.packets;
    let mut fact = RelayFact {
        transport: url.transport,
        outcome: Timed::new(Ok(()), Duration::ZERO),
        sent: 0,
        received: 0,
        loss_percent: 100.0,
        rtt: RttStats::default(),
    };
    let set_up = timed(s.timeout.saturating_mul(3), pair(&s, &url, &cred)).await;
    let (mut a, mut b) = match set_up.result {
        Ok(p) => p,
        Err(e) => {
            progress.finish(line, false, start.elapsed(), &e.to_string());
            fact.outcome = Timed::new(Err(e), set_up.took);
            return (fact, None);
        }
    };
    let run_end = Instant::now() + s.interval.saturating_mul(n) + s.timeout;
    let done = std::cell::Cell::new(false);
    // B echoes whatever arrives back through its channel, until A has everything or time is up.
    let echo = async {
        while !done.get() && Instant::now() < run_end {
            match timeout(Duration::from_millis(50), b.recv_data()).await {
                Ok(Ok((_, data))) => {
                    // A send that fails (the server stopped reading: `CheckError::WriteStalled`) ends the echo.
                    if b.send_channel(CHANNEL, &data).await.is_err() {
                        break;
                    }
                }
                Ok(Err(_)) => break,
                Err(_) => {}
            }
        }
    };
    let mut rtts: Vec<f64> = Vec::new();
    let mut sent_at: Vec<Option<Instant>> = vec![None; n as usize];
    let mut got = vec![false; n as usize];
    let drive = async {
        let mut next_send = Instant::now();
        let mut seq: u32 = 0;
        // A send failed (the server stopped reading, `CheckError::WriteStalled`): nothing more goes out, and what
        // went out may still come back until the run's end.
        let mut stalled = false;
        loop {
            let now = Instant::now();
            if seq < n && !stalled && now >= next_send {
                let mut payload = vec![0u8; 100];
                if let Some(head) = payload.get_mut(..4) {
                    head.copy_from_slice(&seq.to_be_bytes());
                }
                if let Some(slot) = sent_at.get_mut(seq as usize) {
                    *slot = Some(Instant::now());
                }
                if a.send_channel(CHANNEL, &payload).await.is_err() {
                    stalled = true;
                    continue;
                }
                seq += 1;
                next_send += s.interval;
                continue;
            }
            let sending = seq < n && !stalled;
            let all_back = got.iter().take(seq as usize).all(|g| *g);
            if (!sending && all_back) || now >= run_end {
                done.set(true);
                break;
            }
            let until = if sending { next_send } else { run_end };
            let Ok(Ok((_, data))) = timeout(until.saturating_duration_since(now), a.recv_data()).await else {
                continue;
            };
            let Some(&[h0, h1, h2, h3]) = data.get(..4) else {
                continue;
            };
            let k = u32::from_be_bytes([h0, h1, h2, h3]) as usize;
            if let (Some(Some(t)), Some(g)) = (sent_at.get(k), got.get_mut(k)) {
                if !*g {
                    *g = true;
                    rtts.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        seq
    };
    let (sent, ()) = tokio::join!(drive, echo);
    fact.sent = sent;
    fact.received = u32::try_from(rtts.len()).unwrap_or(u32::MAX);
    fact.loss_percent = if sent == 0 {
        100.0
    } else {
        100.0 * f64::from(sent - fact.received.min(sent)) / f64::from(sent)
    };
    fact.rtt = rtt_stats(&rtts);
    let ok = fact.received > 0;
    fact.outcome = Timed::new(
        if ok {
            Ok(())
        } else {
            Err(CheckError::Timeout(s.timeout))
        },
        start.elapsed(),
    );
    let detail = format!(
        "{}/{} back, loss {:.1} %, RTT p50 {:.1} ms, jitter {:.1} ms",
        fact.received,
        fact.sent,
        fact.loss_percent,
        fact.rtt.p50.unwrap_or_default(),
        fact.rtt.jitter.unwrap_or_default()
    );
    progress.finish(line, ok, start.elapsed(), &detail);
    (fact, Some((a, b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats() {
        let r = rtt_stats(&[10.0, 12.0, 11.0, 30.0]);
        assert_eq!(r.p50, Some(12.0));
        assert_eq!(r.p95, Some(30.0));
        assert_eq!(r.max, Some(30.0));
        assert_eq!(r.jitter, Some((2.0 + 1.0 + 19.0) / 3.0));
        assert_eq!(rtt_stats(&[]), RttStats::default());
    }
}
