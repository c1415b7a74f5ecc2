//! The link's state machine, sans I/O: every decision of the socket task
//! and none of its waiting.
//!
//! It numbers requests and matches each reply to its request by id, turns
//! pushes into [`Event`]s, and keeps the entered channel exactly-once
//! (docs/protocol.md §2.3): live messages are shown in seq order, a gap is
//! fetched (`after_seq`, page by page) while later pushes are held back,
//! and after a reconnect the channel is re-entered and the gap filled.
//! It also decides what the user's presence tells the server:
//!
//! - **read acks**: what is shown inside a channel is acknowledged with
//!   `read`, batched — the shell calls [`Machine::flush_acks`] on a timer
//!   when [`Machine::ack_due`], and the machine flushes before leaving a
//!   channel — never one request per message;
//! - **typing**: at most one `typing` per [`TYPING_EVERY`] while composing;
//! - **the outbox**: a message written while the link is down is queued and
//!   sent when it is back, with the `client_msg_id` it was given, so a
//!   write whose answer was lost is stored once (§2.2).
//!
//! The shell in [`crate::link`] owns the socket, the timers and the
//! reconnect loop; it feeds what happened in ([`Machine::connected`],
//! [`Machine::ask`], [`Machine::on_frame`], [`Machine::keep_alive`],
//! [`Machine::lost`]) and carries out what comes back
//! ([`Machine::take_frames`], [`Machine::take_events`]). So every rule here
//! is unit-tested without a server, as the push router is.

use super::{CallError, EnterOutcome, WriteOutcome};
use crate::render::{Event, describe_error};
use crate::seq::{SeqTracker, Verdict};
use crate::state::SharedView;
use natter_protocol::frames::results::{Entered, MessageEntry, Messages, Written};
use natter_protocol::frames::{ClientFrame, LeaveReason, MessageView, Request, ServerFrame};
use natter_protocol::{ChannelId, ErrorCode, Seq};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Page size of gap filling and of unread pages (the protocol's maximum).
pub const FILL_PAGE: i64 = 100;
/// Read messages shown before the first unread one, for context.
pub const CONTEXT: i64 = 3;
/// At most one `typing` per this long while composing.
pub const TYPING_EVERY: Duration = Duration::from_secs(3);

/// What the user asks of the link; the answer goes back on `reply`.
#[derive(Debug)]
pub enum Ask {
    /// One request, answered by its reply.
    Call {
        /// The request.
        request: Request,
        /// Where its result goes.
        reply: oneshot::Sender<Result<Value, CallError>>,
    },
    /// Write a message: sent now, or queued while the link is down.
    Write {
        /// The channel.
        channel_id: ChannelId,
        /// Its idempotency key, kept across retries.
        client_msg_id: String,
        /// The text.
        content: String,
        /// Where the outcome goes.
        reply: oneshot::Sender<Result<WriteOutcome, CallError>>,
    },
    /// Enter a channel: from its first unread message when it has any,
    /// else its last `page` messages.
    Enter {
        /// The channel.
        channel_id: ChannelId,
        /// How many messages of history when nothing is unread.
        page: i64,
        /// Where the outcome goes.
        reply: oneshot::Sender<Result<EnterOutcome, CallError>>,
    },
    /// The next page of the unread messages `/enter` did not show.
    More {
        /// Where the page goes; empty when nothing is left.
        reply: oneshot::Sender<Result<Vec<MessageEntry>, CallError>>,
    },
    /// The user is composing a message at `at`.
    Typing {
        /// When.
        at: Instant,
    },
}

/// Whether the link goes on after a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading.
    Continue,
    /// Logged out or unregistered elsewhere: stop, do not reconnect.
    Revoked,
}

/// How a socket ended, as the shell saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketEnd {
    /// The server closed it; the close frame's reason, empty when none.
    Closed(String),
    /// Reading or writing failed.
    Failed(String),
}

/// What an outstanding request is for.
#[derive(Debug)]
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
    More {
        channel_id: ChannelId,
        reply: oneshot::Sender<Result<Vec<MessageEntry>, CallError>>,
    },
    /// A write of the outbox, by its `client_msg_id`.
    Write(String),
    ReEnter,
    Fill,
    /// `keep_alive`, `read`, `typing`: nothing waits for the answer.
    Quiet,
}

/// A message on its way: in the outbox until the server has stored it.
#[derive(Debug)]
struct Outgoing {
    channel_id: ChannelId,
    client_msg_id: String,
    content: String,
    /// Sent on the current socket, not yet answered.
    in_flight: bool,
    /// `unavailable` once already: the next one is reported.
    retried: bool,
    /// The writer still waits for the answer; `None` once told "queued".
    reply: Option<oneshot::Sender<Result<WriteOutcome, CallError>>>,
}

/// The channel the user is in.
#[derive(Debug)]
struct Current {
    channel_id: ChannelId,
    title: String,
    tracker: SeqTracker,
    /// Pushes held back while history or a gap is being fetched.
    held: Option<BTreeMap<Seq, MessageView>>,
    /// The highest seq shown (or written) here.
    shown: Seq,
    /// The highest seq acknowledged with `read` (or moved by the server).
    acked: Seq,
    /// Unread messages `/enter` has not shown yet, first and last seq.
    unshown: Option<(Seq, Seq)>,
    /// When the last `typing` went out.
    typed_at: Option<Instant>,
}

impl Current {
    /// What may be acknowledged: everything shown, but never past unread
    /// messages still waiting for `/more`.
    fn ack_target(&self) -> Seq {
        match self.unshown {
            Some((first, _)) => self.shown.min(Seq(first.0 - 1)),
            None => self.shown,
        }
    }
}

/// The link's state across sockets: what is asked, where the user is, and
/// what is due to go out.
#[derive(Debug)]
pub struct Machine {
    view: SharedView,
    /// A socket is up: requests go out rather than fail at once.
    online: bool,
    next_id: u64,
    pending: HashMap<u64, Pending>,
    /// A user `enter` in flight, with the pushes of that channel meanwhile.
    entering: Option<(ChannelId, BTreeMap<Seq, MessageView>)>,
    current: Option<Current>,
    outbox: VecDeque<Outgoing>,
    /// The server announced it is restarting; the close that follows is
    /// explained by this rather than by its bare close frame.
    draining: Option<String>,
    frames: Vec<ClientFrame>,
    events: Vec<Event>,
}

