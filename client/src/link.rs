//! The link: the client's one WebSocket to the gateway, owned by one
//! tokio task.
//!
//! The task is a thin shell of I/O around [`machine`], the sans-I/O state
//! machine that numbers requests, matches replies, turns pushes into
//! [`Event`]s and keeps the entered channel exactly-once. The shell reads
//! and writes the socket, sends a `keep_alive` when idle, and when the
//! socket drops (or the gateway says `reconnect`) reconnects with backoff;
//! the machine then re-enters the channel the user was in and fills the
//! gap by the last seq seen — so nothing is lost and nothing shows twice
//! (docs/protocol.md §2.3). A token refused at reconnect is renewed by the
//! [`Keeper`] (§2.7); only a session that cannot be renewed ends the link.
//! It also flushes the machine's read acks on a short timer.

pub mod machine;

use crate::keeper::{Ended, Keeper};
use crate::render::{Event, describe_error};
use crate::state::SharedView;
use futures::{SinkExt, StreamExt};
use machine::{Ask, Flow, Machine, SocketEnd};
use natter_protocol::frames::results::{Entered, MessageEntry, Written};
use natter_protocol::frames::{Request, ServerFrame};
use natter_protocol::{ChannelId, ErrorCode};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A `keep_alive` goes out after this long without sending anything.
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(25);
/// How long opening a socket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Read acks wait this long, so a burst of messages costs one `read`.
const ACK_DELAY: Duration = Duration::from_millis(500);

/// Why a request got no result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The server answered with an error frame.
    Server {
        /// The code.
        code: ErrorCode,
        /// The server's human message.
        message: String,
    },
    /// No socket to send it on, or it dropped before the answer.
    Disconnected(String),
}

impl CallError {
    /// One readable line.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Self::Server { code, message } => describe_error(*code, message),
            Self::Disconnected(why) => why.clone(),
        }
    }
}

/// Why a socket could not be opened.
#[derive(Debug)]
pub enum ConnectError {
    /// The gateway refused the token (401).
    Unauthorized,
    /// Anything else: unreachable, timed out, not a WebSocket.
    Other(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unauthorized => f.write_str("the gateway refused the session"),
            Self::Other(why) => f.write_str(why),
        }
    }
}

/// What happened to a written message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Stored: its seq and time.
    Sent(Written),
    /// The link is down: it waits and is sent when the link is back.
    Queued,
}

/// A channel as `/enter` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnterOutcome {
    /// The `enter` reply.
    pub entered: Entered,
    /// From a little before the first unread message on, or (nothing
    /// unread) the newest page; ascending.
    pub messages: Vec<MessageEntry>,
    /// Unread messages after these, for `/more`.
    pub more_unread: i64,
}

/// Tells the link the user is typing; cheap to clone, for the prompt. It
/// holds the link weakly: closing the link is dropping its one handle.
#[derive(Debug, Clone)]
pub struct TypingHandle(mpsc::WeakUnboundedSender<Ask>);

impl TypingHandle {
    /// The user changed the message being composed.
    pub fn typing(&self) {
        if let Some(tx) = self.0.upgrade() {
            let _ = tx.send(Ask::Typing {
                at: std::time::Instant::now(),
            });
        }
    }
}

/// The handle the session keeps: requests go in, answers come back.
/// Dropping it closes the socket.
#[derive(Debug)]
pub struct Link {
    tx: mpsc::UnboundedSender<Ask>,
    task: tokio::task::JoinHandle<()>,
}

