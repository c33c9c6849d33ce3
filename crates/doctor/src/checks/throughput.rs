//! Throughput through the relay pair, with `--throughput [SECONDS]`.

use std::time::Duration;

use tokio::time::{timeout, Instant};

use super::relay::CHANNEL;
use super::Settings;
use crate::client::TurnClient;
use crate::error::CheckError;
use crate::facts::{ThroughputFact, Timed};
use crate::progress::Progress;

/// Throughput by a paced ramp, not a flood: steps of `STEP` at 1, 2, 4, … Mbit/s (1000-byte ChannelData packets
/// sent on a 1 ms tick, each tagged with its step), until a step loses more than `MAX_LOSS` or the time is up. The
/// result is the fastest step that got through; flooding would only measure socket buffers overflowing.
pub async fn check(
    s: &Settings,
    a: &mut TurnClient,
    b: &mut TurnClient,
    secs: Duration,
    one_way: Duration,
    progress: &Progress,
) -> ThroughputFact {
    const STEP: Duration = Duration::from_millis(500);
    const MAX_LOSS: f64 = 5.0;
    const PAYLOAD: usize = 1000;
    let line = progress.start(&format!("throughput through the relay ({} s)", secs.as_secs_f64()));
    let start = Instant::now();
    // A step's last packets are counted for as long as they take to arrive: `one_way` (A → relay → B, half the relay
    // test's round trip) and 300 ms. With 300 ms alone, a satellite link (600 ms one way) read as 60 % loss.
    let grace = s.timeout.min(Duration::from_millis(300)) + one_way;
    let (mut sent_total, mut received_total) = (0u64, 0u64);
    let (mut best_mbit, mut best_loss, mut last_loss) = (0.0f64, 0.0f64, 0.0f64);
    let mut rate_mbit = 1.0f64;
    let mut step_id = 0u8;
    // A write that stalled (the server stopped reading) ends the measurement: what is left of a frame half written
    // would garble the next step's.
    let mut stalled = false;
    while !stalled && start.elapsed() + STEP <= secs && rate_mbit <= 4096.0 {
        step_id = step_id.wrapping_add(1);
        let mut payload = [0x5au8; PAYLOAD];
        payload[0] = step_id;
        // Packets per 1 ms tick at this rate.
        let per_tick = rate_mbit * 1e6 / 8.0 / PAYLOAD as f64 / 1000.0;
        let step_end = Instant::now() + STEP;
        let (mut sent, mut received) = (0u64, 0u64);
        let sender = async {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut owed = 0.0f64;
            'step: while Instant::now() < step_end {
                tick.tick().await;
                owed += per_tick;
                while owed >= 1.0 {
                    owed -= 1.0;
                    match a.send_channel(CHANNEL, &payload).await {
                        Ok(()) => sent += 1,
                        // The server stopped reading: each send would wait its whole limit.
                        Err(CheckError::WriteStalled(_)) => {
                            stalled = true;
                            break 'step;
                        }
                        Err(_) => {}
                    }
                }
            }
        };
        let receiver = async {
            let recv_end = step_end + grace;
            while let Some(left) = recv_end.checked_duration_since(Instant::now()) {
                match timeout(left, b.recv_data()).await {
                    Ok(Ok((_, data))) if data.first() == Some(&step_id) => received += 1,
                    Ok(Ok(_)) => {} // a straggler of the previous step
                    _ => break,
                }
            }
        };
        tokio::join!(sender, receiver);
        sent_total += sent * PAYLOAD as u64;
        received_total += received * PAYLOAD as u64;
        let loss = if sent == 0 {
            100.0
        } else {
            100.0 * sent.saturating_sub(received) as f64 / sent as f64
        };
        last_loss = loss;
        if loss > MAX_LOSS {
            break;
        }
        best_mbit = received as f64 * PAYLOAD as f64 * 8.0 / STEP.as_secs_f64() / 1e6;
        best_loss = loss;
        rate_mbit *= 2.0;
    }
    let took = start.elapsed().as_secs_f64();
    let ok = best_mbit > 0.0;
    let detail = if ok {
        format!("{best_mbit:.1} Mbit/s sustained (loss {best_loss:.1} %); the next step lost {last_loss:.1} %")
    } else {
        format!("not even 1 Mbit/s got through (loss {last_loss:.1} %)")
    };
    progress.finish(line, ok, start.elapsed(), &detail);
    ThroughputFact {
        outcome: Timed::new(
            if ok { Ok(()) } else { Err(CheckError::Timeout(secs)) },
            start.elapsed(),
        ),
        seconds: took,
        bytes_sent: sent_total,
        bytes_received: received_total,
        mbit_per_s: best_mbit,
        loss_percent: best_loss,
    }
}
