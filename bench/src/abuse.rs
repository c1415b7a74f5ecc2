//! Hostile clients for bench/abuse: `junk` opens sockets (one user each)
//! that keep a request in flight and flood junk frames behind it; `logins`
//! sends many logins of unknown names at once. Both print what the server
//! answered; the script reads the server's memory.

use crate::client::Client;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Each socket sends a request that is forwarded to the message service
/// (when none runs, it stays in flight for the request timeout), then
/// junk frames as fast as the socket takes them, again and again; a
/// reader task drains what the server answers. Reports how the sockets
/// ended and how many frames were sent and answered.
pub async fn junk(
    client: &Client,
    prefix: &str,
    sockets: usize,
    seconds: u64,
) -> anyhow::Result<Value> {
    let mut opened = Vec::with_capacity(sockets);
    for i in 0..sockets {
        let token = client.user(&format!("{prefix}junk{i}")).await?;
        opened.push(client.connect(&token).await?);
    }
    let stop_at = Instant::now() + Duration::from_secs(seconds);
    let sent = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for ws in opened {
        let (sent, answered) = (sent.clone(), answered.clone());
        tasks.spawn(async move {
            let (mut tx, mut rx) = ws.split();
            let reader = tokio::spawn(async move {
                let mut close = None;
                while let Some(Ok(msg)) = rx.next().await {
                    match msg {
                        Message::Text(_) => {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        Message::Close(frame) => close = frame.map(|f| u16::from(f.code)),
                        _ => {}
                    }
                }
                close
            });
            let forwarded = json!({"id": 1, "type": "fetch_channels"}).to_string();
            'flood: while Instant::now() < stop_at {
                if tx.send(Message::text(forwarded.clone())).await.is_err() {
                    break;
                }
                for _ in 0..1000 {
                    if tx.feed(Message::text("junk")).await.is_err() {
                        break 'flood;
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                if tx.flush().await.is_err() {
                    break;
                }
            }
            let _ = tx.close().await;
            tokio::time::timeout(Duration::from_secs(5), reader)
                .await
                .ok()
                .and_then(Result::ok)
                .flatten()
        });
    }
    let mut closes: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    while let Some(r) = tasks.join_next().await {
        let code = r?.map_or_else(|| "none".to_owned(), |c| c.to_string());
        *closes.entry(code).or_default() += 1;
    }
    Ok(json!({
        "junk_frames_sent": sent.load(Ordering::Relaxed),
        "answers": answered.load(Ordering::Relaxed),
        "server_close_codes": closes,
    }))
}

/// Sends `concurrent` logins of distinct unknown (well-formed) usernames
/// at once: how many got each status.
pub async fn logins(client: &Client, prefix: &str, concurrent: usize) -> anyhow::Result<Value> {
    let started = Instant::now();
    let attempts = (0..concurrent).map(|i| {
        let request = client
            .http
            .post(format!("{}/api/v1/auth/login", client.auth_url))
            .json(
                &json!({"username": format!("{prefix}ghost{i}"), "password": "not-the-password"}),
            );
        async move { request.send().await.map(|r| r.status().as_u16()) }
    });
    let mut statuses: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for status in futures::future::join_all(attempts).await {
        let key = status.map_or_else(|e| format!("error: {e}"), |s| s.to_string());
        *statuses.entry(key).or_default() += 1;
    }
    Ok(json!({
        "logins": concurrent,
        "seconds": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        "statuses": statuses,
    }))
}
