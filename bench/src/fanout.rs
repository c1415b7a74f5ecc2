//! `fanout`: one channel of `members` receivers, every one with a socket
//! that entered it, and one writer paced at `rate` messages/s. Against
//! natter, or (`--bare`) against `natter-ceiling-ws`, the bare
//! tokio-tungstenite broadcast server, where every socket simply gets
//! every frame any socket sends. Only every n-th receiver decodes its
//! frames and records latency (`--sample` of them); the others count
//! frames, so that the generator's one core is not what is measured.

use crate::client::{Client, Ws, enter_all, make_channel, micros_since};
use crate::frame::Frame;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::Message;

/// How long receivers keep reading after the writer stops.
const GRACE: Duration = Duration::from_secs(2);
/// Sockets the writer sends over, in turn: the gateway runs one request
/// per socket at a time and refuses a socket's 129th waiting one, so one
/// socket could not carry 250 writes/s once a write takes over 4 ms.
const WRITER_SOCKETS: usize = 16;
/// Writes one writer socket has unanswered at most.
const WRITER_WINDOW: u64 = 64;

#[derive(clap::Args, Clone, Copy)]
pub struct Fanout {
    /// Receivers (members with the channel entered, besides the writer).
    #[arg(long, default_value_t = 2000)]
    pub members: usize,
    /// Messages/s the writer sends.
    #[arg(long, default_value_t = 250.0)]
    pub rate: f64,
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Receivers that decode frames and record latency.
    #[arg(long, default_value_t = 100)]
    pub sample: usize,
    /// Target natter-ceiling-ws (no auth, no channel) instead of natter.
    #[arg(long)]
    pub bare: bool,
}

pub async fn run(client: &Client, prefix: &str, f: Fanout) -> anyhow::Result<Value> {
    let started = Instant::now();
    let (writer, receivers) = if f.bare {
        let mut sockets = Vec::with_capacity(f.members + WRITER_SOCKETS);
        for _ in 0..f.members + WRITER_SOCKETS {
            sockets.push(client.connect_to(&client.ws_url, None).await?);
        }
        let writers = sockets.split_off(f.members);
        (
            Writer {
                sockets: writers,
                channel_id: None,
            },
            sockets,
        )
    } else {
        let names: Vec<String> = (0..=f.members).map(|m| format!("{prefix}f{m}")).collect();
        let tokens = client.users(&names).await?;
        let mut setup = Vec::with_capacity(names.len());
        for token in &tokens {
            setup.push(client.connect(token).await?);
        }
        let channel = make_channel(&mut setup, &names[1], "fanout").await?;
        // The setup sockets were not read while thousands joined: their
        // queues may hold member_joined notices by now. Fresh sockets
        // start clean.
        drop(setup);
        let mut sockets = Vec::with_capacity(names.len());
        for token in &tokens {
            sockets.push(client.connect(token).await?);
        }
        enter_all(&mut sockets[1..], channel).await?;
        drop(sockets.remove(0));
        let mut writers = Vec::with_capacity(WRITER_SOCKETS);
        for _ in 0..WRITER_SOCKETS {
            writers.push(client.connect(&tokens[0]).await?);
        }
        (
            Writer {
                sockets: writers,
                channel_id: Some(channel),
            },
            sockets,
        )
    };
    eprintln!(
        "fanout: set up {} receivers in {:.1}s",
        receivers.len(),
        started.elapsed().as_secs_f64()
    );
    let epoch = Instant::now();
    let stop_at = epoch + Duration::from_secs(f.seconds);
    let delivered = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicU64::new(0));
    // One histogram that the sampled receivers record into as frames come
    // (a lock held for one record), not one per receiver: made as the load
    // starts, thousands of them keep the generator from reading any socket
    // for a good part of a second.
    let latency = Arc::new(Mutex::new(crate::histogram()?));
    let every = (receivers.len() / f.sample.max(1)).max(1);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, ws) in receivers.into_iter().enumerate() {
        let (delivered, closed, latency) = (delivered.clone(), closed.clone(), latency.clone());
        let sampled = i % every == 0;
        tasks.spawn(async move {
            receive(ws, sampled, epoch, stop_at, &delivered, &closed, &latency).await
        });
    }
    let (sent, acked, skipped) = writer.run(f.rate, epoch, stop_at).await?;
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let h = latency.lock().unwrap_or_else(PoisonError::into_inner);
    let delivered = delivered.load(Ordering::Relaxed);
    let seconds = f.seconds as f64;
    Ok(json!({
        "members": f.members, "target_rate": f.rate, "seconds": f.seconds, "bare": f.bare,
        "sent": sent, "acked": acked, "skipped": skipped, "messages_per_s": (sent as f64 / seconds).round(),
        "deliveries": delivered, "deliveries_per_s": (delivered as f64 / seconds).round(),
        "expected_deliveries": sent * f.members as u64,
        "sampled_receivers": f.members.div_ceil(every),
        "receivers_closed": closed.load(Ordering::Relaxed),
        "latency_ms": crate::latency_json(&h),
    }))
}

