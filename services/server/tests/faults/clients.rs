//! The suite's clients, written as a careful real client is (protocol
//! §2.3): a writer that re-sends an unanswered write with the same
//! `client_msg_id` until it is acknowledged, and receivers that show each
//! seq once, fill gaps with `fetch_messages`, and after losing their
//! socket reconnect on their own — to the other gateway first — and
//! resume from the last seq they showed. Each counts what the suite
//! judges: a delivery is *live* when it arrived as a pushed `message`,
//! *filled* when the receiver had to fetch it.

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Message, http};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// How long a client waits for an answer before it gives its socket up
/// (the gateway answers `unavailable` after its own 5 s).
const ANSWER_WAIT: Duration = Duration::from_secs(8);

/// A steady writer's pause between acknowledged writes.
const PACE: Duration = Duration::from_millis(50);

/// How long a receiver hears nothing before it checks for a tail it
/// missed, once the writer has stopped.
const TAIL_WAIT: Duration = Duration::from_secs(2);

/// Messages per `fetch_messages` page.
const PAGE: usize = 100;

/// Why a socket is given up.
#[derive(Debug)]
pub enum Lost {
    /// Closed, refused, or told to reconnect.
    Closed,
    /// No answer within [`ANSWER_WAIT`].
    Silent,
}

/// One connected socket: requests with fresh ids, pushes queued while a
/// request waits for its answer.
struct Socket {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    pushes: VecDeque<Value>,
}

impl Socket {
    async fn open(url: &str, token: &str) -> Option<Self> {
        let mut request = url.into_client_request().ok()?;
        request.headers_mut().insert(
            http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().ok()?,
        );
        let connect = tokio_tungstenite::connect_async(request);
        let (ws, _) = tokio::time::timeout(Duration::from_secs(3), connect)
            .await
            .ok()?
            .ok()?;
        Some(Self {
            ws,
            next_id: 1,
            pushes: VecDeque::new(),
        })
    }

    /// Sends a request and waits for its answer; an `unavailable` error
    /// is asked again after a moment, any other error is a bug.
    async fn ask(&mut self, kind: &str, fields: Value) -> Result<Value, Lost> {
        loop {
            let id = self.next_id;
            self.next_id += 1;
            let mut frame = fields.clone();
            frame["type"] = json!(kind);
            frame["id"] = json!(id);
            self.ws
                .send(Message::text(frame.to_string()))
                .await
                .map_err(|_| Lost::Closed)?;
            let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
            let answer = loop {
                let frame = self.frame(deadline).await?;
                match frame["type"].as_str() {
                    Some("reply" | "error") if frame["id"] == json!(id) => break frame,
                    Some("reply" | "error") => {}
                    _ => self.pushes.push_back(frame),
                }
            };
            if answer["type"] == "reply" {
                return Ok(answer["result"].clone());
            }
            assert_eq!(answer["code"], "unavailable", "{kind} failed: {answer}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The next push, queued or from the wire; `None` when nothing comes
    /// before `deadline`.
    async fn push(&mut self, deadline: tokio::time::Instant) -> Result<Option<Value>, Lost> {
        if let Some(push) = self.pushes.pop_front() {
            return Ok(Some(push));
        }
        loop {
            match self.frame(deadline).await {
                Ok(frame) if matches!(frame["type"].as_str(), Some("reply" | "error")) => {}
                Ok(frame) => return Ok(Some(frame)),
                Err(Lost::Silent) => return Ok(None),
                Err(lost) => return Err(lost),
            }
        }
    }

    async fn frame(&mut self, deadline: tokio::time::Instant) -> Result<Value, Lost> {
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| Lost::Silent)?;
            match next {
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(&text).map_err(|_| Lost::Closed);
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => return Err(Lost::Closed),
                Some(Ok(_)) => {}
            }
        }
    }
}

/// What a writer saw.
#[derive(Debug, Default)]
pub struct WriterReport {
    /// The seq of each acknowledged write, in the order written.
    pub seqs: Vec<i64>,
    /// The longest time between two acknowledgements.
    pub longest_stall: Duration,
    /// Sockets it lost.
    pub reconnects: usize,
}

/// Writes `<label> <n>` (client_msg_id `<label>-<n>`) to `channel` every
/// [`PACE`] until `stop`, then returns once no write is unanswered, so
/// that what it reports acknowledged is all that was stored.
pub async fn write(
    gateways: Vec<String>,
    token: String,
    channel: i64,
    label: String,
    stop: CancellationToken,
) -> WriterReport {
    let mut report = WriterReport::default();
    let mut gateway = 0;
    let mut last_ack = Instant::now();
    // A write sent and not answered must be answered before the writer
    // stops: it may have been stored.
    let mut pending = false;
    'connect: loop {
        if stop.is_cancelled() && !pending {
            break;
        }
        let Some(mut socket) = Socket::open(&gateways[gateway], &token).await else {
            gateway = (gateway + 1) % gateways.len();
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        loop {
            if stop.is_cancelled() && !pending {
                break 'connect;
            }
            let n = report.seqs.len() + 1;
            let fields = json!({
                "channel_id": channel,
                "client_msg_id": format!("{label}-{n}"),
                "content": format!("{label} {n}"),
            });
            pending = true;
            match socket.ask("write_message", fields).await {
                Ok(result) => {
                    pending = false;
                    report.seqs.push(result["seq"].as_i64().expect("a seq"));
                    report.longest_stall = report.longest_stall.max(last_ack.elapsed());
                    last_ack = Instant::now();
                    tokio::time::sleep(PACE).await;
                }
                Err(_) => {
                    report.reconnects += 1;
                    gateway = (gateway + 1) % gateways.len();
                    continue 'connect;
                }
            }
        }
    }
    report
}

/// What a receiver has shown so far, for the suite to watch while it runs.
#[derive(Debug, Default)]
pub struct Progress {
    /// It has entered the channel and caught up once.
    pub entered: bool,
    /// When each live delivery arrived.
    pub live_at: Vec<Instant>,
    /// Deliveries filled so far.
    pub filled: usize,
}

/// What a receiver saw.
#[derive(Debug, Default)]
pub struct ReceiverReport {
    /// The seqs it showed, in order.
    pub shown: Vec<i64>,
    /// Shown as they were pushed.
    pub live: usize,
    /// Shown after fetching them (a gap, or a reconnect).
    pub filled: usize,
    /// Pushed again after it had shown them (dropped).
    pub repeats: usize,
    /// Pushed after a later seq had been pushed and the gap filled: a live
    /// delivery out of order.
    pub out_of_order: usize,
    /// Sockets it lost.
    pub reconnects: usize,
}

/// One receiver's state across its sockets.
struct Receiver {
    channel: i64,
    report: ReceiverReport,
    /// Seqs filled because a later one was pushed first.
    gap_filled: HashSet<i64>,
    progress: Arc<Mutex<Progress>>,
}

impl Receiver {
    fn last(&self) -> i64 {
        self.report.shown.last().copied().unwrap_or(0)
    }