impl Machine {
    /// A link with no socket yet; it keeps `view` up to date.
    #[must_use]
    pub fn new(view: SharedView) -> Self {
        Self {
            view,
            online: false,
            next_id: 1,
            pending: HashMap::new(),
            entering: None,
            current: None,
            outbox: VecDeque::new(),
            draining: None,
            frames: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Frames to send, in order.
    pub fn take_frames(&mut self) -> Vec<ClientFrame> {
        std::mem::take(&mut self.frames)
    }

    /// Events to show, in order.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// A socket is up. After a reconnect: back into the channel the user
    /// was in, then fetch what was missed (the pushes meanwhile are held),
    /// and send what was written while the link was down.
    pub fn connected(&mut self) {
        self.online = true;
        self.draining = None;
        if let Some(current) = &mut self.current {
            current.held.get_or_insert_with(BTreeMap::new);
            let channel_id = current.channel_id;
            self.send(Request::Enter { channel_id }, Pending::ReEnter);
        }
        self.flush_outbox();
    }

    /// The socket ended: what was asked on it fails (a write goes back to
    /// the outbox), and the words for why.
    pub fn lost(&mut self, end: &SocketEnd) -> String {
        self.online = false;
        self.fail_pending();
        match (end, self.draining.take()) {
            (SocketEnd::Failed(why), _) => why.clone(),
            (SocketEnd::Closed(_), Some(draining)) => draining,
            (SocketEnd::Closed(reason), None) if reason.is_empty() => "closed by the server".into(),
            (SocketEnd::Closed(reason), None) => format!("closed by the server: {reason}"),
        }
    }

    /// The link stops for good (the session ended): what is still queued
    /// will never be sent, and the user hears so.
    pub fn abandon(&mut self) {
        self.online = false;
        self.fail_pending();
        let unsent = self.outbox.len();
        self.outbox.clear();
        self.view.set_queued(0);
        if unsent > 0 {
            self.events.push(Event::Error(format!(
                "{unsent} queued message{} could not be sent",
                if unsent == 1 { "" } else { "s" }
            )));
        }
    }

    /// The user asks something; refused at once while there is no socket,
    /// except a write, which waits in the outbox.
    pub fn ask(&mut self, ask: Ask) {
        match ask {
            Ask::Write {
                channel_id,
                client_msg_id,
                content,
                reply,
            } => self.write(channel_id, client_msg_id, content, reply),
            Ask::Typing { at } => self.typing(at),
            ask if !self.online => refuse(ask),
            Ask::Call { request, reply } => {
                if matches!(
                    request,
                    Request::Leave | Request::Quit { .. } | Request::Enter { .. }
                ) {
                    self.flush_acks();
                }
                self.send(request.clone(), Pending::User { request, reply });
            }
            Ask::Enter {
                channel_id,
                page,
                reply,
            } => {
                self.flush_acks();
                self.entering = Some((channel_id, BTreeMap::new()));
                self.send(
                    Request::Enter { channel_id },
                    Pending::Enter { page, reply },
                );
            }
            Ask::More { reply } => {
                let Some((channel_id, Some((first, _)))) =
                    self.current.as_ref().map(|c| (c.channel_id, c.unshown))
                else {
                    let _ = reply.send(Ok(Vec::new()));
                    return;
                };
                let request = fill_request(channel_id, Seq(first.0 - 1));
                self.send(request, Pending::More { channel_id, reply });
            }
        }
    }

    /// Nothing went out for a while: tell the server the socket is alive.
    pub fn keep_alive(&mut self) {
        self.send(Request::KeepAlive, Pending::Quiet);
    }

    /// Whether something shown is not yet acknowledged.
    #[must_use]
    pub fn ack_due(&self) -> bool {
        self.online
            && self
                .current
                .as_ref()
                .is_some_and(|c| c.ack_target() > c.acked)
    }

    /// Acknowledges what was shown in the entered channel: one `read` with
    /// the highest seq, however many messages that covers.
    pub fn flush_acks(&mut self) {
        if !self.ack_due() {
            return;
        }
        let Some(current) = &mut self.current else {
            return;
        };
        let seq = current.ack_target();
        current.acked = seq;
        let channel_id = current.channel_id;
        self.send(Request::Read { channel_id, seq }, Pending::Quiet);
    }

    /// A frame from the server.
    pub fn on_frame(&mut self, frame: ServerFrame) -> Flow {
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
                self.events
                    .push(Event::Error(describe_error(code, &message)));
                return Flow::Continue;
            }
            ServerFrame::Message(message) => {
                self.on_message(message);
                return Flow::Continue;
            }
            ServerFrame::SessionRevoked => {
                self.abandon();
                self.events.push(Event::SessionRevoked);
                return Flow::Revoked;
            }
            ServerFrame::Reconnect { reason } => {
                // The gateway closes the socket after this; the close is
                // what starts the reconnect.
                self.draining = Some(format!("server restarting: {reason}"));
                return Flow::Continue;
            }
            push => {
                self.on_push(push);
                return Flow::Continue;
            }
        };
        if let Some(pending) = self.pending.remove(&id) {
            self.on_answer(pending, result);
        }
        Flow::Continue
    }

