//! Sockets that only exist: `idle` holds authenticated sockets so a script
//! can read the server's memory before and after; `connect` measures how
//! many authenticated upgrades per second the gateway completes.

use crate::client::Client;
use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Opens `sockets` sockets (all of one user; none with `bare`) and holds
/// them for `hold` seconds. The script reads memory meanwhile.
pub async fn idle(
    client: &Client,
    prefix: &str,
    sockets: usize,
    hold: u64,
    bare: bool,
) -> anyhow::Result<Value> {
    let token = if bare {
        None
    } else {
        Some(client.user(&format!("{prefix}idle")).await?)
    };
    let started = Instant::now();
    let mut held = Vec::with_capacity(sockets);
    for i in 0..sockets {
        held.push(
            client
                .connect_to(&client.ws_url, token.as_deref())
                .await
                .with_context(|| format!("socket {i}"))?,
        );
    }
    let open_seconds = started.elapsed().as_secs_f64();
    eprintln!("holding {sockets} sockets for {hold}s");
    tokio::time::sleep(Duration::from_secs(hold)).await;
    Ok(json!({"sockets": sockets, "open_seconds": open_seconds}))
}

/// Opens `sockets` sockets with `concurrency` handshakes in flight and
/// reports upgrades/s (authenticated unless `bare`); all stay open until
/// the last is up, as they would in a reconnect wave.
pub async fn connect(
    client: &Client,
    prefix: &str,
    sockets: usize,
    concurrency: usize,
    bare: bool,
) -> anyhow::Result<Value> {
    let token = if bare {
        None
    } else {
        Some(client.user(&format!("{prefix}conn")).await?)
    };
    let started = Instant::now();
    let held: Vec<_> = futures::stream::iter(0..sockets)
        .map(|_| client.connect_to(&client.ws_url, token.as_deref()))
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    drop(held);
    Ok(json!({
        "sockets": sockets, "concurrency": concurrency, "bare": bare, "seconds": seconds,
        "upgrades_per_s": (sockets as f64 / seconds).round(),
    }))
}
