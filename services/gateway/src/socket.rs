//! One socket, one task: it reads frames, forwards requests one at a time
//! in order, writes replies and queued pushes, pings, and closes when asked.
//!
//! A single task selecting over everything (rather than a reader and a
//! writer task) keeps an idle socket small: one task, a small queue, two
//! small buffers. The only boxed future is the request in flight.

use crate::Shared;
use crate::registry::{CloseRequest, Control, Outbound};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::future::BoxFuture;
use natter_platform::metrics;
use natter_platform::presence::PresenceWriter;
use natter_platform::token::Claims;
use natter_protocol::frames::{ClientFrame, Request, ServerFrame};
use natter_protocol::rpc::{Caller, SocketRef};
use natter_protocol::{ChannelId, ErrorBody, ErrorCode, SocketId, UserId, close};
use opentelemetry::KeyValue;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::task::task_tracker::TaskTrackerToken;

/// Writes (a batch of frames and its flush) that take longer than this
/// mean the peer is gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing socket waits for the client's close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Frames written per flush when the queue has several.
const WRITE_BATCH: usize = 64;
/// Requests waiting behind the one in flight, by count and by bytes (a
/// client pipelining 64 KiB frames must not hold megabytes); more are
/// refused with `rate_limited`.
const MAX_PENDING: usize = 128;
const MAX_PENDING_BYTES: usize = 256 * 1024;
/// Answers queued in all (requests waiting and answers already known, such
/// as refusals): at this many the socket is not read until some are sent,
/// so TCP pushes back on the client and a flood of refused frames costs the
/// gateway nothing more (docs/protocol.md §2.6).
const MAX_QUEUED: usize = 2 * MAX_PENDING;
/// Frames refused with `rate_limited` one after another before the socket
/// is closed with 1008: a client that keeps sending into refusals is not
/// backing off.
const MAX_REFUSALS_IN_A_ROW: u32 = 100;

/// A queued answer: a request to run, or an answer already known (a bad
/// frame, a rate limit) that still waits its turn, because answers go out
/// in the order requests came in.
enum Pending {
    Run(ClientFrame, usize),
    Ready(ServerFrame),
}

/// What a finished request needs to update on this socket.
enum After {
    Nothing,
    Entered(ChannelId),
    Quit(ChannelId),
}

struct Done {
    id: u64,
    after: After,
    result: Result<serde_json::Value, ErrorBody>,
}

/// A token bucket: `rate` per second, up to `burst`.
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u32, burst: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            rate: f64::from(rate),
            burst: f64::from(burst),
            at: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Why the loop ended.