    fn send(&mut self, request: Request, pending: Pending) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(id, pending);
        self.frames.push(ClientFrame { id, request });
        id
    }

    fn write(
        &mut self,
        channel_id: ChannelId,
        client_msg_id: String,
        content: String,
        reply: oneshot::Sender<Result<WriteOutcome, CallError>>,
    ) {
        let reply = if self.online {
            Some(reply)
        } else {
            let _ = reply.send(Ok(WriteOutcome::Queued));
            None
        };
        self.outbox.push_back(Outgoing {
            channel_id,
            client_msg_id,
            content,
            in_flight: false,
            retried: false,
            reply,
        });
        if let Some(current) = &mut self.current
            && current.channel_id == channel_id
        {
            // The next keystroke announces typing again at once.
            current.typed_at = None;
        }
        self.count_queued();
        self.flush_outbox();
    }

    /// Sends, in order, every queued write not yet on this socket.
    fn flush_outbox(&mut self) {
        if !self.online {
            return;
        }
        let mut requests = Vec::new();
        for out in self.outbox.iter_mut().filter(|o| !o.in_flight) {
            out.in_flight = true;
            requests.push(Request::WriteMessage {
                channel_id: out.channel_id,
                client_msg_id: out.client_msg_id.clone(),
                content: out.content.clone(),
            });
        }
        for request in requests {
            let Request::WriteMessage { client_msg_id, .. } = &request else {
                continue;
            };
            let key = client_msg_id.clone();
            self.send(request, Pending::Write(key));
        }
    }

    fn count_queued(&self) {
        self.view
            .set_queued(self.outbox.iter().filter(|o| o.reply.is_none()).count());
    }

    fn typing(&mut self, at: Instant) {
        if !self.online {
            return;
        }
        let Some(current) = &mut self.current else {
            return;
        };
        if current
            .typed_at
            .is_some_and(|last| at.saturating_duration_since(last) < TYPING_EVERY)
        {
            return;
        }
        current.typed_at = Some(at);
        let channel_id = current.channel_id;
        self.send(Request::Typing { channel_id }, Pending::Quiet);
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
                Pending::More { reply, .. } => {
                    let _ = reply.send(Err(lost()));
                }
                Pending::Write(_) | Pending::ReEnter | Pending::Fill | Pending::Quiet => {}
            }
        }
        for out in &mut self.outbox {
            out.in_flight = false;
            if let Some(reply) = out.reply.take() {
                let _ = reply.send(Ok(WriteOutcome::Queued));
            }
        }
        self.count_queued();
        self.entering = None;
    }

    fn on_push(&mut self, push: ServerFrame) {
        let event = match push {
            ServerFrame::Unread {
                channel_id,
                title,
                unread,
                ..
            } => {
                if self.current_channel() == Some(channel_id) {
                    return;
                }
                let first = self.view.note_activity(channel_id, &title, unread);
                Event::Unread {
                    channel_id,
                    title,
                    unread,
                    first,
                }
            }
            ServerFrame::InviteReceived { username } => {
                self.view.learn_user(&username);
                Event::InviteReceived(username)
            }
            ServerFrame::InviteAccepted { username } => {
                self.view.learn_user(&username);
                Event::InviteAccepted(username)
            }
            ServerFrame::ChannelJoined { channel_id, title } => {
                self.view.learn_channel(channel_id, Some(&title));
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
            ServerFrame::MemberJoined {
                channel_id,
                username,
            } => {
                if self.current_channel() != Some(channel_id) {
                    return;
                }
                self.view.learn_user(&username);
                Event::MemberJoined {
                    channel_id,
                    username,
                }
            }
            ServerFrame::MemberLeft {
                channel_id,
                username,
                reason,
            } => {
                if self.current_channel() != Some(channel_id) {
                    return;
                }
                self.view.stop_typing(&username);
                Event::MemberLeft {
                    channel_id,
                    username,
                    unregistered: reason == LeaveReason::Unregistered,
                }
            }
            ServerFrame::ConnectionEnded { username } => Event::ConnectionEnded(username),
            _ => return,
        };
        self.events.push(event);
    }

    fn current_channel(&self) -> Option<ChannelId> {
        self.current.as_ref().map(|c| c.channel_id)
    }

    fn on_message(&mut self, message: MessageView) {
        if let Some((channel_id, held)) = &mut self.entering
            && *channel_id == message.channel_id
        {
            held.insert(message.seq, message);
            return;
        }
        let Some(current) = &mut self.current else {
            return;
        };
        if current.channel_id != message.channel_id {
            return;
        }
        if let Some(held) = &mut current.held {
            held.insert(message.seq, message);
            return;
        }
        match current.tracker.verdict(message.seq) {
            Verdict::Duplicate => {}
            Verdict::Next => self.show(message),
            Verdict::Gap { after_seq } => {
                let channel_id = current.channel_id;
                current.held = Some(BTreeMap::from([(message.seq, message)]));
                self.send(fill_request(channel_id, after_seq), Pending::Fill);
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
        current.shown = current.shown.max(message.seq);
        self.view.set_last_seen(current.tracker.highest());
        if let Some(name) = &message.username {
            self.view.learn_user(name);
            self.view.stop_typing(name);
        }
        self.events.push(Event::Message {
            channel_id: message.channel_id,
            seq: message.seq,
            username: message.username,
            content: message.content,
            sent_at: message.sent_at,
        });
    }

    /// Releases held pushes in seq order; a new gap holds the rest again.
    fn release_held(&mut self) {
        let Some(held) = self.current.as_mut().and_then(|c| c.held.take()) else {
            return;
        };
        for (_, message) in held {
            self.on_message(message);
        }
    }

    /// After a failed fill: re-checking the held pushes would find the
    /// same gap and ask again at once, in a loop for as long as the fetch
    /// fails. They are shown as they are; the next push that finds the gap
    /// tries again.
    fn show_held_despite_the_gap(&mut self) {
        let Some(held) = self.current.as_mut().and_then(|c| c.held.take()) else {
            return;
        };
        for (_, message) in held {
            self.show(message);
        }
    }

    fn on_answer(&mut self, pending: Pending, result: Result<Value, CallError>) {
        match pending {
            Pending::User { request, reply } => {
                if result.is_ok() {
                    self.after_success(&request);
                }
                let _ = reply.send(result);
            }
            Pending::Write(key) => self.on_written(&key, result),
            Pending::Enter { page, reply } => self.on_entered(page, reply, result),
            Pending::EnterHistory { entered, reply } => {
                let messages = match result.and_then(decode::<Messages>) {
                    Ok(page) => page.messages,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        self.release_held();
                        return;
                    }
                };
                let unread_from = entered.last_read_seq.next();
                let newest = messages.last().map(|m| m.seq);
                if let Some(current) = &mut self.current {
                    for m in &messages {
                        current.tracker.mark(m.seq);
                    }
                    current.shown = newest.unwrap_or(current.shown).max(current.shown);
                    current.unshown = match newest {
                        Some(newest)
                            if newest < entered.last_seq && entered.last_seq >= unread_from =>
                        {
                            Some((newest.next().max(unread_from), entered.last_seq))
                        }
                        _ => None,
                    };
                    self.view.set_last_seen(current.tracker.highest());
                }
                for m in &messages {
                    if let Some(name) = &m.username {
                        self.view.learn_user(name);
                    }
                }
                let more_unread = self
                    .current
                    .as_ref()
                    .and_then(|c| c.unshown)
                    .map_or(0, |(first, last)| last.count_after(Seq(first.0 - 1)));
                let _ = reply.send(Ok(EnterOutcome {
                    entered,
                    messages,
                    more_unread,
                }));
                self.release_held();
            }
            Pending::More { channel_id, reply } => {
                let page = match result.and_then(decode::<Messages>) {
                    Ok(page) => page.messages,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return;
                    }
                };
                let Some(current) = &mut self.current else {
                    let _ = reply.send(Ok(Vec::new()));
                    return;
                };
                let Some((_, last)) = current.unshown.filter(|_| current.channel_id == channel_id)
                else {
                    let _ = reply.send(Ok(Vec::new()));
                    return;
                };
                let page: Vec<MessageEntry> = page.into_iter().filter(|m| m.seq <= last).collect();
                match page.last() {
                    Some(newest) if newest.seq < last => {
                        current.unshown = Some((newest.seq.next(), last));
                        current.shown = current.shown.max(newest.seq);
                    }
                    _ => {
                        current.unshown = None;
                        current.shown = current.shown.max(last);
                    }
                }
                let _ = reply.send(Ok(page));
            }
            Pending::ReEnter => match result {
                Ok(_) => {
                    let Some(current) = &self.current else {
                        return;
                    };
                    let request = fill_request(current.channel_id, current.tracker.contiguous());
                    self.send(request, Pending::Fill);
                }
                Err(e) => {
                    let title = self.current.take().map(|c| c.title).unwrap_or_default();
                    self.view.set_channel(None, Seq::ZERO);
                    self.events.push(Event::Error(format!(
                        "could not re-enter {title}: {}",
                        e.describe()
                    )));
                }
            },
            Pending::Fill => {
                let page = match result.and_then(decode::<Messages>) {
                    Ok(page) => page,
                    Err(e) => {
                        self.events.push(Event::Error(format!(
                            "could not fetch missed messages: {}",
                            e.describe()
                        )));
                        self.show_held_despite_the_gap();
                        return;
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
                        self.send(request, Pending::Fill);
                    }
                    _ => self.release_held(),
                }
            }
            Pending::Quiet => {}
        }
    }

    fn on_entered(
        &mut self,
        page: i64,
        reply: oneshot::Sender<Result<EnterOutcome, CallError>>,
        result: Result<Value, CallError>,
    ) {
        let held = self
            .entering
            .take()
            .map(|(_, held)| held)
            .unwrap_or_default();
        let entered = match result.and_then(decode::<Entered>) {
            Ok(entered) => entered,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        self.forget_channel_requests();
        self.current = Some(Current {
            channel_id: entered.channel_id,
            title: entered.title.clone(),
            tracker: SeqTracker::starting_at(entered.last_seq),
            held: Some(held),
            shown: entered.last_read_seq,
            acked: entered.last_read_seq,
            unshown: None,
            typed_at: None,
        });
        self.view.set_channel(
            Some((entered.channel_id, entered.title.clone())),
            entered.last_seq,
        );
        let history = if entered.last_seq > entered.last_read_seq {
            // From just before the first unread one, so all of them show.
            fill_request(
                entered.channel_id,
                Seq((entered.last_read_seq.0 - CONTEXT).max(0)),
            )
        } else {
            Request::FetchMessages {
                channel_id: entered.channel_id,
                after_seq: None,
                before_seq: None,
                limit: Some(page),
            }
        };
        self.send(history, Pending::EnterHistory { entered, reply });
    }

    fn on_written(&mut self, key: &str, result: Result<Value, CallError>) {
        let Some(index) = self.outbox.iter().position(|o| o.client_msg_id == key) else {
            return;
        };
        if let Err(CallError::Server {
            code: ErrorCode::Unavailable,
            ..
        }) = &result
            && !self.outbox[index].retried
        {
            // Safe to repeat: the same client_msg_id is stored once.
            self.outbox[index].retried = true;
            self.outbox[index].in_flight = false;
            self.flush_outbox();
            return;
        }
        let Some(out) = self.outbox.remove(index) else {
            return;
        };
        self.count_queued();
        let written = result.and_then(decode::<Written>);
        if let Ok(written) = &written
            && let Some(current) = &mut self.current
            && current.channel_id == written.channel_id
        {
            current.tracker.mark(written.seq);
            current.shown = current.shown.max(written.seq);
            // The server moves the writer's read pointer to its message.
            current.acked = current.acked.max(written.seq);
            self.view.set_last_seen(current.tracker.highest());
        }
        match (out.reply, written) {
            (Some(reply), written) => {
                let _ = reply.send(written.map(WriteOutcome::Sent));
            }
            (None, Ok(written)) => self.events.push(Event::Message {
                channel_id: written.channel_id,
                seq: written.seq,
                username: self.view.snapshot().username,
                content: out.content,
                sent_at: written.sent_at,
            }),
            (None, Err(e)) => self.events.push(Event::Error(format!(
                "could not send {:?}: {}",
                preview(&out.content),
                e.describe()
            ))),
        }
    }

    /// Keeps the channel state in step with what the user just did.
    fn after_success(&mut self, request: &Request) {
        match request {
            Request::Leave => self.leave(),
            Request::Quit { channel_id } => {
                self.view.forget_channel(*channel_id);
                if self.current_channel() == Some(*channel_id) {
                    self.leave();
                }
            }
            Request::Read { channel_id, seq } => {
                if let Some(current) = &mut self.current
                    && current.channel_id == *channel_id
                {
                    current.acked = current.acked.max(*seq);
                    current.unshown = current.unshown.filter(|(_, last)| last > seq);
                }
            }
            _ => {}
        }
    }

    fn leave(&mut self) {
        self.forget_channel_requests();
        self.current = None;
        self.view.set_channel(None, Seq::ZERO);
    }

    /// The entered channel is replaced or left: the re-enter and fills
    /// still out for it must not act on the next one (release its held
    /// pushes before its history, or leave it on an error), so their
    /// replies are dropped as unknown.
    fn forget_channel_requests(&mut self) {
        self.pending
            .retain(|_, p| !matches!(p, Pending::ReEnter | Pending::Fill));
    }
}

/// The start of a message, to name it in an error.
fn preview(content: &str) -> String {
    let first = content.lines().next().unwrap_or("");
    let short: String = first.chars().take(30).collect();
    if short.len() < content.len() {
        format!("{short}…")
    } else {
        short
    }
}

fn refuse(ask: Ask) {
    let offline = || CallError::Disconnected("not connected right now; reconnecting".into());
    match ask {
        Ask::Call { reply, .. } => {
            let _ = reply.send(Err(offline()));
        }
        Ask::Enter { reply, .. } => {
            let _ = reply.send(Err(offline()));
        }
        Ask::More { reply } => {
            let _ = reply.send(Err(offline()));
        }
        Ask::Write { reply, .. } => {
            let _ = reply.send(Err(offline()));
        }
        Ask::Typing { .. } => {}
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
    use natter_protocol::frames::results::{Empty, UserInviteCode};
    use std::ops::RangeInclusive;
    use time::OffsetDateTime;
    use tokio::sync::oneshot::error::TryRecvError;

    const CHAT: ChannelId = ChannelId(7);
    const OTHER: ChannelId = ChannelId(8);

    fn entry(seq: i64) -> MessageEntry {
        MessageEntry {
            seq: Seq(seq),
            username: Some("bob".into()),
            content: format!("message {seq}"),
            sent_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn push_in(channel_id: ChannelId, seq: i64) -> ServerFrame {
        let e = entry(seq);
        ServerFrame::Message(MessageView {
            channel_id,
            seq: Seq(seq),
            username: e.username,
            content: e.content,
            sent_at: e.sent_at,
        })
    }

    fn push(seq: i64) -> ServerFrame {
        push_in(CHAT, seq)
    }

    fn page_of(channel_id: ChannelId, seqs: RangeInclusive<i64>) -> Messages {
        Messages {
            channel_id,
            messages: seqs.map(entry).collect(),
        }
    }

    fn entered(channel_id: ChannelId, last_seq: i64) -> Entered {
        Entered {
            channel_id,
            title: format!("channel {channel_id}"),
            last_read_seq: Seq(last_seq),
            last_seq: Seq(last_seq),
        }
    }

    fn fill_after(after_seq: i64) -> Request {
        fill_request(CHAT, Seq(after_seq))
    }

    /// The one frame the machine wants sent.
    fn only_frame(m: &mut Machine) -> ClientFrame {
        let mut frames = m.take_frames();
        assert_eq!(frames.len(), 1, "expected one frame: {frames:?}");
        frames.remove(0)
    }

    /// The seqs of the messages shown since the last look.
    fn shown(m: &mut Machine) -> Vec<i64> {
        m.take_events()
            .into_iter()
            .map(|e| match e {
                Event::Message { seq, .. } => seq.0,
                other => panic!("expected only messages, got {other:?}"),
            })
            .collect()
    }

    fn online() -> Machine {
        let mut m = Machine::new(SharedView::default());
        m.connected();
        assert_eq!(m.take_frames(), [], "no channel, nothing to resume");
        m
    }

    fn call(m: &mut Machine, request: Request) -> oneshot::Receiver<Result<Value, CallError>> {
        let (reply, answer) = oneshot::channel();
        m.ask(Ask::Call { request, reply });
        answer
    }

    /// Enters `channel_id` (newest seq `last_seq`, history replied in full)
    /// and forgets what that showed.
    fn entered_in(m: &mut Machine, channel_id: ChannelId, last_seq: i64) {
        let (reply, mut answer) = oneshot::channel();
        m.ask(Ask::Enter {
            channel_id,
            page: 20,
            reply,
        });
        let enter = only_frame(m);
        m.on_frame(ServerFrame::reply(enter.id, &entered(channel_id, last_seq)));
        let history = only_frame(m);
        let first = (last_seq - 19).max(1);
        m.on_frame(ServerFrame::reply(
            history.id,
            &page_of(channel_id, first..=last_seq),
        ));
        assert!(answer.try_recv().is_ok_and(|r| r.is_ok()));
        m.take_events();
    }

    fn in_chat_at(last_seq: i64) -> Machine {
        let mut m = online();
        entered_in(&mut m, CHAT, last_seq);
        m
    }

    #[test]
    fn entering_fetches_the_last_page_and_answers_with_it() {
        let mut m = online();
        let (reply, mut answer) = oneshot::channel();
        m.ask(Ask::Enter {
            channel_id: CHAT,
            page: 20,
            reply,
        });
        let enter = only_frame(&mut m);
        assert_eq!(enter.request, Request::Enter { channel_id: CHAT });
        m.on_frame(ServerFrame::reply(enter.id, &entered(CHAT, 5)));
        let history = only_frame(&mut m);
        assert_eq!(
            history.request,
            Request::FetchMessages {
                channel_id: CHAT,
                after_seq: None,
                before_seq: None,
                limit: Some(20),
            }
        );
        assert_eq!(answer.try_recv(), Err(TryRecvError::Empty));

        m.on_frame(ServerFrame::reply(history.id, &page_of(CHAT, 1..=5)));
        let outcome = answer.try_recv().unwrap().unwrap();
        assert_eq!(outcome.entered, entered(CHAT, 5));
        assert_eq!(outcome.messages, page_of(CHAT, 1..=5).messages);
        assert_eq!(m.take_events(), []);
        let view = m.view.snapshot();
        assert_eq!(view.channel, Some((CHAT, "channel 7".into())));
        assert_eq!(view.last_seen, Seq(5));
        assert!(view.users.contains("bob"));
    }

    #[test]
    fn pushes_during_enter_are_held_until_the_history_then_shown_once_in_order() {
        let mut m = online();
        let (reply, mut answer) = oneshot::channel();
        m.ask(Ask::Enter {
            channel_id: CHAT,
            page: 20,
            reply,
        });
        let enter = only_frame(&mut m);
        m.on_frame(push(6));
        m.on_frame(push(5));
        m.on_frame(ServerFrame::reply(enter.id, &entered(CHAT, 5)));
        let history = only_frame(&mut m);
        m.on_frame(push(8));
        m.on_frame(push(7));
        assert_eq!(shown(&mut m), [] as [i64; 0]);

        m.on_frame(ServerFrame::reply(history.id, &page_of(CHAT, 1..=5)));
        assert!(answer.try_recv().is_ok_and(|r| r.is_ok()));
        assert_eq!(shown(&mut m), [6, 7, 8]);
        assert_eq!(m.take_frames(), []);
    }

    #[test]
    fn a_failed_enter_answers_with_the_error_and_enters_nothing() {
        let mut m = online();
        let (reply, mut answer) = oneshot::channel();
        m.ask(Ask::Enter {
            channel_id: CHAT,
            page: 20,
            reply,
        });
        let enter = only_frame(&mut m);
        m.on_frame(ServerFrame::Error {
            id: Some(enter.id),
            code: ErrorCode::NotJoined,
            message: "not a member".into(),
        });
        assert!(matches!(
            answer.try_recv(),
            Ok(Err(CallError::Server {
                code: ErrorCode::NotJoined,
                ..
            }))
        ));
        m.on_frame(push(1));
        assert_eq!(m.take_events(), []);
        assert_eq!(m.take_frames(), []);
        assert_eq!(m.view.snapshot().channel, None);
    }

    #[test]
    fn a_live_message_in_order_is_shown() {
        let mut m = in_chat_at(5);
        m.on_frame(push(6));
        assert_eq!(shown(&mut m), [6]);
        assert_eq!(m.take_frames(), []);
        assert_eq!(m.view.snapshot().last_seen, Seq(6));
    }

    #[test]
    fn a_repeated_or_old_seq_is_dropped() {
        let mut m = in_chat_at(5);
        m.on_frame(push(6));
        m.on_frame(push(6));
        m.on_frame(push(3));
        assert_eq!(shown(&mut m), [6]);
        assert_eq!(m.take_frames(), []);
    }

    fn write(m: &mut Machine, content: &str) -> oneshot::Receiver<Result<WriteOutcome, CallError>> {
        let (reply, answer) = oneshot::channel();
        m.ask(Ask::Write {
            channel_id: CHAT,
            client_msg_id: format!("id-{content}"),
            content: content.into(),
            reply,
        });
        answer
    }

    fn written(seq: i64) -> Written {
        Written {
            channel_id: CHAT,
            seq: Seq(seq),
            sent_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn the_push_of_ones_own_write_is_not_shown_again() {
        let mut m = in_chat_at(5);
        let mut answer = write(&mut m, "hi");
        let frame = only_frame(&mut m);
        m.on_frame(ServerFrame::reply(frame.id, &written(6)));
        assert_eq!(answer.try_recv(), Ok(Ok(WriteOutcome::Sent(written(6)))));
        assert_eq!(m.view.snapshot().last_seen, Seq(6));

        m.on_frame(push(6));
        m.on_frame(push(7));
        assert_eq!(shown(&mut m), [7]);
    }

    #[test]
    fn shown_messages_are_acknowledged_with_one_read_for_the_batch() {
        let mut m = in_chat_at(5);
        assert!(!m.ack_due(), "entering moved nothing");
        for seq in 6..=8 {
            m.on_frame(push(seq));
        }
        assert_eq!(shown(&mut m), [6, 7, 8]);
        assert!(m.ack_due());
        assert_eq!(m.take_frames(), [], "not one read per message");

        m.flush_acks();
        let read = only_frame(&mut m);
        assert_eq!(
            read.request,
            Request::Read {
                channel_id: CHAT,
                seq: Seq(8)
            }
        );
        assert!(!m.ack_due());
        m.flush_acks();
        assert_eq!(m.take_frames(), []);
    }

    #[test]
    fn own_messages_need_no_ack_and_leaving_acknowledges_first() {
        let mut m = in_chat_at(5);
        let _answer = write(&mut m, "mine");
        let frame = only_frame(&mut m);
        m.on_frame(ServerFrame::reply(frame.id, &written(6)));
        assert!(!m.ack_due(), "the server moved the writer's pointer");

        m.on_frame(push(7));
        shown(&mut m);
        let _left = call(&mut m, Request::Leave);
        let frames = m.take_frames();
        let requests: Vec<&Request> = frames.iter().map(|f| &f.request).collect();
        assert_eq!(
            requests,
            [
                &Request::Read {
                    channel_id: CHAT,
                    seq: Seq(7)
                },
                &Request::Leave
            ]
        );
    }

    #[test]
    fn entering_with_unread_starts_before_the_first_and_pages_the_rest() {
        let mut m = online();
        let (reply, mut answer) = oneshot::channel();
        m.ask(Ask::Enter {
            channel_id: CHAT,
            page: 20,
            reply,
        });
        let enter = only_frame(&mut m);
        let state = Entered {
            channel_id: CHAT,
            title: "chat".into(),
            last_read_seq: Seq(10),
            last_seq: Seq(160),
        };
        m.on_frame(ServerFrame::reply(enter.id, &state));
        let history = only_frame(&mut m);
        assert_eq!(history.request, fill_request(CHAT, Seq(10 - CONTEXT)));
        m.on_frame(ServerFrame::reply(history.id, &page_of(CHAT, 8..=107)));
        let outcome = answer.try_recv().expect("answered").expect("entered");
        assert_eq!(outcome.messages.len(), 100);
        assert_eq!(outcome.more_unread, 53);

        m.flush_acks();
        let read = only_frame(&mut m);
        assert_eq!(
            read.request,
            Request::Read {
                channel_id: CHAT,
                seq: Seq(107)
            },
            "only what was shown"
        );
        m.on_frame(push(161));
        assert_eq!(shown(&mut m), [161]);
        assert!(!m.ack_due(), "never past unread messages not yet shown");

        let (reply, mut more) = oneshot::channel();
        m.ask(Ask::More { reply });
        let next = only_frame(&mut m);
        assert_eq!(next.request, fill_request(CHAT, Seq(107)));
        m.on_frame(ServerFrame::reply(next.id, &page_of(CHAT, 108..=161)));
        let page = more.try_recv().expect("answered").expect("page");
        assert_eq!(page.first().map(|e| e.seq), Some(Seq(108)));
        assert_eq!(
            page.last().map(|e| e.seq),
            Some(Seq(160)),
            "live ones are shown already"
        );
        m.flush_acks();
        assert_eq!(
            only_frame(&mut m).request,
            Request::Read {
                channel_id: CHAT,
                seq: Seq(161)
            }
        );

        let (reply, mut none) = oneshot::channel();
        m.ask(Ask::More { reply });
        assert_eq!(m.take_frames(), []);
        assert_eq!(none.try_recv(), Ok(Ok(Vec::new())));
    }

    #[test]
    fn a_message_written_while_offline_is_queued_and_sent_once_back_online() {
        let mut m = in_chat_at(5);
        m.lost(&SocketEnd::Failed("reset".into()));
        let mut answer = write(&mut m, "later");
        assert_eq!(answer.try_recv(), Ok(Ok(WriteOutcome::Queued)));
        assert_eq!(m.take_frames(), []);
        assert_eq!(m.view.snapshot().queued, 1);

        m.connected();
        let frames = m.take_frames();
        let [enter, sent] = &frames[..] else {
            panic!("re-enter and the write: {frames:?}");
        };
        assert_eq!(enter.request, Request::Enter { channel_id: CHAT });
        assert_eq!(
            sent.request,
            Request::WriteMessage {
                channel_id: CHAT,
                client_msg_id: "id-later".into(),
                content: "later".into(),
            }
        );
        m.on_frame(ServerFrame::reply(sent.id, &written(6)));
        let events = m.take_events();
        assert!(
            matches!(&events[..], [Event::Message { seq: Seq(6), content, .. }] if content == "later"),
            "{events:?}"
        );
        assert_eq!(m.view.snapshot().queued, 0);
    }

    #[test]
    fn a_write_whose_answer_was_lost_is_sent_again_with_the_same_id() {
        let mut m = in_chat_at(5);
        let mut answer = write(&mut m, "once");
        let first = only_frame(&mut m);
        m.lost(&SocketEnd::Failed("reset".into()));
        assert_eq!(answer.try_recv(), Ok(Ok(WriteOutcome::Queued)));

        m.connected();
        let again = m
            .take_frames()
            .into_iter()
            .find(|f| matches!(f.request, Request::WriteMessage { .. }))
            .expect("resent");
        assert_eq!(again.request, first.request, "same client_msg_id");
    }

    #[test]
    fn a_write_the_server_was_too_slow_for_is_retried_once() {
        let mut m = in_chat_at(5);
        let mut answer = write(&mut m, "slow");
        let first = only_frame(&mut m);
        let unavailable = |id| ServerFrame::Error {
            id: Some(id),
            code: ErrorCode::Unavailable,
            message: "later".into(),
        };
        m.on_frame(unavailable(first.id));
        let retry = only_frame(&mut m);
        assert_eq!(retry.request, first.request);
        m.on_frame(unavailable(retry.id));
        assert!(matches!(
            answer.try_recv(),
            Ok(Err(CallError::Server {
                code: ErrorCode::Unavailable,
                ..
            }))
        ));
    }

    #[test]
    fn what_is_still_queued_when_the_session_ends_is_reported() {
        let mut m = in_chat_at(5);
        m.lost(&SocketEnd::Failed("reset".into()));
        let _a = write(&mut m, "a");
        let _b = write(&mut m, "b");
        m.abandon();
        assert_eq!(
            m.take_events(),
            [Event::Error("2 queued messages could not be sent".into())]
        );
        assert_eq!(m.view.snapshot().queued, 0);
    }

    #[test]
    fn typing_goes_out_at_most_once_per_interval_and_only_inside_a_channel() {
        let start = Instant::now();
        let mut outside = online();
        outside.ask(Ask::Typing { at: start });
        assert_eq!(outside.take_frames(), []);

        let mut m = in_chat_at(5);
        m.ask(Ask::Typing { at: start });
        assert_eq!(
            only_frame(&mut m).request,
            Request::Typing { channel_id: CHAT }
        );
        m.ask(Ask::Typing {
            at: start + Duration::from_secs(1),
        });
        assert_eq!(m.take_frames(), []);
        m.ask(Ask::Typing {
            at: start + TYPING_EVERY,
        });
        assert_eq!(m.take_frames().len(), 1);

        m.lost(&SocketEnd::Failed("reset".into()));
        m.ask(Ask::Typing {
            at: start + TYPING_EVERY * 3,
        });
        assert_eq!(m.take_frames(), [], "not while offline");
    }

    #[test]
    fn news_of_another_channel_is_first_once_until_it_is_entered() {
        let mut m = in_chat_at(5);
        let unread = |n| ServerFrame::Unread {
            channel_id: OTHER,
            title: "other".into(),
            last_seq: Seq(n),
            unread: n,
        };
        m.on_frame(unread(1));
        m.on_frame(unread(2));
        let firsts: Vec<bool> = m
            .take_events()
            .into_iter()
            .map(|e| matches!(e, Event::Unread { first: true, .. }))
            .collect();
        assert_eq!(firsts, [true, false]);
        assert_eq!(
            m.view.snapshot().activity.get(&OTHER),
            Some(&("other".to_owned(), 2))
        );

        entered_in(&mut m, OTHER, 2);
        assert!(m.view.snapshot().activity.is_empty());
        entered_in(&mut m, CHAT, 5);
        m.on_frame(unread(3));
        assert!(matches!(
            m.take_events()[..],
            [Event::Unread { first: true, .. }]
        ));
    }

    #[test]
    fn messages_of_another_channel_are_ignored() {
        let mut m = in_chat_at(5);
        m.on_frame(push_in(OTHER, 9));
        assert_eq!(m.take_events(), []);
        assert_eq!(m.take_frames(), []);
        let mut outside = online();
        outside.on_frame(push(1));
        assert_eq!(outside.take_events(), []);
    }

    #[test]
    fn a_gap_holds_live_messages_until_it_is_filled_then_releases_them_in_order() {
        let mut m = in_chat_at(5);
        m.on_frame(push(8));
        let fill = only_frame(&mut m);
        assert_eq!(fill.request, fill_after(5));
        m.on_frame(push(10));
        m.on_frame(push(9));
        assert_eq!(shown(&mut m), [] as [i64; 0]);
        assert_eq!(m.take_frames(), [], "one fill per gap");

        m.on_frame(ServerFrame::reply(fill.id, &page_of(CHAT, 6..=7)));
        assert_eq!(shown(&mut m), [6, 7, 8, 9, 10]);
        assert_eq!(m.take_frames(), []);
        assert_eq!(m.view.snapshot().last_seen, Seq(10));
    }

    #[test]
    fn a_fill_page_shorter_than_the_gap_asks_for_the_next_page() {
        let mut m = in_chat_at(5);
        m.on_frame(push(156));
        let first = only_frame(&mut m);
        assert_eq!(first.request, fill_after(5));
        m.on_frame(ServerFrame::reply(first.id, &page_of(CHAT, 6..=105)));
        let second = only_frame(&mut m);
        assert_eq!(second.request, fill_after(105));
        m.on_frame(push(157));
        m.on_frame(ServerFrame::reply(second.id, &page_of(CHAT, 106..=155)));

        assert_eq!(shown(&mut m), (6..=157).collect::<Vec<_>>());
        assert_eq!(m.take_frames(), []);
    }

    #[test]
    fn after_a_reconnect_full_fill_pages_are_followed_until_a_short_one() {
        let mut m = in_chat_at(5);
        m.lost(&SocketEnd::Failed("reset".into()));
        m.connected();
        let enter = only_frame(&mut m);
        m.on_frame(ServerFrame::reply(enter.id, &entered(CHAT, 155)));
        let first = only_frame(&mut m);
        assert_eq!(first.request, fill_after(5));
        m.on_frame(ServerFrame::reply(first.id, &page_of(CHAT, 6..=105)));
        let second = only_frame(&mut m);
        assert_eq!(second.request, fill_after(105));
        m.on_frame(ServerFrame::reply(second.id, &page_of(CHAT, 106..=155)));

        assert_eq!(shown(&mut m), (6..=155).collect::<Vec<_>>());
        assert_eq!(m.take_frames(), [], "a short page ends the fill");
    }

    #[test]
    fn a_failed_fill_is_reported_and_shows_what_was_held_until_the_next_push_retries() {
        let mut m = in_chat_at(5);
        m.on_frame(push(8));
        let fill = only_frame(&mut m);
        m.on_frame(push(9));
        m.on_frame(ServerFrame::Error {
            id: Some(fill.id),
            code: ErrorCode::Unavailable,
            message: "later".into(),
        });
        let events = m.take_events();
        assert!(
            matches!(&events[..], [Event::Error(e), Event::Message { seq: Seq(8), .. }, Event::Message { seq: Seq(9), .. }]
                if e.starts_with("could not fetch missed messages")),
            "{events:?}"
        );
        assert_eq!(m.take_frames(), [], "no retry until something new arrives");

        m.on_frame(push(10));
        let retry = only_frame(&mut m);
        assert_eq!(retry.request, fill_after(5));
        m.on_frame(ServerFrame::reply(retry.id, &page_of(CHAT, 6..=7)));
        assert_eq!(shown(&mut m), [6, 7, 10]);
    }

    #[test]
    fn a_reconnect_re_enters_the_channel_and_fills_what_was_missed() {
        let mut m = in_chat_at(5);
        m.on_frame(push(6));
        assert_eq!(shown(&mut m), [6]);
        assert_eq!(
            m.lost(&SocketEnd::Closed(String::new())),
            "closed by the server"
        );

        m.connected();
        let enter = only_frame(&mut m);
        assert_eq!(enter.request, Request::Enter { channel_id: CHAT });
        m.on_frame(push(9));
        assert_eq!(shown(&mut m), [] as [i64; 0]);
        m.on_frame(ServerFrame::reply(enter.id, &entered(CHAT, 9)));
        let fill = only_frame(&mut m);
        assert_eq!(fill.request, fill_after(6));
        m.on_frame(ServerFrame::reply(fill.id, &page_of(CHAT, 7..=9)));

        assert_eq!(shown(&mut m), [7, 8, 9]);
        assert_eq!(m.take_frames(), []);
        m.on_frame(push(10));
        assert_eq!(shown(&mut m), [10]);
    }

    #[test]
    fn a_channel_that_cannot_be_re_entered_is_left_with_an_error() {
        let mut m = in_chat_at(5);
        m.lost(&SocketEnd::Failed("reset".into()));
        m.connected();
        let enter = only_frame(&mut m);
        m.on_frame(ServerFrame::Error {
            id: Some(enter.id),
            code: ErrorCode::NotJoined,
            message: "not a member".into(),
        });
        assert_eq!(
            m.take_events(),
            [Event::Error(
                "could not re-enter channel 7: you are not a member of that channel".into()
            )]
        );
        assert_eq!(m.view.snapshot().channel, None);
        m.on_frame(push(6));
        assert_eq!(m.take_events(), []);
    }

    #[test]
    fn a_socket_dropped_mid_fill_resumes_the_fill_on_the_next_socket() {
        let mut m = in_chat_at(5);
        m.on_frame(push(8));
        let _lost_fill = only_frame(&mut m);
        assert_eq!(m.lost(&SocketEnd::Failed("reset".into())), "reset");

        m.connected();
        let enter = only_frame(&mut m);
        assert_eq!(enter.request, Request::Enter { channel_id: CHAT });
        m.on_frame(push(10));
        m.on_frame(ServerFrame::reply(enter.id, &entered(CHAT, 10)));
        let fill = only_frame(&mut m);
        assert_eq!(fill.request, fill_after(5));
        m.on_frame(ServerFrame::reply(fill.id, &page_of(CHAT, 6..=10)));

        assert_eq!(shown(&mut m), [6, 7, 8, 9, 10]);
        assert_eq!(m.take_frames(), []);
    }

    #[test]
    fn what_was_asked_on_a_dropped_socket_fails_and_asks_while_offline_are_refused() {
        let mut m = online();
        let mut call_answer = call(&mut m, Request::FetchChannels);
        let (reply, mut enter_answer) = oneshot::channel();
        m.ask(Ask::Enter {
            channel_id: CHAT,
            page: 20,
            reply,
        });
        assert_eq!(m.take_frames().len(), 2);
        m.on_frame(push(1));
        m.lost(&SocketEnd::Failed("reset".into()));

        let dropped = CallError::Disconnected("the connection dropped before the answer".into());
        assert_eq!(call_answer.try_recv(), Ok(Err(dropped.clone())));
        assert_eq!(enter_answer.try_recv(), Ok(Err(dropped)));

        let mut offline = call(&mut m, Request::FetchChannels);
        assert_eq!(
            offline.try_recv(),
            Ok(Err(CallError::Disconnected(
                "not connected right now; reconnecting".into()
            )))
        );
        assert_eq!(m.take_frames(), []);

        m.connected();
        assert_eq!(m.take_frames(), [], "the enter never happened");
        m.on_frame(push(1));
        assert_eq!(m.take_events(), []);
    }

    #[test]
    fn leaving_while_a_fill_is_pending_drops_what_the_fill_brings() {
        let mut m = in_chat_at(5);
        m.on_frame(push(8));
        let fill = only_frame(&mut m);
        let mut left = call(&mut m, Request::Leave);
        let leave = only_frame(&mut m);
        m.on_frame(ServerFrame::reply(leave.id, &Empty {}));
        assert!(left.try_recv().is_ok_and(|r| r.is_ok()));
        assert_eq!(m.view.snapshot().channel, None);

        m.on_frame(ServerFrame::reply(fill.id, &page_of(CHAT, 6..=7)));
        assert_eq!(m.take_events(), []);
        assert_eq!(m.take_frames(), []);
    }

    #[test]
    fn entering_another_channel_while_a_fill_is_pending_holds_its_pushes_until_its_history() {
        let mut m = in_chat_at(5);
        m.on_frame(push(8));
        let fill = only_frame(&mut m);
        let (reply, mut answer) = oneshot::channel();
        m.ask(Ask::Enter {
            channel_id: OTHER,
            page: 20,
            reply,
        });
        let enter = only_frame(&mut m);
        m.on_frame(ServerFrame::reply(enter.id, &entered(OTHER, 3)));
        let history = only_frame(&mut m);
        m.on_frame(push_in(OTHER, 4));

        m.on_frame(ServerFrame::reply(fill.id, &page_of(CHAT, 6..=7)));
        assert_eq!(m.take_events(), [], "the old channel's fill shows nothing");
        assert_eq!(m.take_frames(), []);

        m.on_frame(ServerFrame::reply(history.id, &page_of(OTHER, 1..=3)));
        assert!(answer.try_recv().is_ok_and(|r| r.is_ok()));
        assert_eq!(shown(&mut m), [4]);
    }

    #[test]
    fn a_re_enter_answered_after_the_user_entered_another_channel_changes_nothing() {
        let mut m = in_chat_at(5);
        m.lost(&SocketEnd::Failed("reset".into()));
        m.connected();
        let re_enter = only_frame(&mut m);
        entered_in(&mut m, OTHER, 3);

        m.on_frame(ServerFrame::Error {
            id: Some(re_enter.id),
            code: ErrorCode::NotJoined,
            message: "not a member".into(),
        });
        assert_eq!(m.take_events(), []);
        assert_eq!(m.view.snapshot().channel, Some((OTHER, "channel 8".into())));
        m.on_frame(push_in(OTHER, 4));
        assert_eq!(shown(&mut m), [4]);
    }

    #[test]
    fn quitting_the_entered_channel_leaves_it() {
        let mut m = in_chat_at(5);
        let mut quit = call(&mut m, Request::Quit { channel_id: CHAT });
        let frame = only_frame(&mut m);
        m.on_frame(ServerFrame::reply(frame.id, &Empty {}));
        assert!(quit.try_recv().is_ok_and(|r| r.is_ok()));
        assert_eq!(m.view.snapshot().channel, None);
        m.on_frame(push(6));
        assert_eq!(m.take_events(), []);
    }

    #[test]
    fn unread_and_invitation_pushes_become_events_and_teach_the_completer() {
        let mut m = online();
        m.on_frame(ServerFrame::Unread {
            channel_id: OTHER,
            title: "other".into(),
            last_seq: Seq(4),
            unread: 2,
        });
        m.on_frame(ServerFrame::InviteReceived {
            username: "carol".into(),
        });
        m.on_frame(ServerFrame::InviteAccepted {
            username: "dave".into(),
        });
        m.on_frame(ServerFrame::ChannelJoined {
            channel_id: OTHER,
            title: "other".into(),
        });
        assert_eq!(
            m.take_events(),
            [
                Event::Unread {
                    channel_id: OTHER,
                    title: "other".into(),
                    unread: 2,
                    first: true,
                },
                Event::InviteReceived("carol".into()),
                Event::InviteAccepted("dave".into()),
                Event::ChannelJoined {
                    channel_id: OTHER,
                    title: "other".into(),
                },
            ]
        );
        let view = m.view.snapshot();
        assert!(view.users.contains("carol") && view.users.contains("dave"));
        assert_eq!(view.channels.get(&OTHER), Some(&Some("other".to_owned())));
    }

    #[test]
    fn member_pushes_of_the_entered_channel_and_ended_connections_become_events() {
        let mut m = in_chat_at(5);
        m.on_frame(ServerFrame::MemberJoined {
            channel_id: OTHER,
            username: "zed".into(),
        });
        m.on_frame(ServerFrame::MemberJoined {
            channel_id: CHAT,
            username: "carol".into(),
        });
        m.on_frame(ServerFrame::MemberLeft {
            channel_id: CHAT,
            username: "dave".into(),
            reason: LeaveReason::Unregistered,
        });
        m.on_frame(ServerFrame::ConnectionEnded {
            username: "erin".into(),
        });
        assert_eq!(
            m.take_events(),
            [
                Event::MemberJoined {
                    channel_id: CHAT,
                    username: "carol".into()
                },
                Event::MemberLeft {
                    channel_id: CHAT,
                    username: "dave".into(),
                    unregistered: true
                },
                Event::ConnectionEnded("erin".into()),
            ]
        );
    }

    #[test]
    fn typing_is_shown_only_for_the_entered_channel() {
        let mut m = in_chat_at(5);
        for channel_id in [OTHER, CHAT] {
            m.on_frame(ServerFrame::Typing {
                channel_id,
                username: "bob".into(),
            });
        }
        assert_eq!(
            m.take_events(),
            [Event::Typing {
                channel_id: CHAT,
                username: "bob".into(),
            }]
        );
    }

    #[test]
    fn session_revoked_fails_what_was_asked_and_stops_the_link() {
        let mut m = online();
        let mut answer = call(&mut m, Request::FetchChannels);
        assert_eq!(m.on_frame(ServerFrame::SessionRevoked), Flow::Revoked);
        assert_eq!(m.take_events(), [Event::SessionRevoked]);
        assert!(matches!(
            answer.try_recv(),
            Ok(Err(CallError::Disconnected(_)))
        ));
        let mut later = call(&mut m, Request::FetchChannels);
        assert!(matches!(
            later.try_recv(),
            Ok(Err(CallError::Disconnected(_)))
        ));
    }

    #[test]
    fn a_reconnect_push_explains_the_close_that_follows() {
        let mut m = online();
        assert_eq!(
            m.on_frame(ServerFrame::Reconnect {
                reason: "deploy".into()
            }),
            Flow::Continue
        );
        assert_eq!(m.take_events(), []);
        assert_eq!(
            m.lost(&SocketEnd::Closed("going away".into())),
            "server restarting: deploy"
        );

        m.connected();
        assert_eq!(
            m.lost(&SocketEnd::Closed("bye".into())),
            "closed by the server: bye"
        );
        m.connected();
        assert_eq!(m.lost(&SocketEnd::Failed("reset".into())), "reset");
    }

    #[test]
    fn replies_are_matched_to_their_requests_by_id_in_any_order() {
        let mut m = online();
        let mut first = call(&mut m, Request::FetchChannels);
        let mut second = call(&mut m, Request::FetchUserInviteCode);
        let frames = m.take_frames();
        let [a, b] = &frames[..] else {
            panic!("expected two frames: {frames:?}");
        };
        assert!(a.id < b.id, "ids count up");
        assert_eq!(a.request, Request::FetchChannels);

        let code = UserInviteCode {
            invite_code: "abc".into(),
        };
        m.on_frame(ServerFrame::reply(b.id, &code));
        assert_eq!(first.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(
            second.try_recv(),
            Ok(Ok(serde_json::to_value(&code).unwrap()))
        );
        m.on_frame(ServerFrame::reply(b.id + 100, &Empty {}));
        m.on_frame(ServerFrame::reply(a.id, &Empty {}));
        assert_eq!(first.try_recv(), Ok(Ok(serde_json::json!({}))));
        assert_eq!(m.take_events(), []);
    }

    #[test]
    fn an_error_frame_answers_its_request_or_is_shown_when_it_has_no_id() {
        let mut m = online();
        let mut answer = call(&mut m, Request::FetchChannels);
        let frame = only_frame(&mut m);
        m.on_frame(ServerFrame::Error {
            id: Some(frame.id),
            code: ErrorCode::RateLimited,
            message: "slow down".into(),
        });
        assert_eq!(
            answer.try_recv(),
            Ok(Err(CallError::Server {
                code: ErrorCode::RateLimited,
                message: "slow down".into(),
            }))
        );
        m.on_frame(ServerFrame::Error {
            id: None,
            code: ErrorCode::InvalidRequest,
            message: "bad frame: eh".into(),
        });
        assert_eq!(
            m.take_events(),
            [Event::Error(describe_error(
                ErrorCode::InvalidRequest,
                "bad frame: eh"
            ))]
        );
    }

    #[test]
    fn a_keep_alive_goes_out_and_its_answer_is_swallowed() {
        let mut m = online();
        m.keep_alive();
        let frame = only_frame(&mut m);
        assert_eq!(frame.request, Request::KeepAlive);
        m.on_frame(ServerFrame::reply(frame.id, &Empty {}));
        assert_eq!(m.take_events(), []);
        assert!(m.pending.is_empty());
    }
}
