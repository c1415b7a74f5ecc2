//! The socket task: one WebSocket to the gateway, owned by one tokio task.
//!
//! It numbers requests and matches each reply to its request by id, turns
//! pushes into [`Event`]s, keeps the connection alive, and when the socket
//! drops (or the gateway says `reconnect`) it reconnects with backoff,
//! re-enters the channel the user was in and fills the gap by the last seq
//! seen — so nothing is lost and nothing shows twice (PROTOCOL.md 2.3).

use crate::render::{Event, describe_error};
use crate::seq::{SeqTracker, Verdict};
use crate::state::SharedView;
use futures::{SinkExt, StreamExt};
use natter_protocol::frames::results::{Entered, MessageEntry, Messages, Written};
use natter_protocol::frames::{ClientFrame, MessageView, Request, ServerFrame};
use natter_protocol::{ChannelId, ErrorCode, Seq};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Page size of gap filling (the protocol's maximum).
const FILL_PAGE: i64 = 100;
/// A `keep_alive` goes out after this long without sending anything.
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(25);
/// How long opening a socket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// No connection to send it on, or it dropped before the answer.
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

/// The last page of a channel, as `/enter` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnterOutcome {
    /// The `enter` reply.
    pub entered: Entered,
    /// Its newest messages, ascending.
    pub messages: Vec<MessageEntry>,
}

enum ToTask {
    Call {
        request: Request,
        reply: oneshot::Sender<Result<Value, CallError>>,
    },
    Enter {
        channel_id: ChannelId,
        page: i64,
        reply: oneshot::Sender<Result<EnterOutcome, CallError>>,
    },
}

/// The handle the session keeps: requests go in, answers come back.
/// Dropping it closes the socket.
#[derive(Debug)]
pub struct Connection {
    tx: mpsc::UnboundedSender<ToTask>,
    task: tokio::task::JoinHandle<()>,
}

impl Connection {
    /// Opens the socket with `token` and starts the task that owns it.
    ///
    /// # Errors
    /// When the first socket cannot be opened.
    pub async fn open(
        ws_url: &str,
        token: &str,
        events: mpsc::UnboundedSender<Event>,
        view: SharedView,
    ) -> Result<Self, ConnectError> {
        let socket = connect(ws_url, token).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let task = Task {
            ws_url: ws_url.to_owned(),
            token: token.to_owned(),
            events,
            view,
            rx,
            pending: HashMap::new(),
            next_id: 1,
            entering: None,
            current: None,
        };
        let task = tokio::spawn(task.run(socket));
        Ok(Self { tx, task })
    }

    /// Whether the task still runs (it stops when the session is revoked).
    #[must_use]
    pub fn is_alive(&self) -> bool {
        !self.task.is_finished()
    }

    /// Sends `request` and waits for its answer.
    ///
    /// # Errors
    /// The server's error, or a lost connection.
    pub async fn call(&self, request: Request) -> Result<Value, CallError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(ToTask::Call { request, reply })
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

    /// Enters a channel and fetches its last `page` messages; live ones
    /// follow as events, none shown twice.
    ///
    /// # Errors
    /// The server's error, or a lost connection.
    pub async fn enter(&self, channel_id: ChannelId, page: i64) -> Result<EnterOutcome, CallError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(ToTask::Enter {
                channel_id,
                page,
                reply,
            })
            .map_err(|_| ended())?;
        answer.await.map_err(|_| ended())?
    }

    /// Closes the socket and waits for the task to end.
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

/// What an outstanding request is for.
enum Pending {
    User {
        request: Request,
        reply: oneshot::Sender<Result<Value, CallError>>,
    },
    Enter {
        page: i64,
        reply: oneshot::Sender<Result<EnterOutcome, CallError>>,
    },
    EnterHistory {
        entered: Entered,
        reply: oneshot::Sender<Result<EnterOutcome, CallError>>,
    },
    ReEnter,
    Fill,
    KeepAlive,
}

