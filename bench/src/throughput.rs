//! `throughput`: channels of `members` users, each on its own socket with
//! its channel entered; `writers` per channel write, either as fast as
//! their replies come back (`window` requests in flight) or paced to a
//! total of `rate` messages/s. Every receiver records write → delivered
//! latency.

use crate::client::{Client, Ws, enter_all, make_channel, micros_since};
use crate::frame::Frame;
use anyhow::bail;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::Message;

/// How long receivers keep reading after the writers stop.
const GRACE: Duration = Duration::from_secs(2);

#[derive(clap::Args, Clone, Copy)]
pub struct Load {
    /// Channels.
    #[arg(long, default_value_t = 20)]
    pub channels: usize,
    /// Members per channel (each on its own socket, channel entered).
    #[arg(long, default_value_t = 10)]
    pub members: usize,
    /// Writers per channel.
    #[arg(long, default_value_t = 10)]
    pub writers: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Requests each writer keeps in flight at most.
    #[arg(long, default_value_t = 1)]
    pub window: usize,
    /// Total messages/s, spread over the writers (0: as fast as replies
    /// come back).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
}

/// What every socket adds up.
#[derive(Default)]
struct Totals {
    written: AtomicU64,
    delivered: AtomicU64,
    /// Paced sends skipped because the window was full.
    skipped: AtomicU64,
}

