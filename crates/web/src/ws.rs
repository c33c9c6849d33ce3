//! One signaling socket: frames in go to the hub, frames the hub routes here go out, plus transport pings.

use std::net::IpAddr;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use signal::{CloseCode, Refusal};
use tokio::sync::mpsc;

use crate::hub::{Command, HubHandle, ToSocket, SOCKET_QUEUE};

pub(crate) async fn run(socket: WebSocket, hub: HubHandle, ip: IpAddr, ping_every: Duration) {
    let conn = hub.next_conn();
    let (tx, mut rx) = mpsc::channel(SOCKET_QUEUE);
    let (mut sink, mut stream) = socket.split();
    if let Err(refusal) = hub.connect(conn, ip, tx.clone()).await {
        let _ = sink.send(Message::Text(error_frame(&refusal).into())).await;
        let code = refusal.code.close_code().unwrap_or(CloseCode::TOO_MANY_CONNECTIONS);
        let _ = sink.send(close(code, refusal.code.as_str())).await;
        return;
    }

    let writer = tokio::spawn(async move {
        let mut ping = tokio::time::interval(ping_every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            let frame = tokio::select! {
                out = rx.recv() => match out {
                    Some(ToSocket::Text(text)) => Message::Text(text.as_ref().into()),
                    Some(ToSocket::Close(code, reason)) => {
                        let _ = sink.send(close(code, &reason)).await;
                        break;
                    }
                    // The hub dropped us: too slow, or shutting down.
                    None => {
                        let _ = sink.send(close(CloseCode::RATE_LIMITED, "too-slow")).await;
                        break;
                    }
                },
                _ = ping.tick() => Message::Ping(Default::default()),
            };
            if sink.send(frame).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });

    while let Some(frame) = stream.next().await {
        match frame {
            Ok(Message::Text(text)) => hub.send(Command::Text { conn, text }).await,
            Ok(Message::Binary(_)) => {
                hub.send(Command::Text {
                    conn,
                    text: "binary frame".into(),
                })
                .await
            }
            Ok(Message::Ping(_) | Message::Pong(_)) => hub.send(Command::Activity { conn }).await,
            Ok(Message::Close(_)) => break,
            Err(e) => {
                if is_too_large(&e) {
                    // Tell the writer; it sends the close frame (1009) before the socket goes.
                    let _ = tx.try_send(ToSocket::Close(CloseCode::TOO_LARGE, "too-large".into()));
                }
                tracing::debug!(conn, error = %e, "signaling socket read failed");
                break;
            }
        }
    }
    hub.send(Command::Closed { conn }).await;
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}

fn is_too_large(e: &axum::Error) -> bool {
    let text = e.to_string();
    text.contains("too long") || text.contains("too big") || text.contains("Space limit")
}

fn close(code: CloseCode, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: code.0,
        reason: reason.into(),
    }))
}

pub(crate) fn error_frame(refusal: &Refusal) -> String {
    serde_json::json!({"seq": 0, "type": "error", "code": refusal.code.as_str(), "message": refusal.message})
        .to_string()
}
