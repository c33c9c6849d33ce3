//! One signaling socket: frames in go to the hub, frames the hub routes here go out, plus transport pings.

use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use crate::hub::{HubHandle, ToSocket};
use crate::outbox::Outbox;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::SinkExt;
use signal::{CloseCode, Refusal};

pub(crate) async fn run(mut socket: WebSocket, hub: HubHandle, ip: IpAddr, ping_every: Duration) {
    let conn = hub.next_conn();
    let outbox = std::sync::Arc::new(Outbox::new(hub.queue_budget.clone()));
    let mut seat = match hub.connect(conn, ip, outbox.clone()).await {
        Ok(seat) => seat,
        Err(refusal) => {
            let _ = socket.send(Message::Text(error_frame(&refusal).into())).await;
            let code = refusal.code.close_code().unwrap_or(CloseCode::TOO_MANY_CONNECTIONS);
            let _ = socket.send(close(code, refusal.code.as_str())).await;
            return;
        }
    };

    // One task per socket, and the socket unsplit (idle sockets must be cheap: `split()` adds a shared lock and two
    // handles): it reads frames and hands them to the hub in place, writes what the hub routes here, and pings.
    // Writes are fed in a batch and flushed once, so a backlog costs one system call.
    let mut ping = tokio::time::interval(ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut closing: Option<(CloseCode, String)> = None;
    loop {
        tokio::select! {
            frame = socket.recv() => match frame {
                Some(Ok(Message::Text(text))) => hub.text(&mut seat, text).await,
                Some(Ok(Message::Binary(_))) => hub.binary(&seat).await,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => hub.activity(&seat).await,
                Some(Ok(Message::Close(_))) | None => break,
                Some(Err(e)) => {
                    if is_too_large(&e) {
                        closing = Some((CloseCode::TOO_LARGE, "too-large".into()));
                    }
                    tracing::debug!(conn = conn.get(), error = %e, "signaling socket read failed");
                    break;
                }
            },
            _ = outbox.readable() => {
                // A peer that takes nothing for a whole heartbeat interval does not read: stop waiting on it. The
                // timer is armed only when the write does not finish at once (arming one per batch was 8 % of a
                // relayed signal's instructions).
                let mut write = std::pin::pin!(write_queued(&mut socket, &outbox));
                let once = std::future::poll_fn(|cx| std::task::Poll::Ready(write.as_mut().poll(cx))).await;
                let written = match once {
                    std::task::Poll::Ready(done) => Ok(done),
                    std::task::Poll::Pending => tokio::time::timeout(ping_every, write).await,
                };
                match written {
                    Ok(Ok(None)) => {}
                    Ok(Ok(Some(close))) => {
                        closing = Some(close);
                        break;
                    }
                    Ok(Err(WriteFailed)) => break,
                    Err(_) => {
                        closing = Some((CloseCode::TOO_SLOW, "too-slow".into()));
                        break;
                    }
                }
            }
            _ = ping.tick() => {
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
        }
    }
    if let Some((code, reason)) = &closing {
        let _ = tokio::time::timeout(Duration::from_secs(2), socket.send(close(*code, reason))).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), socket.close()).await;
    // The hub forgets sockets it closed itself; telling it again is harmless.
    hub.closed(seat).await;
}

/// The socket could not be written to.
struct WriteFailed;

/// Feeds what is queued (at most 64 frames or 256 KiB, then comes back) and flushes once. `Some` is the close to send: the
/// hub's, or 4104 when the hub let go of a socket too slow to read.
async fn write_queued<S>(sink: &mut S, outbox: &Outbox) -> Result<Option<(CloseCode, String)>, WriteFailed>
where
    S: futures_util::Sink<Message> + Unpin,
{
    let (mut fed, mut fed_bytes) = (0usize, 0usize);
    let mut close = None;
    loop {
        match outbox.try_pop() {
            Ok(Some(ToSocket::Text(text))) => {
                // Zero-copy: the frame's bytes are shared with the hub's replay buffer.
                fed_bytes += text.len();
                let Ok(text) = axum::extract::ws::Utf8Bytes::try_from(text) else {
                    break;
                };
                sink.feed(Message::Text(text)).await.map_err(|_| WriteFailed)?;
                fed += 1;
                // A batch must be written within a heartbeat interval: 256 KiB in 10 s is a 26 KB/s link.
                if fed >= 64 || fed_bytes >= 256 * 1024 {
                    // More may be queued: come back after this flush.
                    outbox.wake();
                    break;
                }
            }
            Ok(Some(ToSocket::Close(code, reason))) => {
                close = Some((code, reason));
                break;
            }
            Ok(None) => break,
            // The hub let go of us: too slow (at shutdown its 4202 close came first).
            Err(()) => {
                close = Some((CloseCode::TOO_SLOW, "too-slow".into()));
                break;
            }
        }
    }
    sink.flush().await.map_err(|_| WriteFailed)?;
    Ok(close)
}

/// Was the read refused for size? A message or a frame over the limits set at the upgrade (`max_message_size`,
/// `max_frame_size`: tungstenite's capacity error), or a control frame over 125 bytes (RFC 6455 §5.5). Either is
/// closed with 1009.
fn is_too_large(e: &axum::Error) -> bool {
    use tungstenite::error::{Error, ProtocolError};
    let inner = std::error::Error::source(e).and_then(|inner| inner.downcast_ref::<Error>());
    matches!(
        inner,
        Some(Error::Capacity(_) | Error::Protocol(ProtocolError::ControlFrameTooBig))
    )
}

fn close(code: CloseCode, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: code.0,
        reason: reason.into(),
    }))
}

/// The refusal of a socket the hub never took (before any session): serde_json's order of keys (sorted), unlike the
/// hub's frames; kept as it is, since the bytes are part of the protocol clients see.
pub(crate) fn error_frame(refusal: &Refusal) -> String {
    serde_json::json!({"seq": 0, "type": "error", "code": refusal.code.as_str(), "message": refusal.message})
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::error::{CapacityError, Error, ProtocolError};

    #[test]
    fn only_a_size_error_closes_with_1009() {
        let too_long = Error::Capacity(CapacityError::MessageTooLong {
            size: 70_000,
            max_size: 65_536,
        });
        assert!(is_too_large(&axum::Error::new(too_long)));
        assert!(is_too_large(&axum::Error::new(Error::Protocol(
            ProtocolError::ControlFrameTooBig
        ))));
        for other in [
            Error::ConnectionClosed,
            Error::Protocol(ProtocolError::ResetWithoutClosingHandshake),
            Error::Io(std::io::Error::other("message too long")),
        ] {
            assert!(!is_too_large(&axum::Error::new(other)));
        }
        assert!(!is_too_large(&axum::Error::new(std::io::Error::other(
            "Space limit exceeded: too big"
        ))));
    }

    #[test]
    fn a_refused_socket_gets_its_error_with_seq_0() {
        let refusal = Refusal::new(signal::ErrorCode::TooManyConnections, "Too \"many\".");
        assert_eq!(
            error_frame(&refusal),
            r#"{"code":"too-many-connections","message":"Too \"many\".","seq":0,"type":"error"}"#
        );
    }
}