/// The channel this socket is in.
struct Current {
    channel_id: ChannelId,
    title: String,
    tracker: SeqTracker,
    /// Pushes held back while history or a gap is being fetched.
    held: Option<BTreeMap<Seq, MessageView>>,
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

struct Task {
    ws_url: String,
    token: String,
    events: mpsc::UnboundedSender<Event>,
    view: SharedView,
    rx: mpsc::UnboundedReceiver<ToTask>,
    pending: HashMap<u64, Pending>,
    next_id: u64,
    /// A user `enter` in flight, with the pushes of that channel meanwhile.
    entering: Option<(ChannelId, BTreeMap<Seq, MessageView>)>,
    current: Option<Current>,
}

impl Task {
    async fn run(mut self, first: Socket) {
        let mut socket = Some(first);
        let mut backoff = Backoff::new();
        loop {
            let end = match socket.take() {
                Some(s) => self.serve(s).await,
                None => End::Lost("not connected".into()),
            };
            self.fail_pending();
            let reason = match end {
                End::Stopped => return,
                End::Revoked => {
                    self.emit(Event::SessionRevoked);
                    return;
                }
                End::Lost(reason) => reason,
            };
            // Reconnect until it works; requests meanwhile fail at once.
            let mut why = reason;
            loop {
                let delay = backoff.next_delay();
                self.emit(Event::ConnectionLost {
                    reason: why.clone(),
                    retry_in: delay,
                });
                if !self.wait_refusing(delay).await {
                    return;
                }
                match connect(&self.ws_url, &self.token).await {
                    Ok(s) => {
                        backoff = Backoff::new();
                        self.emit(Event::Reconnected);
                        socket = Some(s);
                        break;
                    }
                    Err(ConnectError::Unauthorized) => {
                        self.emit(Event::SessionRevoked);
                        return;
                    }
                    Err(ConnectError::Other(e)) => why = e,
                }
            }
        }
    }