pub async fn run(client: &Client, prefix: &str, load: Load) -> anyhow::Result<Value> {
    let started = Instant::now();
    let mut all = Vec::new();
    for c in 0..load.channels {
        let names: Vec<String> = (0..load.members)
            .map(|m| format!("{prefix}{c}x{m}"))
            .collect();
        let mut sockets = Vec::with_capacity(names.len());
        for token in client.users(&names).await? {
            sockets.push(client.connect(&token).await?);
        }
        let channel = make_channel(&mut sockets, &names[1], &format!("load {c}")).await?;
        enter_all(&mut sockets, channel).await?;
        all.push((channel, sockets));
    }
    eprintln!(
        "set up {} channels × {} members in {:.1}s",
        load.channels,
        load.members,
        started.elapsed().as_secs_f64()
    );
    let total_writers = load.channels * load.writers.min(load.members);
    let period =
        (load.rate > 0.0).then(|| Duration::from_secs_f64(total_writers as f64 / load.rate));
    let epoch = Instant::now();
    let stop_at = epoch + Duration::from_secs(load.seconds);
    let totals = Arc::new(Totals::default());
    let latencies = Arc::new(Mutex::new(Latencies {
        delivered: crate::histogram()?,
        acked: crate::histogram()?,
    }));
    let mut tasks = tokio::task::JoinSet::new();
    let mut writer_index = 0u32;
    for (channel_id, sockets) in all {
        for (m, ws) in sockets.into_iter().enumerate() {
            let role = if m < load.writers {
                writer_index += 1;
                // Paced writers start spread over one period, not in step.
                let offset =
                    period.map(|p| p.mul_f64(f64::from(writer_index) / total_writers as f64));
                Role::Writer {
                    pacing: period.zip(offset),
                }
            } else {
                Role::Reader
            };
            let latencies = latencies.clone();
            let totals = totals.clone();
            let socket = Socket {
                channel_id,
                member: m,
                window: load.window.max(1),
                epoch,
                stop_at,
            };
            tasks.spawn(async move { socket.run(ws, role, &totals, &latencies).await });
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let seconds = load.seconds as f64;
    let lat = latencies.lock().unwrap_or_else(PoisonError::into_inner);
    let written = totals.written.load(Ordering::Relaxed);
    let delivered = totals.delivered.load(Ordering::Relaxed);
    Ok(json!({
        "channels": load.channels, "members": load.members, "writers": total_writers,
        "window": load.window, "target_rate": load.rate, "seconds": load.seconds,
        "messages": written, "messages_per_s": (written as f64 / seconds).round(),
        "deliveries": delivered, "deliveries_per_s": (delivered as f64 / seconds).round(),
        "paced_sends_skipped": totals.skipped.load(Ordering::Relaxed),
        "latency_ms": crate::latency_json(&lat.delivered),
        "acked_latency_ms": crate::latency_json(&lat.acked),
    }))
}

/// The latencies every socket records into as they come, under a lock
/// held for one record: two histograms for the run, not two per socket,
/// because a socket's own would be made as the load starts, and making
/// hundreds of them keeps the generator from reading any socket for tens
/// of milliseconds.
struct Latencies {
    /// Write → delivered, at every receiver.
    delivered: Histogram<u64>,
    /// Write → acknowledged (stored), at the writer: the part of the
    /// delivered latency spent before the relay takes the message.
    acked: Histogram<u64>,
}

enum Role {
    /// Writes; paced: (period, offset of the first write).
    Writer {
        pacing: Option<(Duration, Duration)>,
    },
    Reader,
}

struct Socket {
    channel_id: i64,
    member: usize,
    window: usize,
    epoch: Instant,
    stop_at: Instant,
}

impl Socket {
    /// Writers write until `stop_at` and wait for their replies; everyone
    /// records the latency of the `message` pushes it gets (content = send
    /// time) until `stop_at` + [`GRACE`].
    async fn run(
        self,
        mut ws: Ws,
        role: Role,
        totals: &Totals,
        latencies: &Mutex<Latencies>,
    ) -> anyhow::Result<()> {
        let mut next_id: u64 = 100;
        // Send times of the writes in flight: the gateway answers a
        // socket's requests in order.
        let mut in_flight = VecDeque::new();
        let since = |sent: u64| micros_since(self.epoch).saturating_sub(sent).max(1);
        let locked = || latencies.lock().unwrap_or_else(PoisonError::into_inner);
        let end = self.stop_at + GRACE;
        let (is_writer, mut ticker) = match role {
            Role::Writer { pacing } => (
                true,
                pacing.map(|(period, offset)| {
                    let mut t = tokio::time::interval_at((self.epoch + offset).into(), period);
                    t.set_missed_tick_behavior(MissedTickBehavior::Skip);
                    t
                }),
            ),
            Role::Reader => (false, None),
        };
        loop {
            let now = Instant::now();
            let writing = is_writer && now < self.stop_at;
            if now >= end || (is_writer && !writing && in_flight.is_empty()) {
                break;
            }
            if writing && ticker.is_none() {
                while in_flight.len() < self.window {
                    in_flight.push_back(self.write(&mut ws, &mut next_id).await?);
                }
            }
            let tick = async {
                match ticker.as_mut() {
                    Some(t) if writing => t.tick().await,
                    _ => std::future::pending().await,
                }
            };
            let next = tokio::select! {
                _ = tick => {
                    if in_flight.len() < self.window {
                        in_flight.push_back(self.write(&mut ws, &mut next_id).await?);
                    } else {
                        totals.skipped.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
                r = tokio::time::timeout(Duration::from_millis(200), ws.next()) => r,
            };
            let Ok(next) = next else { continue };
            let Some(msg) = next else { break };
            let text = match msg? {
                Message::Text(text) => text,
                // The gateway closes a socket that fell 256 pushes behind
                // (or broke a rule): a run that loses one is not measured.
                Message::Close(frame) => bail!("natter closed the socket: {frame:?}"),
                _ => continue,
            };
            let frame = Frame::parse(&text)?;
            match frame.kind.as_ref() {
                "reply" => {
                    if let Some(sent) = in_flight.pop_front() {
                        let took = since(sent);
                        locked().acked.record(took)?;
                    }
                    if Instant::now() <= self.stop_at + Duration::from_millis(50) {
                        totals.written.fetch_add(1, Ordering::Relaxed);
                    }
                }
                "error" => bail!("write failed: {text}"),
                "message" => {
                    if let Some(sent) = frame.sent_micros() {
                        let took = since(sent);
                        locked().delivered.record(took)?;
                        totals.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Sends one write: its send time, in µs since the epoch.
    async fn write(&self, ws: &mut Ws, next_id: &mut u64) -> anyhow::Result<u64> {
        let sent = micros_since(self.epoch);
        let frame = json!({
            "id": *next_id, "type": "write_message", "channel_id": self.channel_id,
            "client_msg_id": format!("{}-{}-{}", self.channel_id, self.member, next_id),
            "content": sent.to_string(),
        });
        *next_id += 1;
        ws.send(Message::text(frame.to_string())).await?;
        Ok(sent)
    }
}