    fn show(&mut self, seq: i64, live: bool) {
        assert_eq!(seq, self.last() + 1, "a receiver shows seqs in order, once");
        self.report.shown.push(seq);
        if live {
            self.report.live += 1;
            let mut progress = self.progress.lock().expect("progress");
            progress.live_at.push(Instant::now());
        } else {
            self.report.filled += 1;
            self.progress.lock().expect("progress").filled += 1;
        }
    }

    /// Fetches what follows the last shown seq: up to `before` (a gap),
    /// or everything stored (a reconnect, a missed tail).
    async fn fill(&mut self, socket: &mut Socket, before: Option<i64>) -> Result<(), Lost> {
        loop {
            if before.is_some_and(|b| self.last() + 1 >= b) {
                return Ok(());
            }
            let page = socket
                .ask(
                    "fetch_messages",
                    json!({"channel_id": self.channel, "after_seq": self.last(), "limit": PAGE}),
                )
                .await?;
            let messages = page["messages"].as_array().cloned().unwrap_or_default();
            for message in &messages {
                let seq = message["seq"].as_i64().expect("a seq");
                if before.is_some_and(|b| seq >= b) {
                    return Ok(());
                }
                self.show(seq, false);
                if before.is_some() {
                    self.gap_filled.insert(seq);
                }
            }
            if before.is_none() && messages.len() < PAGE {
                return Ok(());
            }
        }
    }

    /// One socket's life: enter, catch up, then follow pushes until the
    /// socket is lost or `target` (the writer's last seq) is shown.
    async fn follow(
        &mut self,
        socket: &mut Socket,
        target: &watch::Receiver<Option<i64>>,
    ) -> Result<(), Lost> {
        socket
            .ask("enter", json!({"channel_id": self.channel}))
            .await?;
        self.fill(socket, None).await?;
        self.progress.lock().expect("progress").entered = true;
        let mut heard = Instant::now();
        loop {
            let goal = *target.borrow();
            if goal.is_some_and(|n| self.last() >= n) {
                return Ok(());
            }
            let wait = tokio::time::Instant::now() + Duration::from_millis(500);
            match socket.push(wait).await? {
                Some(push) if push["type"] == "message" && push["channel_id"] == self.channel => {
                    heard = Instant::now();
                    let seq = push["seq"].as_i64().expect("a seq");
                    if seq <= self.last() {
                        self.report.repeats += 1;
                        if self.gap_filled.contains(&seq) {
                            self.report.out_of_order += 1;
                        }
                    } else {
                        self.fill(socket, Some(seq)).await?;
                        self.show(seq, true);
                    }
                }
                Some(push) if push["type"] == "reconnect" => return Err(Lost::Closed),
                Some(_) => {}
                None if goal.is_some() && heard.elapsed() > TAIL_WAIT => {
                    self.fill(socket, None).await?;
                    heard = Instant::now();
                }
                None => {}
            }
        }
    }
}

/// Follows `channel` from gateway `home` (then wherever it can) until it
/// has shown the writer's last seq, which `target` tells once known.
pub async fn receive(
    gateways: Vec<String>,
    home: usize,
    token: String,
    channel: i64,
    target: watch::Receiver<Option<i64>>,
    progress: Arc<Mutex<Progress>>,
) -> ReceiverReport {
    let mut receiver = Receiver {
        channel,
        report: ReceiverReport::default(),
        gap_filled: HashSet::new(),
        progress,
    };
    let mut gateway = home;
    loop {
        let Some(mut socket) = Socket::open(&gateways[gateway], &token).await else {
            gateway = (gateway + 1) % gateways.len();
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        match receiver.follow(&mut socket, &target).await {
            Ok(()) => return receiver.report,
            Err(_) => {
                receiver.report.reconnects += 1;
                gateway = (gateway + 1) % gateways.len();
            }
        }
    }
}