    /// Sleeps for `delay`, answering requests with "not connected". False
    /// when the session closed the handle meanwhile.
    async fn wait_refusing(&mut self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                () = sleep_until(until) => return true,
                msg = self.rx.recv() => match msg {
                    None => return false,
                    Some(msg) => refuse(msg),
                },
            }
        }
    }

    fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }

    fn fail_pending(&mut self) {
        let lost = || CallError::Disconnected("the connection dropped before the answer".into());
        for (_, pending) in self.pending.drain() {
            match pending {
                Pending::User { reply, .. } => {
                    let _ = reply.send(Err(lost()));
                }
                Pending::Enter { reply, .. } | Pending::EnterHistory { reply, .. } => {
                    let _ = reply.send(Err(lost()));
                }
                Pending::ReEnter | Pending::Fill | Pending::KeepAlive => {}
            }
        }
        self.entering = None;
    }

    async fn serve(&mut self, mut socket: Socket) -> End {
        if let Err(e) = self.resume(&mut socket).await {
            return End::Lost(e);
        }
        let mut idle_until = Instant::now() + KEEP_ALIVE_EVERY;
        let mut draining: Option<String> = None;
        loop {
            tokio::select! {
                msg = self.rx.recv() => {
                    let Some(msg) = msg else {
                        let _ = socket.close(None).await;
                        return End::Stopped;
                    };
                    idle_until = Instant::now() + KEEP_ALIVE_EVERY;
                    if let Err(e) = self.send_user(&mut socket, msg).await {
                        return End::Lost(e);
                    }
                }
                () = sleep_until(idle_until) => {
                    idle_until = Instant::now() + KEEP_ALIVE_EVERY;
                    if let Err(e) = self.send(&mut socket, Request::KeepAlive, Pending::KeepAlive).await {
                        return End::Lost(e);
                    }
                }
                frame = socket.next() => {
                    let text = match frame {
                        None => return End::Lost(draining.unwrap_or_else(|| "closed by the server".into())),
                        Some(Err(e)) => return End::Lost(e.to_string()),
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Close(close))) => {
                            let why = draining.take().unwrap_or_else(|| match close {
                                Some(c) if !c.reason.is_empty() => format!("closed by the server: {}", c.reason),
                                _ => "closed by the server".into(),
                            });
                            return End::Lost(why);
                        }
                        Some(Ok(_)) => continue,
                    };
                    let Ok(frame) = serde_json::from_str::<ServerFrame>(text.as_str()) else {
                        continue;
                    };
                    match frame {
                        ServerFrame::SessionRevoked => return End::Revoked,
                        ServerFrame::Reconnect { reason } => {
                            // The gateway closes the socket after this; the
                            // close is what starts the reconnect.
                            draining = Some(format!("server restarting: {reason}"));
                        }
                        frame => {
                            if let Err(e) = self.on_frame(&mut socket, frame).await {
                                return End::Lost(e);
                            }
                        }
                    }
                }
            }
        }
    }

    /// After a reconnect: back into the channel the user was in, then fetch
    /// what was missed. The pushes meanwhile are held back.
    async fn resume(&mut self, socket: &mut Socket) -> Result<(), String> {
        let Some(current) = &mut self.current else {
            return Ok(());
        };
        current.held.get_or_insert_with(BTreeMap::new);
        let channel_id = current.channel_id;
        self.send(socket, Request::Enter { channel_id }, Pending::ReEnter)
            .await
    }

    async fn send(
        &mut self,
        socket: &mut Socket,
        request: Request,
        pending: Pending,
    ) -> Result<(), String> {
        let id = self.next_id;
        self.next_id += 1;
        let text =
            serde_json::to_string(&ClientFrame { id, request }).map_err(|e| e.to_string())?;
        self.pending.insert(id, pending);
        socket
            .send(Message::text(text))
            .await
            .map_err(|e| e.to_string())
    }

    async fn send_user(&mut self, socket: &mut Socket, msg: ToTask) -> Result<(), String> {
        match msg {
            ToTask::Call { request, reply } => {
                self.send(socket, request.clone(), Pending::User { request, reply })
                    .await
            }
            ToTask::Enter {
                channel_id,
                page,
                reply,
            } => {
                self.entering = Some((channel_id, BTreeMap::new()));
                self.send(
                    socket,
                    Request::Enter { channel_id },
                    Pending::Enter { page, reply },
                )
                .await
            }
        }
    }

    async fn on_frame(&mut self, socket: &mut Socket, frame: ServerFrame) -> Result<(), String> {
        let (id, result) = match frame {
            ServerFrame::Reply { id, result } => (id, Ok(result)),
            ServerFrame::Error {
                id: Some(id),
                code,
                message,
            } => (id, Err(CallError::Server { code, message })),
            ServerFrame::Error {
                id: None,
                code,
                message,
            } => {
                self.emit(Event::Error(describe_error(code, &message)));
                return Ok(());
            }
            ServerFrame::Message(message) => return self.on_message(socket, message).await,
            push => {
                self.on_push(push);
                return Ok(());
            }
        };
        let Some(pending) = self.pending.remove(&id) else {
            return Ok(());
        };
        self.on_answer(socket, pending, result).await
    }

    fn on_push(&mut self, push: ServerFrame) {
        let event = match push {
            ServerFrame::Unread {
                channel_id,
                title,
                unread,
                ..
            } => Event::Unread {
                channel_id,
                title,
                unread,
            },
            ServerFrame::InviteReceived { username } => {
                self.view.learn_user(&username);
                Event::InviteReceived(username)
            }
            ServerFrame::InviteAccepted { username } => {
                self.view.learn_user(&username);
                Event::InviteAccepted(username)
            }
            ServerFrame::ChannelJoined { channel_id, title } => {
                self.view.learn_channel(channel_id);
                Event::ChannelJoined { channel_id, title }
            }
            ServerFrame::Typing {
                channel_id,
                username,
            } => {
                if self.current_channel() != Some(channel_id) {
                    return;
                }
                Event::Typing {
                    channel_id,
                    username,
                }
            }
            _ => return,
        };
        self.emit(event);
    }

    fn current_channel(&self) -> Option<ChannelId> {
        self.current.as_ref().map(|c| c.channel_id)
    }

    async fn on_message(
        &mut self,
        socket: &mut Socket,
        message: MessageView,
    ) -> Result<(), String> {
        if let Some((channel_id, held)) = &mut self.entering
            && *channel_id == message.channel_id
        {
            held.insert(message.seq, message);
            return Ok(());
        }
        let Some(current) = &mut self.current else {
            return Ok(());
        };
        if current.channel_id != message.channel_id {
            return Ok(());
        }
        if let Some(held) = &mut current.held {
            held.insert(message.seq, message);
            return Ok(());
        }
        match current.tracker.verdict(message.seq) {
            Verdict::Duplicate => Ok(()),
            Verdict::Next => {
                self.show(message);
                Ok(())
            }
            Verdict::Gap { after_seq } => {
                let channel_id = current.channel_id;
                current.held = Some(BTreeMap::from([(message.seq, message)]));
                self.send(socket, fill_request(channel_id, after_seq), Pending::Fill)
                    .await
            }
        }
    }

    /// Shows a message of the current channel unless it was seen.
    fn show(&mut self, message: MessageView) {
        let Some(current) = &mut self.current else {
            return;
        };
        if current.channel_id != message.channel_id || !current.tracker.mark(message.seq) {
            return;
        }
        self.view.set_last_seen(current.tracker.highest());
        if let Some(name) = &message.username {
            self.view.learn_user(name);
        }
        self.emit(Event::Message {
            channel_id: message.channel_id,
            seq: message.seq,
            username: message.username,
            content: message.content,
            sent_at: message.sent_at,
        });
    }

    /// Releases held pushes in seq order; a new gap holds the rest again.
    async fn release_held(&mut self, socket: &mut Socket) -> Result<(), String> {
        let Some(held) = self.current.as_mut().and_then(|c| c.held.take()) else {
            return Ok(());
        };
        for (_, message) in held {
            self.on_message(socket, message).await?;
        }
        Ok(())
    }

    async fn on_answer(
        &mut self,
        socket: &mut Socket,
        pending: Pending,
        result: Result<Value, CallError>,
    ) -> Result<(), String> {
        match pending {
            Pending::User { request, reply } => {
                if result.is_ok() {
                    self.after_success(&request, result.as_ref().ok());
                }
                let _ = reply.send(result);
                Ok(())
            }
            Pending::Enter { page, reply } => {
                let held = self
                    .entering
                    .take()
                    .map(|(_, held)| held)
                    .unwrap_or_default();
                let entered = match result.and_then(decode::<Entered>) {
                    Ok(entered) => entered,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return Ok(());
                    }
                };
                self.current = Some(Current {
                    channel_id: entered.channel_id,
                    title: entered.title.clone(),
                    tracker: SeqTracker::starting_at(entered.last_seq),
                    held: Some(held),
                });
                self.view.set_channel(
                    Some((entered.channel_id, entered.title.clone())),
                    entered.last_seq,
                );
                let history = Request::FetchMessages {
                    channel_id: entered.channel_id,
                    after_seq: None,
                    before_seq: None,
                    limit: Some(page),
                };
                self.send(socket, history, Pending::EnterHistory { entered, reply })
                    .await
            }
            Pending::EnterHistory { entered, reply } => {
                let messages = match result.and_then(decode::<Messages>) {
                    Ok(page) => page.messages,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return self.release_held(socket).await;
                    }
                };
                if let Some(current) = &mut self.current {
                    for m in &messages {
                        current.tracker.mark(m.seq);
                    }
                    self.view.set_last_seen(current.tracker.highest());
                }
                for m in &messages {
                    if let Some(name) = &m.username {
                        self.view.learn_user(name);
                    }
                }
                let _ = reply.send(Ok(EnterOutcome { entered, messages }));
                self.release_held(socket).await
            }
            Pending::ReEnter => match result {
                Ok(_) => {
                    let Some(current) = &self.current else {
                        return Ok(());
                    };
                    let request = fill_request(current.channel_id, current.tracker.contiguous());
                    self.send(socket, request, Pending::Fill).await
                }
                Err(e) => {
                    let title = self.current.take().map(|c| c.title).unwrap_or_default();
                    self.view.set_channel(None, Seq::ZERO);
                    self.emit(Event::Error(format!(
                        "could not re-enter {title}: {}",
                        e.describe()
                    )));
                    Ok(())
                }
            },
            Pending::Fill => {
                let page = match result.and_then(decode::<Messages>) {
                    Ok(page) => page,
                    Err(e) => {
                        self.emit(Event::Error(format!(
                            "could not fetch missed messages: {}",
                            e.describe()
                        )));
                        return self.release_held(socket).await;
                    }
                };
                let full = i64::try_from(page.messages.len()).is_ok_and(|n| n >= FILL_PAGE);
                for m in page.messages {
                    self.show(MessageView {
                        channel_id: page.channel_id,
                        seq: m.seq,
                        username: m.username,
                        content: m.content,
                        sent_at: m.sent_at,
                    });
                }
                match &self.current {
                    Some(current) if full && current.channel_id == page.channel_id => {
                        let request =
                            fill_request(current.channel_id, current.tracker.contiguous());
                        self.send(socket, request, Pending::Fill).await
                    }
                    _ => self.release_held(socket).await,
                }
            }
            Pending::KeepAlive => Ok(()),
        }
    }

    /// Keeps the channel state in step with what the user just did.
    fn after_success(&mut self, request: &Request, result: Option<&Value>) {
        match request {
            Request::Leave => self.leave(),
            Request::Quit { channel_id } if self.current_channel() == Some(*channel_id) => {
                self.leave();
            }
            Request::WriteMessage { channel_id, .. } => {
                let written =
                    result.and_then(|v| serde_json::from_value::<Written>(v.clone()).ok());
                if let (Some(current), Some(written)) = (&mut self.current, written)
                    && current.channel_id == *channel_id
                {
                    current.tracker.mark(written.seq);
                    self.view.set_last_seen(current.tracker.highest());
                }
            }
            _ => {}
        }
    }

    fn leave(&mut self) {
        self.current = None;
        self.view.set_channel(None, Seq::ZERO);
    }
}

fn refuse(msg: ToTask) {
    let offline = || CallError::Disconnected("not connected right now; reconnecting".into());
    match msg {
        ToTask::Call { reply, .. } => {
            let _ = reply.send(Err(offline()));
        }
        ToTask::Enter { reply, .. } => {
            let _ = reply.send(Err(offline()));
        }
    }
}

fn fill_request(channel_id: ChannelId, after_seq: Seq) -> Request {
    Request::FetchMessages {
        channel_id,
        after_seq: Some(after_seq),
        before_seq: None,
        limit: Some(FILL_PAGE),
    }
}

fn decode<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, CallError> {
    serde_json::from_value(value).map_err(|e| CallError::Server {
        code: ErrorCode::Internal,
        message: format!("unexpected reply: {e}"),
    })
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
