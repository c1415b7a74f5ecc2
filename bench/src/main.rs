//! `natter-load`: drives a running natter through its public API (auth over
//! HTTP, the gateway over WebSockets) and reports what a user would feel.
//!
//! `throughput`: users in channels of `--members`, every one on its own
//! socket with its channel entered; `--writers` of them write as fast as
//! their replies come back, each message carrying its send time; every
//! receiver records write → delivered latency. Prints messages/s stored
//! (acknowledged), deliveries/s and latency percentiles.
//!
//! `idle`: opens `--sockets` authenticated idle sockets and holds them for
//! `--hold` seconds, so a script can read the gateway's memory before and
//! after.
//!
//! `junk` and `logins` play a hostile client for bench/abuse: `junk` opens
//! `--sockets` sockets (one user each) that keep a request in flight and
//! flood junk frames behind it; `logins` sends `--concurrent` logins of
//! unknown names at once. Both print what the server answered; the script
//! reads the server's memory.
//!
//! The server must allow the load: run it with a high `NATTER_WS_RATE`
//! (bench/run does).

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

#[derive(Parser)]
#[command(name = "natter-load", about = "Load generator for natter")]
struct Args {
    /// Auth base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    auth_url: String,
    /// Gateway WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:8090/ws/v1/message")]
    ws_url: String,
    /// Prefix of the usernames this run registers (runs must not clash).
    #[arg(long, default_value = "load")]
    prefix: String,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Messages/s and write → delivered latency.
    Throughput {
        /// Channels.
        #[arg(long, default_value_t = 10)]
        channels: usize,
        /// Members per channel (each on its own socket, channel entered).
        #[arg(long, default_value_t = 10)]
        members: usize,
        /// Writers per channel.
        #[arg(long, default_value_t = 4)]
        writers: usize,
        /// Seconds of load.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Requests each writer keeps in flight on its socket.
        #[arg(long, default_value_t = 8)]
        window: usize,
    },
    /// Delete a run's JetStream streams (bench/run calls it on exit).
    Cleanup {
        /// NATS URL.
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats_url: String,
        /// The run's NATTER_NAMESPACE.
        #[arg(long)]
        namespace: String,
    },
    /// Sockets that flood junk frames behind a request in flight.
    Junk {
        /// How many sockets (each of its own user).
        #[arg(long, default_value_t = 50)]
        sockets: usize,
        /// Seconds of flooding.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Concurrent logins of unknown usernames.
    Logins {
        /// How many at once.
        #[arg(long, default_value_t = 300)]
        concurrent: usize,
    },
    /// Hold idle authenticated sockets.
    Idle {
        /// How many.
        #[arg(long, default_value_t = 10_000)]
        sockets: usize,
        /// Seconds to hold them.
        #[arg(long, default_value_t = 20)]
        hold: u64,
    },
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Client {
    http: reqwest::Client,
    auth_url: String,
    ws_url: String,
}

impl Client {
    async fn user(&self, name: &str) -> anyhow::Result<String> {
        let creds = json!({"username": name, "password": "load-test-password"});
        let r = self
            .http
            .post(format!("{}/api/v1/auth/register", self.auth_url))
            .json(&creds)
            .send()
            .await?;
        if !r.status().is_success() && r.status() != 409 {
            bail!("register {name}: {}", r.status());
        }
        let r = self
            .http
            .post(format!("{}/api/v1/auth/login", self.auth_url))
            .json(&creds)
            .send()
            .await?;
        let body: Value = r.json().await?;
        body["token"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("login {name}: {body}"))
    }

    async fn connect(&self, token: &str) -> anyhow::Result<Ws> {
        let mut request = self.ws_url.as_str().into_client_request()?;
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        Ok(tokio_tungstenite::connect_async(request).await?.0)
    }
}

/// Sends one request and waits for its answer (pushes are skipped).
async fn call(ws: &mut Ws, id: u64, mut frame: Value) -> anyhow::Result<Value> {
    frame["id"] = json!(id);
    ws.send(Message::text(frame.to_string())).await?;
    while let Some(msg) = ws.next().await {
        if let Message::Text(text) = msg? {
            let v: Value = serde_json::from_str(&text)?;
            if v["id"] == json!(id) {
                if v["type"] == "reply" {
                    return Ok(v["result"].clone());
                }
                bail!("request {frame} failed: {v}");
            }
        }
    }
    bail!("socket closed")
}

/// Makes one channel of `members` users all connected to the first, every
/// one with a socket that has entered it.
async fn make_channel(
    client: &Client,
    prefix: &str,
    index: usize,
    members: usize,
) -> anyhow::Result<(i64, Vec<Ws>)> {
    let names: Vec<String> = (0..members)
        .map(|m| format!("{prefix}{index}x{m}"))
        .collect();
    let mut sockets = Vec::with_capacity(members);
    for name in &names {
        let token = client.user(name).await?;
        sockets.push(client.connect(&token).await?);
    }
    let code = call(
        &mut sockets[0],
        1,
        json!({"type": "fetch_user_invite_code"}),
    )
    .await?["invite_code"]
        .clone();
    for ws in sockets.iter_mut().skip(1) {
        call(ws, 1, json!({"type": "invite", "invite_code": code})).await?;
    }
    for name in names.iter().skip(1) {
        call(
            &mut sockets[0],
            2,
            json!({"type": "accept", "username": name}),
        )
        .await?;
    }
    let created = call(
        &mut sockets[0],
        3,
        json!({"type": "create", "title": format!("load {index}"), "usernames": names[1..].to_vec()}),
    )
    .await?;
    let channel = created["channel_id"].as_i64().context("channel id")?;
    for ws in &mut sockets {
        call(ws, 4, json!({"type": "enter", "channel_id": channel})).await?;
    }
    Ok((channel, sockets))
}

async fn run_throughput(
    client: &Client,
    prefix: &str,
    channels: usize,
    members: usize,
    writers: usize,
    seconds: u64,
    window: usize,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut all = Vec::new();
    for c in 0..channels {
        all.push(make_channel(client, prefix, c, members).await?);
    }
    eprintln!(
        "set up {channels} channels × {members} members in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let epoch = Instant::now();
    let stop_at = epoch + Duration::from_secs(seconds);
    let written = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let latency = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let mut tasks = tokio::task::JoinSet::new();
    for (channel_id, sockets) in all {
        for (m, ws) in sockets.into_iter().enumerate() {
            let is_writer = m < writers;
            let (written, delivered, latency) =
                (written.clone(), delivered.clone(), latency.clone());
            tasks.spawn(async move {
                socket_loop(
                    ws, channel_id, m, is_writer, window, epoch, stop_at, &written, &delivered,
                    &latency,
                )
                .await
            });
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let elapsed = seconds as f64;
    let h = latency.lock().await;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{{\"messages\": {}, \"messages_per_s\": {:.0}, \"deliveries\": {}, \"deliveries_per_s\": {:.0}, \
         \"latency_ms\": {{\"p50\": {:.2}, \"p90\": {:.2}, \"p99\": {:.2}, \"max\": {:.2}}}}}",
        written.load(Ordering::Relaxed),
        written.load(Ordering::Relaxed) as f64 / elapsed,
        delivered.load(Ordering::Relaxed),
        delivered.load(Ordering::Relaxed) as f64 / elapsed,
        ms(0.5),
        ms(0.9),
        ms(0.99),
        h.max() as f64 / 1000.0,
    );
    Ok(())
}

/// One socket: writers keep `window` writes in flight until `stop_at`;
/// everyone records the latency of `message` pushes (content = send time
/// in µs since `epoch`).
#[expect(
    clippy::too_many_arguments,
    reason = "one socket's whole configuration, passed once to a spawned task; a struct would only be unpacked again"
)]
async fn socket_loop(
    mut ws: Ws,
    channel_id: i64,
    member: usize,
    is_writer: bool,
    window: usize,
    epoch: Instant,
    stop_at: Instant,
    written: &AtomicU64,
    delivered: &AtomicU64,
    latency: &Mutex<Histogram<u64>>,
) -> anyhow::Result<()> {
    let mut next_id: u64 = 100;
    let mut in_flight = 0usize;
    let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let drain_until = stop_at + Duration::from_secs(3);
    loop {
        let now = Instant::now();
        if is_writer && now < stop_at {
            while in_flight < window {
                let sent = epoch.elapsed().as_micros() as u64;
                let frame = json!({
                    "id": next_id, "type": "write_message", "channel_id": channel_id,
                    "client_msg_id": format!("{channel_id}-{member}-{next_id}"),
                    "content": sent.to_string(),
                });
                next_id += 1;
                in_flight += 1;
                ws.send(Message::text(frame.to_string())).await?;
            }
        }
        if now >= drain_until || (now >= stop_at && in_flight == 0 && !is_writer) {
            break;
        }
        let Ok(next) = tokio::time::timeout(Duration::from_millis(200), ws.next()).await else {
            if now >= stop_at && in_flight == 0 {
                break;
            }
            continue;
        };
        let Some(msg) = next else { break };
        let Message::Text(text) = msg? else { continue };
        let v: Value = serde_json::from_str(&text)?;
        match v["type"].as_str() {
            Some("reply") => {
                in_flight -= 1;
                if Instant::now() <= stop_at + Duration::from_millis(50) {
                    written.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some("error") => bail!("write failed: {v}"),
            Some("message") => {
                if let Some(sent) = v["content"].as_str().and_then(|s| s.parse::<u64>().ok()) {
                    let now = epoch.elapsed().as_micros() as u64;
                    local.record(now.saturating_sub(sent).max(1))?;
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {}
        }
    }
    latency.lock().await.add(&local)?;
    Ok(())
}

async fn run_idle(client: &Client, prefix: &str, sockets: usize, hold: u64) -> anyhow::Result<()> {
    let token = client.user(&format!("{prefix}idle")).await?;
    let mut held = Vec::with_capacity(sockets);
    let started = Instant::now();
    for i in 0..sockets {
        held.push(
            client
                .connect(&token)
                .await
                .with_context(|| format!("socket {i}"))?,
        );
    }
    println!(
        "{{\"sockets\": {sockets}, \"open_seconds\": {:.1}}}",
        started.elapsed().as_secs_f64()
    );
    eprintln!("holding {sockets} sockets for {hold}s");
    tokio::time::sleep(Duration::from_secs(hold)).await;
    Ok(())
}

/// Each socket sends a request that is forwarded to the message service
/// (when none runs, it stays in flight for the request timeout), then
/// junk frames as fast as the socket takes them, again and again; a
/// reader task drains what the server answers. Prints how the sockets
/// ended and how many frames were sent and answered.
async fn run_junk(
    client: &Client,
    prefix: &str,
    sockets: usize,
    seconds: u64,
) -> anyhow::Result<()> {
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
    println!(
        "{{\"junk_frames_sent\": {}, \"answers\": {}, \"server_close_codes\": {}}}",
        sent.load(Ordering::Relaxed),
        answered.load(Ordering::Relaxed),
        serde_json::to_string(&closes)?,
    );
    Ok(())
}

/// Sends `concurrent` logins of distinct unknown (well-formed) usernames
/// at once: prints how many got each status.
async fn run_logins(client: &Client, prefix: &str, concurrent: usize) -> anyhow::Result<()> {
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
    println!(
        "{{\"logins\": {concurrent}, \"seconds\": {:.1}, \"statuses\": {}}}",
        started.elapsed().as_secs_f64(),
        serde_json::to_string(&statuses)?,
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    // reqwest is built without a crypto provider of its own (see
    // natter_platform::tls).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client {
        http: reqwest::Client::new(),
        auth_url: args.auth_url,
        ws_url: args.ws_url,
    };
    match args.mode {
        Mode::Throughput {
            channels,
            members,
            writers,
            seconds,
            window,
        } => {
            run_throughput(
                &client,
                &args.prefix,
                channels,
                members,
                writers,
                seconds,
                window,
            )
            .await
        }
        Mode::Idle { sockets, hold } => run_idle(&client, &args.prefix, sockets, hold).await,
        Mode::Junk { sockets, seconds } => run_junk(&client, &args.prefix, sockets, seconds).await,
        Mode::Logins { concurrent } => run_logins(&client, &args.prefix, concurrent).await,
        Mode::Cleanup {
            nats_url,
            namespace,
        } => {
            let ns = natter_protocol::subjects::Namespace::new(&namespace);
            let js = async_nats::jetstream::new(async_nats::connect(&nats_url).await?);
            for stream in [ns.events_stream(), ns.dlq_stream(), ns.sessions_stream()] {
                let _ = js.delete_stream(stream).await;
            }
            Ok(())
        }
    }
}