/// Counts message frames until `stop_at` + [`GRACE`]; a sampled receiver
/// also decodes them and records write → delivered latency.
async fn receive(
    mut ws: Ws,
    sampled: bool,
    epoch: Instant,
    stop_at: Instant,
    delivered: &AtomicU64,
    closed: &AtomicU64,
    latency: &Mutex<Histogram<u64>>,
) -> anyhow::Result<()> {
    let mut count = 0;
    // One deadline for the whole read, not a timer per frame: at 250
    // frames/s on each of 2,000 sockets, arming and dropping a timer per
    // frame is a cost of the generator's one core.
    let end = tokio::time::Instant::from(stop_at + GRACE);
    let read = async {
        while let Some(msg) = ws.next().await {
            // A close is natter's answer to a receiver that fell behind (a
            // slow consumer): counted, not an error of the run.
            let Ok(msg) = msg else {
                closed.fetch_add(1, Ordering::Relaxed);
                break;
            };
            if let Message::Close(_) = msg {
                closed.fetch_add(1, Ordering::Relaxed);
                break;
            }
            let Message::Text(text) = msg else { continue };
            if sampled {
                let frame = Frame::parse(&text)?;
                if frame.kind == "message"
                    && let Some(sent) = frame.sent_micros()
                {
                    let took = micros_since(epoch).saturating_sub(sent).max(1);
                    latency
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .record(took)?;
                    count += 1;
                }
            } else if text.contains("\"message\"") {
                count += 1;
            }
        }
        anyhow::Ok(())
    };
    if let Ok(outcome) = tokio::time::timeout_at(end, read).await {
        outcome?;
    }
    delivered.fetch_add(count, Ordering::Relaxed);
    Ok(())
}

struct Writer {
    /// The writer's sockets, used in turn.
    sockets: Vec<Ws>,
    /// natter's channel; `None` against the bare server.
    channel_id: Option<i64>,
}

impl Writer {
    /// Sends at `rate` until `stop_at`, over its sockets in turn, each with
    /// at most [`WRITER_WINDOW`] requests unanswered (a send that finds it
    /// full is skipped and counted), while readers drain what comes back
    /// (natter's replies; the bare server's echo): (sent, acked, skipped).
    async fn run(
        self,
        rate: f64,
        epoch: Instant,
        stop_at: Instant,
    ) -> anyhow::Result<(u64, u64, u64)> {
        let end = tokio::time::Instant::from(stop_at + GRACE);
        let mut sinks = Vec::with_capacity(self.sockets.len());
        let mut readers = tokio::task::JoinSet::new();
        for ws in self.sockets {
            let (tx, mut rx) = ws.split();
            let in_flight = Arc::new(AtomicU64::new(0));
            sinks.push((tx, in_flight.clone()));
            readers.spawn(async move {
                let mut acked = 0u64;
                while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(end, rx.next()).await {
                    if let Message::Text(text) = msg
                        && text.contains("\"reply\"")
                    {
                        acked += 1;
                        in_flight.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                acked
            });
        }
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let (mut sent, mut skipped) = (0u64, 0u64);
        let mut turn = 0;
        while Instant::now() < stop_at {
            ticker.tick().await;
            turn = (turn + 1) % sinks.len();
            let (tx, in_flight) = &mut sinks[turn];
            if self.channel_id.is_some() && in_flight.load(Ordering::Relaxed) >= WRITER_WINDOW {
                skipped += 1;
                continue;
            }
            let content = micros_since(epoch).to_string();
            let frame = match self.channel_id {
                Some(channel_id) => json!({
                    "id": sent + 100, "type": "write_message", "channel_id": channel_id,
                    "client_msg_id": format!("fanout-{sent}"), "content": content,
                }),
                None => json!({"type": "message", "content": content}),
            };
            in_flight.fetch_add(1, Ordering::Relaxed);
            tx.send(Message::text(frame.to_string())).await?;
            sent += 1;
        }
        let mut acked = 0;
        while let Some(r) = readers.join_next().await {
            acked += r?;
        }
        Ok((sent, acked, skipped))
    }
}