enum End {
    /// The peer closed or vanished.
    Gone,
    /// We close with this code.
    Close(u16, &'static str),
}

struct Socket {
    ws: WebSocket,
    shared: Arc<Shared>,
    control: Arc<Control>,
    caller: Caller,
    pending: VecDeque<Pending>,
    pending_bytes: usize,
    /// `rate_limited` answers since the last frame that was taken.
    refusals_in_a_row: u32,
    inflight: Option<BoxFuture<'static, Done>>,
    bucket: Bucket,
    last_seen: Instant,
    /// When queued pushes were last written.
    last_flush: Instant,
    /// When the pushes queued now are written, if they wait to be
    /// coalesced with those that follow them.
    flush_at: Option<Instant>,
}

/// A socket admitted at the upgrade: its user and id, already counted in
/// presence. Dropped before its socket runs (the upgrade failed), it has
/// presence forget the socket.
pub(crate) struct Admitted {
    pub user_id: UserId,
    pub socket_id: SocketId,
    claims: Option<Claims>,
    presence: PresenceWriter,
}

impl Admitted {
    pub(crate) fn new(
        user_id: UserId,
        socket_id: SocketId,
        claims: Claims,
        presence: PresenceWriter,
    ) -> Self {
        Self {
            user_id,
            socket_id,
            claims: Some(claims),
            presence,
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if self.claims.is_some() {
            self.presence.forget_later(self.user_id, self.socket_id);
        }
    }
}

/// Registers one upgraded socket and returns the future that runs it to
/// its end; `tracked` is held until then.
///
/// The setup runs here, outside the future, and the future captures only
/// the socket and what its end needs: an async fn would keep its
/// arguments (the WebSocket, the admission) in its state for its whole
/// life beside the socket built from them, and every idle socket would
/// carry them twice.
pub(crate) fn run(
    ws: WebSocket,
    shared: Arc<Shared>,
    mut admitted: Admitted,
    permit: OwnedSemaphorePermit,
    tracked: TaskTrackerToken,
) -> impl Future<Output = ()> + Send {
    let mut socket = admitted.claims.take().map(|claims| {
        let (user_id, socket_id) = (admitted.user_id, admitted.socket_id);
        let session_id = claims.session_id();
        let control =
            shared
                .registry
                .register(socket_id, user_id, session_id, shared.settings.queue);
        metrics::get().sockets.add(1, &[]);
        // A logout that raced the upgrade was not in the cache at the check
        // before upgrading; now that the socket is registered, a revocation
        // either is in the cache or will find the socket.
        if shared.revoked.contains(session_id) {
            crate::revocations::close_session(&shared.registry, session_id);
        }
        Socket {
            ws,
            caller: Caller {
                user_id,
                username: claims.name,
                session_id,
                socket: SocketRef {
                    gateway_id: shared.gateway_id.clone(),
                    socket_id,
                },
            },
            bucket: Bucket::new(shared.settings.rate, shared.settings.burst),
            shared: shared.clone(),
            control,
            pending: VecDeque::new(),
            pending_bytes: 0,
            refusals_in_a_row: 0,
            inflight: None,
            last_seen: Instant::now(),
            last_flush: Instant::now(),
            flush_at: None,
        }
    });
    drop(admitted);
    async move {
        // Used in place: bound by value, it would be copied out of the
        // captured one, and the state would hold it twice.
        let Some(running) = socket.as_mut() else {
            return;
        };
        let end = running.serve().await;
        // The closing steps are boxed: inline, their futures (a Redis
        // round trip, two timeouts) would size every idle socket's future,
        // which is as large as its largest await.
        if let End::Close(code, reason) = end {
            Box::pin(running.close(code, reason)).await;
        }
        let caller = &running.caller;
        let (user_id, session_id) = (caller.user_id, caller.session_id);
        let socket_id = caller.socket.socket_id;
        drop(socket.take());
        shared.registry.remove(socket_id, session_id);
        Box::pin(shared.presence.remove(user_id, socket_id)).await;
        metrics::get().sockets.add(-1, &[]);
        drop(permit);
        drop(tracked);
    }
}

fn rate_limited(id: Option<u64>, kind: &'static str) -> ServerFrame {
    count_request(kind, "rate_limited");
    ServerFrame::error(
        id,
        ErrorBody::new(ErrorCode::RateLimited, "too many requests; slow down"),
    )
}

fn count_request(kind: &'static str, outcome: &'static str) {
    metrics::get().requests.add(
        1,
        &[
            KeyValue::new("type", kind),
            KeyValue::new("outcome", outcome),
        ],
    );
}

async fn next_done(inflight: &mut Option<BoxFuture<'static, Done>>) -> Done {
    match inflight {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

impl Socket {
    /// The loop. Each branch's work is boxed, so the long-lived future of
    /// an idle socket holds only the select, not the largest handler.
    async fn serve(&mut self) -> End {
        let ping_every = self.shared.settings.ping;
        let idle = self.shared.settings.idle;
        let mut next_ping = Instant::now() + ping_every;
        let control = self.control.clone();
        loop {
            tokio::select! {
                biased;
                request = control.closed() => return Box::pin(self.finish(request)).await,
                done = next_done(&mut self.inflight) => {
                    self.inflight = None;
                    if let Err(end) = Box::pin(self.complete(done)).await {
                        return end;
                    }
                }
                // One timer for the coalesced write and the ping (each timer
                // costs every idle socket memory); before reads, so a client
                // that never stops sending still gets its pushes and pings.
                () = tokio::time::sleep_until(self.flush_at.map_or(next_ping, |at| at.min(next_ping))) => {
                    if self.flush_at.is_some_and(|at| at <= Instant::now()) {
                        self.flush_at = None;
                        if let Err(end) = Box::pin(self.write_queued()).await {
                            return end;
                        }
                    }
                    if next_ping <= Instant::now() {
                        if self.last_seen.elapsed() >= idle {
                            return End::Close(close::GOING_AWAY, "idle timeout");
                        }
                        let ping = Message::Ping(bytes::Bytes::new());
                        if let Err(end) = Box::pin(self.write(ping)).await {
                            return end;
                        }
                        next_ping = Instant::now() + ping_every;
                    }
                }
                () = control.queued() => {
                    // Written at once after a quiet spell; pushes that come
                    // faster wait to go out together in one write, unless
                    // they fill half the queue first.
                    let due = self.last_flush + self.shared.settings.coalesce;
                    if Instant::now() < due && !self.control.is_filling() {
                        if self.flush_at.is_none() && self.control.has_queued() {
                            self.flush_at = Some(due);
                        }
                    } else {
                        self.flush_at = None;
                        if let Err(end) = Box::pin(self.write_queued()).await {
                            return end;
                        }
                    }
                }
                // Not read while its answers are queued to the brim.
                msg = self.ws.recv(), if self.pending.len() < MAX_QUEUED => {
                    if let Err(end) = Box::pin(self.on_message(msg)).await {
                        return end;
                    }
                }
            }
        }
    }

    async fn on_message(&mut self, msg: Option<Result<Message, axum::Error>>) -> Result<(), End> {
        let msg = match msg {
            None | Some(Ok(Message::Close(_))) => return Err(End::Gone),
            Some(Err(e)) => {
                let too_big = e
                    .into_inner()
                    .downcast_ref::<tungstenite::Error>()
                    .is_some_and(|e| matches!(e, tungstenite::Error::Capacity(_)));
                return Err(if too_big {
                    End::Close(close::MESSAGE_TOO_BIG, "frame too large")
                } else {
                    End::Gone
                });
            }
            Some(Ok(msg)) => msg,
        };
        self.last_seen = Instant::now();
        if matches!(msg, Message::Text(_) | Message::Binary(_)) {
            metrics::get().frames_in.add(1, &[]);
        }
        match msg {
            Message::Text(text) => self.on_text(&text).await,
            Message::Binary(_) => {
                if !self.admit(0)? {
                    self.pending
                        .push_back(Pending::Ready(rate_limited(None, "invalid")));
                    return self.start_next().await;
                }
                count_request("invalid", "invalid_request");
                self.pending.push_back(Pending::Ready(ServerFrame::error(
                    None,
                    ErrorBody::new(
                        ErrorCode::InvalidRequest,
                        "binary frames are not accepted; send JSON text",
                    ),
                )));
                self.start_next().await
            }
            _ => Ok(()),
        }
    }

    /// Every frame, valid or not, spends a token; a full queue of requests
    /// refuses too. The refusal that follows [`MAX_REFUSALS_IN_A_ROW`] others
    /// ends the socket with 1008 instead.
    fn admit(&mut self, bytes: usize) -> Result<bool, End> {
        let runs =
            self.pending.len() < MAX_PENDING && self.pending_bytes + bytes <= MAX_PENDING_BYTES;
        if self.bucket.take() && runs {
            self.refusals_in_a_row = 0;
            return Ok(true);
        }
        self.refusals_in_a_row += 1;
        if self.refusals_in_a_row > MAX_REFUSALS_IN_A_ROW {
            return Err(End::Close(
                close::POLICY_VIOLATION,
                "too many refused frames",
            ));
        }
        Ok(false)
    }

    async fn on_text(&mut self, text: &str) -> Result<(), End> {
        let decoded = ClientFrame::decode(text);
        let entry = if self.admit(text.len())? {
            match decoded {
                Ok(frame) => {
                    self.pending_bytes += text.len();
                    Pending::Run(frame, text.len())
                }
                Err(e) => {
                    count_request("invalid", "invalid_request");
                    Pending::Ready(e.into_frame())
                }
            }
        } else {
            let (id, kind) = match &decoded {
                Ok(frame) => (Some(frame.id), frame.request.kind()),
                Err(e) => (e.id, "invalid"),
            };
            Pending::Ready(rate_limited(id, kind))
        };
        self.pending.push_back(entry);
        self.start_next().await
    }

    /// Starts queued requests until one is in flight: requests answered
    /// here (keep_alive, leave) are done at once, in their turn.
    async fn start_next(&mut self) -> Result<(), End> {
        while self.inflight.is_none() {
            let frame = match self.pending.pop_front() {
                None => return Ok(()),
                Some(Pending::Ready(answer)) => {
                    self.write_frame(&answer).await?;
                    continue;
                }
                Some(Pending::Run(frame, bytes)) => {
                    self.pending_bytes -= bytes;
                    frame
                }
            };
            let after = match &frame.request {
                Request::KeepAlive => None,
                Request::Leave => {
                    self.set_entered(None).await;
                    None
                }
                Request::Enter { channel_id } => Some(After::Entered(*channel_id)),
                Request::Quit { channel_id } => Some(After::Quit(*channel_id)),
                _ => Some(After::Nothing),
            };
            let Some(after) = after else {
                count_request(frame.request.kind(), "ok");
                let reply = ServerFrame::reply(frame.id, &serde_json::json!({}));
                self.write_frame(&reply).await?;
                continue;
            };
            let shared = self.shared.clone();
            let caller = self.caller.clone();
            self.inflight = Some(Box::pin(async move {
                let kind = frame.request.kind();
                let result = crate::forward::forward(&shared, caller, frame.request).await;
                count_request(
                    kind,
                    result.as_ref().map_or_else(|e| e.code.as_str(), |_| "ok"),
                );
                Done {
                    id: frame.id,
                    after,
                    result,
                }
            }));
        }
        Ok(())
    }

    async fn complete(&mut self, done: Done) -> Result<(), End> {
        if done.result.is_ok() {
            match done.after {
                After::Entered(channel) => self.set_entered(Some(channel)).await,
                After::Quit(channel) if self.control.entered() == Some(channel) => {
                    self.set_entered(None).await;
                }
                _ => {}
            }
        }
        let frame = match done.result {
            Ok(result) => ServerFrame::Reply {
                id: done.id,
                result,
            },
            Err(body) => ServerFrame::error(Some(done.id), body),
        };
        self.write_frame(&frame).await?;
        self.start_next().await
    }

    async fn set_entered(&mut self, channel: Option<ChannelId>) {
        if self.control.entered() == channel {
            return;
        }
        self.control.set_entered(channel);
        self.shared
            .presence
            .set(self.caller.user_id, self.caller.socket.socket_id, channel)
            .await;
    }

    /// Writes what is queued, a batch at a time, with one flush per batch.
    async fn write_queued(&mut self) -> Result<(), End> {
        loop {
            let batch = self.control.take(WRITE_BATCH);
            if batch.is_empty() {
                return Ok(());
            }
            // One deadline for the batch's writes: a clock read per frame
            // was a measurable share of a fan-out to thousands of sockets.
            let mut by = Instant::now() + WRITE_TIMEOUT;
            let mut written: u64 = 0;
            for out in batch {
                match out {
                    Outbound::Frame(text) => {
                        self.feed(Message::Text(text), by).await?;
                        written += 1;
                    }
                    Outbound::Leave(channel) => {
                        if self.control.entered() == Some(channel) {
                            // What is buffered (an answer, pushes) does not
                            // wait on Redis.
                            self.flush(by).await?;
                            self.set_entered(None).await;
                            // Waiting on Redis is not the peer's slowness.
                            by = Instant::now() + WRITE_TIMEOUT;
                        }
                    }
                }
            }
            metrics::get().frames_out.add(written, &[]);
            self.flush(by).await?;
            self.last_flush = Instant::now();
        }
    }

    /// Honours a close request: writes queued frames first unless the
    /// socket is a slow consumer, then the last frame, then closes.
    async fn finish(&mut self, request: CloseRequest) -> End {
        let by = Instant::now() + WRITE_TIMEOUT;
        if request.drain {
            for out in self.control.take(usize::MAX) {
                if let Outbound::Frame(text) = out
                    && self.feed(Message::Text(text), by).await.is_err()
                {
                    return End::Gone;
                }
            }
        }
        if let Some(frame) = request.last_frame
            && self.feed(Message::Text(frame), by).await.is_err()
        {
            return End::Gone;
        }
        if self.flush(by).await.is_err() {
            return End::Gone;
        }
        End::Close(request.code, request.reason)
    }

    /// Sends the close frame, then reads (and drops) what the client still
    /// sends until its own close frame, for at most [`CLOSE_LINGER`]:
    /// closing the TCP socket with unread data in it would reset the
    /// connection, and the client might lose the close frame and its code.
    async fn close(&mut self, code: u16, reason: &'static str) {
        let frame = Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        }));
        if !matches!(
            tokio::time::timeout(WRITE_TIMEOUT, self.ws.send(frame)).await,
            Ok(Ok(()))
        ) {
            return;
        }
        let _ = tokio::time::timeout(CLOSE_LINGER, async {
            while let Some(Ok(msg)) = self.ws.recv().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }

    /// Writes an answer at once (answers are never held back), with the
    /// pushes already queued in the same write: each write is a syscall,
    /// whose cost on loopback includes the peer's receive path. (In the
    /// throughput bench, 2.71–2.80 `sendto` per stored message instead of
    /// 2.83–2.96: an answer finds pushes waiting now and then.)
    async fn write_frame(&mut self, frame: &ServerFrame) -> Result<(), End> {
        metrics::get().frames_out.add(1, &[]);
        let by = Instant::now() + WRITE_TIMEOUT;
        self.feed(Message::Text(Utf8Bytes::from(frame.to_json())), by)
            .await?;
        if self.control.has_queued() {
            self.flush_at = None;
            self.write_queued().await
        } else {
            self.flush(by).await
        }
    }

    async fn write(&mut self, msg: Message) -> Result<(), End> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.ws.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(End::Gone),
        }
    }

    /// Buffers `msg`; the peer is gone if that cannot happen `by` then.
    async fn feed(&mut self, msg: Message, by: Instant) -> Result<(), End> {
        use futures::SinkExt;
        match tokio::time::timeout_at(by, self.ws.feed(msg)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(End::Gone),
        }
    }

    /// Writes what is buffered; the peer is gone if that is not done `by`
    /// then.
    async fn flush(&mut self, by: Instant) -> Result<(), End> {
        use futures::SinkExt;
        match tokio::time::timeout_at(by, self.ws.flush()).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(End::Gone),
        }
    }
}