impl Link {
    /// Opens the socket with the keeper's token (renewed once if refused)
    /// and starts the task that owns it.
    ///
    /// # Errors
    /// When the first socket cannot be opened.
    pub async fn open(
        ws_url: &str,
        keeper: Arc<Keeper>,
        events: mpsc::UnboundedSender<Event>,
        view: SharedView,
    ) -> Result<Self, ConnectError> {
        let token = keeper.token().await.map_err(|e| match e {
            Ended::Unreachable(why) => ConnectError::Other(why),
            Ended::Expired | Ended::Revoked => ConnectError::Unauthorized,
        })?;
        let socket = match connect(ws_url, &token).await {
            Err(ConnectError::Unauthorized) => {
                let renewed = keeper.renew(&token).await.map_err(|e| match e {
                    Ended::Unreachable(why) => ConnectError::Other(why),
                    Ended::Expired | Ended::Revoked => ConnectError::Unauthorized,
                })?;
                connect(ws_url, &renewed).await?
            }
            other => other?,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let task = Task {
            ws_url: ws_url.to_owned(),
            keeper,
            events,
            rx,
            machine: Machine::new(view),
        };
        let task = tokio::spawn(task.run(socket));
        Ok(Self { tx, task })
    }

    /// Whether the task still runs (it stops when the session ends).
    #[must_use]
    pub fn is_alive(&self) -> bool {
        !self.task.is_finished()
    }

    /// A handle the prompt uses to say the user is typing.
    #[must_use]
    pub fn typing_handle(&self) -> TypingHandle {
        TypingHandle(self.tx.downgrade())
    }

    /// Sends `request` and waits for its answer.
    ///
    /// # Errors
    /// The server's error, or a lost link.
    pub async fn call(&self, request: Request) -> Result<Value, CallError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Ask::Call { request, reply })
            .map_err(|_| ended())?;
        answer.await.map_err(|_| ended())?
    }

    /// Sends `request` and decodes its result as `T`.
    ///
    /// # Errors
    /// As [`Self::call`], or a result of the wrong shape.
    pub async fn call_as<T: serde::de::DeserializeOwned>(
        &self,
        request: Request,
    ) -> Result<T, CallError> {
        let value = self.call(request).await?;
        serde_json::from_value(value).map_err(|e| CallError::Server {
            code: ErrorCode::Internal,
            message: format!("unexpected reply: {e}"),
        })
    }

    /// Writes a message; while the link is down it is queued and sent
    /// when it is back (with the same `client_msg_id`, so at most once).
    ///
    /// # Errors
    /// The server's refusal, or a link that has ended for good.
    pub async fn write(
        &self,
        channel_id: ChannelId,
        content: String,
    ) -> Result<WriteOutcome, CallError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Ask::Write {
                channel_id,
                client_msg_id: uuid::Uuid::new_v4().to_string(),
                content,
                reply,
            })
            .map_err(|_| ended())?;
        answer.await.map_err(|_| ended())?
    }

    /// Enters a channel and fetches what `/enter` shows; live messages
    /// follow as events, none shown twice.
    ///
    /// # Errors
    /// The server's error, or a lost link.
    pub async fn enter(&self, channel_id: ChannelId, page: i64) -> Result<EnterOutcome, CallError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Ask::Enter {
                channel_id,
                page,
                reply,
            })
            .map_err(|_| ended())?;
        answer.await.map_err(|_| ended())?
    }

    /// The next page of unread messages `/enter` did not show.
    ///
    /// # Errors
    /// The server's error, or a lost link.
    pub async fn more(&self) -> Result<Vec<MessageEntry>, CallError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Ask::More { reply }).map_err(|_| ended())?;
        answer.await.map_err(|_| ended())?
    }

    /// Acknowledges what was shown, closes the socket and waits for the
    /// task to end.
    pub async fn close(self) {
        drop(self.tx);
        let _ = self.task.await;
    }
}

fn ended() -> CallError {
    CallError::Disconnected("the connection has ended; /login again".into())
}

/// Opens a socket with the bearer token on the upgrade request.
async fn connect(ws_url: &str, token: &str) -> Result<Socket, ConnectError> {
    let mut request = ws_url
        .into_client_request()
        .map_err(|e| ConnectError::Other(format!("bad gateway address {ws_url}: {e}")))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| ConnectError::Unauthorized)?;
    request.headers_mut().insert("authorization", bearer);
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(request)).await {
        Err(_) => Err(ConnectError::Other(format!(
            "the gateway at {ws_url} did not answer in time"
        ))),
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(tungstenite::Error::Http(response))) if response.status() == 401 => {
            Err(ConnectError::Unauthorized)
        }
        Ok(Err(e)) => Err(ConnectError::Other(format!(
            "cannot reach the gateway at {ws_url}: {e}"
        ))),
    }
}

/// Exponential backoff with a little jitter, capped.
#[derive(Debug, Clone)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    const BASE: Duration = Duration::from_millis(500);
    const CAP: Duration = Duration::from_secs(30);

    /// A fresh backoff: the first delay is about half a second.
    #[must_use]
    pub fn new() -> Self {
        Self { attempt: 0 }
    }

    /// The next delay: 0.5 s, 1 s, 2 s … up to 30 s, plus up to 20 %.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32 << self.attempt.min(6);
        self.attempt = self.attempt.saturating_add(1);
        let base = Self::BASE.saturating_mul(factor).min(Self::CAP);
        let jitter = base.mul_f64(f64::from(uuid::Uuid::new_v4().as_u128() as u8) / 1275.0);
        base + jitter
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// Why one socket's life ended.
enum End {
    /// The user closed the client or logged out.
    Stopped,
    /// Logged out or unregistered elsewhere: no reconnecting.
    Revoked,
    /// Dropped or drained: reconnect.
    Lost(String),
}

/// What one read from the socket brought.
enum Read {
    /// A server frame.
    Frame(ServerFrame),
    /// Nothing for the machine (a ping, a frame it cannot parse).
    Skip,
    /// The socket is gone.
    End(SocketEnd),
}

struct Task {
    ws_url: String,
    keeper: Arc<Keeper>,
    events: mpsc::UnboundedSender<Event>,
    rx: mpsc::UnboundedReceiver<Ask>,
    machine: Machine,
}

impl Task {
    async fn run(mut self, mut socket: Socket) {
        loop {
            match self.serve(socket).await {
                End::Stopped | End::Revoked => return,
                End::Lost(reason) => match self.reconnect(reason).await {
                    Some(next) => socket = next,
                    None => return,
                },
            }
        }
    }

    /// Reconnects with backoff until it works; requests meanwhile fail at
    /// once (writes are queued). A refused token is renewed once per try.
    /// `None` when the session closed the handle or has ended.
    async fn reconnect(&mut self, mut why: String) -> Option<Socket> {
        let mut backoff = Backoff::new();
        loop {
            let delay = backoff.next_delay();
            self.emit(Event::LinkLost {
                reason: why,
                retry_in: delay,
            });
            if !self.wait_refusing(delay).await {
                return None;
            }
            let token = self.keeper.current().await;
            let refused = match connect(&self.ws_url, &token).await {
                Ok(socket) => return Some(self.back(socket)),
                Err(ConnectError::Unauthorized) => token,
                Err(ConnectError::Other(e)) => {
                    why = e;
                    continue;
                }
            };
            match self.keeper.renew(&refused).await {
                Ok(token) => match connect(&self.ws_url, &token).await {
                    Ok(socket) => return Some(self.back(socket)),
                    Err(e) => why = e.to_string(),
                },
                Err(Ended::Unreachable(e)) => why = e,
                Err(ended) => {
                    self.machine.abandon();
                    self.forward_events();
                    self.emit(if ended == Ended::Expired {
                        Event::SessionExpired
                    } else {
                        Event::SessionRevoked
                    });
                    return None;
                }
            }
        }
    }

    fn back(&self, socket: Socket) -> Socket {
        self.emit(Event::Reconnected);
        socket
    }

    /// Sleeps for `delay`, answering requests with "not connected" (and
    /// queueing writes). False when the session closed the handle meanwhile.
    async fn wait_refusing(&mut self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                () = sleep_until(until) => return true,
                ask = self.rx.recv() => match ask {
                    None => return false,
                    Some(ask) => {
                        self.machine.ask(ask);
                        self.forward_events();
                    }
                },
            }
        }
    }

    fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }

    async fn serve(&mut self, mut socket: Socket) -> End {
        self.machine.connected();
        if let Err(e) = self.flush(&mut socket).await {
            return self.lost(&SocketEnd::Failed(e));
        }
        let mut idle_until = Instant::now() + KEEP_ALIVE_EVERY;
        let mut ack_at: Option<Instant> = None;
        loop {
            let flow = tokio::select! {
                ask = self.rx.recv() => {
                    let Some(ask) = ask else {
                        self.machine.flush_acks();
                        let _ = self.flush(&mut socket).await;
                        let _ = socket.close(None).await;
                        return End::Stopped;
                    };
                    idle_until = Instant::now() + KEEP_ALIVE_EVERY;
                    self.machine.ask(ask);
                    Flow::Continue
                }
                () = sleep_until(idle_until) => {
                    idle_until = Instant::now() + KEEP_ALIVE_EVERY;
                    self.machine.keep_alive();
                    Flow::Continue
                }
                () = sleep_until(ack_at.unwrap_or(idle_until)), if ack_at.is_some() => {
                    ack_at = None;
                    self.machine.flush_acks();
                    Flow::Continue
                }
                frame = socket.next() => match read(frame) {
                    Read::Frame(frame) => self.machine.on_frame(frame),
                    Read::Skip => Flow::Continue,
                    Read::End(end) => return self.lost(&end),
                },
            };
            if flow == Flow::Revoked {
                self.forward_events();
                return End::Revoked;
            }
            if self.machine.ack_due() && ack_at.is_none() {
                ack_at = Some(Instant::now() + ACK_DELAY);
            }
            if let Err(e) = self.flush(&mut socket).await {
                return self.lost(&SocketEnd::Failed(e));
            }
        }
    }

    fn lost(&mut self, end: &SocketEnd) -> End {
        let reason = self.machine.lost(end);
        self.forward_events();
        End::Lost(reason)
    }

    fn forward_events(&mut self) {
        for event in self.machine.take_events() {
            self.emit(event);
        }
    }

    /// Shows what the machine decided to show and sends what it decided to
    /// send.
    async fn flush(&mut self, socket: &mut Socket) -> Result<(), String> {
        self.forward_events();
        for frame in self.machine.take_frames() {
            let text = serde_json::to_string(&frame).map_err(|e| e.to_string())?;
            socket
                .send(Message::text(text))
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// One item of the socket's stream, as the machine sees it.
fn read(frame: Option<Result<Message, tungstenite::Error>>) -> Read {
    match frame {
        None => Read::End(SocketEnd::Closed(String::new())),
        Some(Err(e)) => Read::End(SocketEnd::Failed(e.to_string())),
        Some(Ok(Message::Close(close))) => Read::End(SocketEnd::Closed(
            close.map(|c| c.reason.to_string()).unwrap_or_default(),
        )),
        Some(Ok(Message::Text(text))) => {
            serde_json::from_str(text.as_str()).map_or(Read::Skip, Read::Frame)
        }
        Some(Ok(_)) => Read::Skip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let mut b = Backoff::new();
        let delays: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(500) && delays[0] <= Duration::from_millis(600));
        assert!(delays[1] >= Duration::from_secs(1) && delays[1] <= Duration::from_millis(1200));
        assert!(delays[9] >= Duration::from_secs(30) && delays[9] <= Duration::from_secs(36));
    }

    #[test]
    fn server_errors_are_described_by_their_code() {
        let e = CallError::Server {
            code: ErrorCode::NotJoined,
            message: "raw".into(),
        };
        assert_eq!(e.describe(), "you are not a member of that channel");
    }
}
