//! The sockets this gateway holds, by id and by session.
//!
//! Each socket is owned by its task; the registry keeps only what others
//! need to reach it: its [`Control`], which holds the bounded outgoing
//! queue. The queue is a plain `VecDeque` that allocates only when
//! something is queued (a channel would reserve a block per socket up
//! front; at 200,000 idle sockets that is a quarter of a gigabyte). The
//! locks are std mutexes held for queue and map operations only (a
//! delivery queues to its sockets under the map's lock), never across
//! `.await`.

use axum::extract::ws::Utf8Bytes;
use natter_platform::presence::{LocalSocket, LocalSockets};
use natter_protocol::{ChannelId, SessionId, SocketId, UserId, close};
use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::Notify;

/// What a socket's task is asked to write or do, in queue order.
#[derive(Debug, Clone)]
pub(crate) enum Outbound {
    /// A serialized server frame, shared by every recipient.
    Frame(Utf8Bytes),
    /// The user left this channel (quit elsewhere): leave it if entered.
    Leave(ChannelId),
}

/// A request to close a socket, out of band so that a full queue cannot
/// delay it.
#[derive(Debug, Clone)]
pub(crate) struct CloseRequest {
    /// WebSocket close code.
    pub code: u16,
    /// Close reason.
    pub reason: &'static str,
    /// A last frame to send before closing (e.g. `session_revoked`).
    pub last_frame: Option<Utf8Bytes>,
    /// Whether queued frames are written first (not for a slow consumer).
    pub drain: bool,
}

/// What is shared between a socket's task and the rest of the gateway.
#[derive(Debug)]
pub(crate) struct Control {
    /// Its user.
    pub user_id: UserId,
    /// The entered channel id, 0 when none; read by the presence
    /// heartbeat when it re-registers.
    entered: AtomicI64,
    close: Mutex<Option<CloseRequest>>,
    notify: Notify,
    queue: Mutex<VecDeque<Outbound>>,
    capacity: usize,
    queued: Notify,
}

/// The queue is full: the socket is a slow consumer.
#[derive(Debug)]
pub(crate) struct Full;

/// Past this many slots, an emptied queue gives its memory back.
const KEEP_CAPACITY: usize = 8;

impl Control {
    fn new(user_id: UserId, capacity: usize) -> Self {
        Self {
            user_id,
            entered: AtomicI64::new(0),
            close: Mutex::new(None),
            notify: Notify::new(),
            queue: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            queued: Notify::new(),
        }
    }

    /// Queues an item for the socket's task, without waiting.
    ///
    /// The socket's task is woken when the queue stops being empty and
    /// again when it fills to half its capacity ([`Control::is_filling`]):
    /// a task holding pushes back to write them together must not wait
    /// while a burst (a backlog delivered after an outage) fills the queue
    /// and closes the socket as a slow consumer.
    ///
    /// Returns whether the queue now holds half its capacity or more.
    pub(crate) fn push(&self, item: Outbound) -> Result<bool, Full> {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if queue.len() >= self.capacity {
            return Err(Full);
        }
        let was_empty = queue.is_empty();
        queue.push_back(item);
        let len = queue.len();
        drop(queue);
        if was_empty || len == self.half() {
            self.queued.notify_one();
        }
        Ok(len >= self.half())
    }

    fn half(&self) -> usize {
        self.capacity.div_ceil(2)
    }

    /// Whether the queue holds half its capacity or more: time to write
    /// it, however recently the socket was written.
    pub(crate) fn is_filling(&self) -> bool {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
            >= self.half()
    }

    /// Takes up to `max` queued items, oldest first.
    pub(crate) fn take(&self, max: usize) -> Vec<Outbound> {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let n = queue.len().min(max);
        let items: Vec<Outbound> = queue.drain(..n).collect();
        if queue.is_empty() && queue.capacity() > KEEP_CAPACITY {
            queue.shrink_to_fit();
        }
        items
    }

    /// Whether anything is queued.
    pub(crate) fn has_queued(&self) -> bool {
        !self
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// Resolves when something may have been queued since the last call.
    pub(crate) async fn queued(&self) {
        self.queued.notified().await;
    }

    /// The entered channel.
    pub(crate) fn entered(&self) -> Option<ChannelId> {
        match self.entered.load(Ordering::Relaxed) {
            0 => None,
            id => Some(ChannelId(id)),
        }
    }

    /// Records the entered channel.
    pub(crate) fn set_entered(&self, channel: Option<ChannelId>) {
        self.entered
            .store(channel.map_or(0, |c| c.0), Ordering::Relaxed);
    }

    /// Asks the socket to close; the first request wins: whether this one
    /// did.
    pub(crate) fn close(&self, request: CloseRequest) -> bool {
        let mut slot = self.close.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_some() {
            return false;
        }
        *slot = Some(request);
        drop(slot);
        self.notify.notify_one();
        true
    }

    /// Resolves when a close is requested: the request.
    pub(crate) async fn closed(&self) -> CloseRequest {
        loop {
            if let Some(r) = self
                .close
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
            {
                return r;
            }
            self.notify.notified().await;
        }
    }
}

/// The slow-consumer close: the queue is full.
pub(crate) const SLOW_CONSUMER: CloseRequest = CloseRequest {
    code: close::TRY_AGAIN_LATER,
    reason: "slow consumer",
    last_frame: None,
    drain: false,
};

/// All sockets of this gateway.
#[derive(Debug)]
pub(crate) struct Registry {
    /// Socket ids count up from a random start: a gateway restarted under
    /// the same id (a pod's container restart) must never reuse the ids
    /// its crashed predecessor left in Redis presence, or deliveries meant
    /// for an old socket would reach a new one.
    next_id: AtomicU64,
    /// Looked up thousands of times per delivery batch to a large channel,
    /// so with a fast hasher: the ids are this gateway's own counter, not
    /// chosen by anyone who could aim collisions at it.
    sockets: Mutex<HashMap<SocketId, Arc<Control>, foldhash::fast::RandomState>>,
    sessions: Mutex<HashMap<SessionId, Vec<SocketId>>>,
    /// Set when the gateway drains: sockets registered later are closed at
    /// once with the same request.
    closing: Mutex<Option<CloseRequest>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new(natter_platform::random::seed())
    }
}

impl Registry {
    /// A registry whose first socket id is `seed + 1`.
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            next_id: AtomicU64::new(seed),
            sockets: Mutex::default(),
            sessions: Mutex::default(),
            closing: Mutex::default(),
        }
    }

    /// Closes every socket with `request`, and every socket registered
    /// from now on.
    pub(crate) fn close_all(&self, request: &CloseRequest) -> usize {
        *self.closing.lock().unwrap_or_else(PoisonError::into_inner) = Some(request.clone());
        let all = self.all();
        for (_, control) in &all {
            control.close(request.clone());
        }
        all.len()
    }

    /// Whether a socket is still registered.
    pub(crate) fn contains(&self, id: SocketId) -> bool {
        self.sockets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&id)
    }

    /// A fresh socket id, for a socket about to be registered.
    pub(crate) fn next_id(&self) -> SocketId {
        SocketId(self.next_id.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Registers socket `id` (from [`Registry::next_id`]) with a queue of
    /// `queue` items: its control.
    pub(crate) fn register(
        &self,
        id: SocketId,
        user_id: UserId,
        session_id: SessionId,
        queue: usize,
    ) -> Arc<Control> {
        let control = Arc::new(Control::new(user_id, queue));
        self.sockets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, control.clone());
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(session_id)
            .or_default()
            .push(id);
        if let Some(request) = self
            .closing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            control.close(request);
        }
        control
    }

    /// Forgets a socket.
    pub(crate) fn remove(&self, id: SocketId, session_id: SessionId) {
        self.sockets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(ids) = sessions.get_mut(&session_id) {
            ids.retain(|s| *s != id);
            if ids.is_empty() {
                sessions.remove(&session_id);
            }
        }
    }

    /// Queues `item` for each socket in `ids` that is still here; a full
    /// queue closes that socket as a slow consumer, without waiting.
    ///
    /// The sockets are queued to under the registry's lock: a push is a
    /// short lock of the socket's queue, and a copy of thousands of control
    /// blocks per delivery first was a measurable share of a fan-out.
    ///
    /// Returns whether a queue it was added to now holds half its capacity
    /// or more.
    pub(crate) fn send(&self, ids: &[SocketId], item: &Outbound) -> bool {
        let mut filling = false;
        let mut slow = Vec::new();
        {
            let sockets = self.sockets.lock().unwrap_or_else(PoisonError::into_inner);
            for (id, control) in ids.iter().filter_map(|id| Some((id, sockets.get(id)?))) {
                match control.push(item.clone()) {
                    Ok(half) => filling |= half,
                    Err(Full) => {
                        if control.close(SLOW_CONSUMER) {
                            slow.push((*id, control.user_id));
                        }
                    }
                }
            }
        }
        // Logged without the lock: a backlog can close thousands at once.
        for (socket_id, user_id) in slow {
            tracing::info!(%socket_id, %user_id, "queue full: closing a slow consumer");
        }
        filling
    }

    /// The control blocks of a session's sockets.
    pub(crate) fn session(&self, session_id: SessionId) -> Vec<Arc<Control>> {
        let ids = self
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&session_id)
            .cloned()
            .unwrap_or_default();
        let sockets = self.sockets.lock().unwrap_or_else(PoisonError::into_inner);
        ids.iter()
            .filter_map(|id| sockets.get(id).cloned())
            .collect()
    }

    /// Every socket: id and control.
    pub(crate) fn all(&self) -> Vec<(SocketId, Arc<Control>)> {
        self.sockets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(id, c)| (*id, c.clone()))
            .collect()
    }
}

/// What the presence heartbeat re-registers.
impl LocalSockets for Registry {
    fn snapshot(&self) -> Vec<LocalSocket> {
        self.all()
            .into_iter()
            .map(|(socket, control)| LocalSocket {
                user: control.user_id,
                socket,
                entered: control.entered(),
            })
            .collect()
    }

    fn holds(&self, socket: SocketId) -> bool {
        self.contains(socket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (UserId, SessionId) {
        (UserId(1), SessionId(uuid::Uuid::new_v4()))
    }

    #[tokio::test]
    async fn a_full_queue_closes_the_socket_as_a_slow_consumer() {
        let registry = Registry::default();
        let (user, session) = ids();
        let id = registry.next_id();
        let control = registry.register(id, user, session, 4);
        let frame = Outbound::Frame("{}".into());
        let filling: Vec<bool> = (0..4).map(|_| registry.send(&[id], &frame)).collect();
        assert_eq!(
            filling,
            [false, true, true, true],
            "half full from the second on"
        );
        assert!(!registry.send(&[id], &frame), "the fifth finds it full");
        assert_eq!(control.closed().await.code, close::TRY_AGAIN_LATER);
    }

    /// Whether the socket's task would be woken now.
    async fn woken(control: &Control) -> bool {
        tokio::time::timeout(std::time::Duration::from_millis(20), control.queued())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_queue_wakes_its_socket_when_it_stops_being_empty_and_at_half_full() {
        let control = Control::new(UserId(1), 8);
        let frame = || Outbound::Frame("{}".into());
        control.push(frame()).expect("room");
        assert!(woken(&control).await, "the first push wakes the socket");
        for _ in 2..4 {
            control.push(frame()).expect("room");
        }
        assert!(
            !woken(&control).await,
            "pushes into a non-empty queue do not"
        );
        assert!(!control.is_filling());
        control.push(frame()).expect("room");
        assert!(control.is_filling());
        assert!(
            woken(&control).await,
            "the push that fills half the queue does"
        );
        assert_eq!(control.take(usize::MAX).len(), 4);
        control.push(frame()).expect("room");
        assert!(woken(&control).await, "an emptied queue wakes it again");
    }

    #[test]
    fn an_emptied_queue_gives_its_memory_back() {
        let control = Control::new(UserId(1), 1000);
        for _ in 0..100 {
            control.push(Outbound::Frame("{}".into())).expect("room");
        }
        assert_eq!(control.take(64).len(), 64);
        assert_eq!(control.take(64).len(), 36);
        assert!(control.queue.lock().expect("lock").capacity() <= KEEP_CAPACITY);
    }

    #[test]
    fn sessions_index_their_sockets_until_removed() {
        let registry = Registry::default();
        let (user, session) = ids();
        let (a, b) = (registry.next_id(), registry.next_id());
        registry.register(a, user, session, 4);
        registry.register(b, user, session, 4);
        assert_eq!(registry.session(session).len(), 2);
        registry.remove(a, session);
        assert_eq!(registry.session(session).len(), 1);
        registry.remove(b, session);
        assert!(registry.session(session).is_empty());
        assert!(registry.all().is_empty());
    }

    #[tokio::test]
    async fn a_socket_registered_while_draining_is_closed_at_once() {
        let registry = Registry::default();
        let (user, session) = ids();
        let drain = CloseRequest {
            code: close::SERVICE_RESTART,
            reason: "draining",
            last_frame: None,
            drain: true,
        };
        let before = registry.register(registry.next_id(), user, session, 4);
        assert_eq!(registry.close_all(&drain), 1);
        let after = registry.register(registry.next_id(), user, session, 4);
        assert_eq!(before.closed().await.code, close::SERVICE_RESTART);
        assert_eq!(after.closed().await.code, close::SERVICE_RESTART);
    }

    #[test]
    fn socket_ids_start_from_the_seed_so_restarts_do_not_reuse_them() {
        let first = Registry::new(1_000).next_id();
        assert_eq!(first, SocketId(1_001));
        let a = Registry::default().next_id();
        let b = Registry::default().next_id();
        assert_ne!(a, b);
    }

    #[test]
    fn the_first_close_request_wins() {
        let control = Control::new(UserId(1), 1);
        control.close(SLOW_CONSUMER);
        control.close(CloseRequest {
            code: close::POLICY_VIOLATION,
            reason: "x",
            last_frame: None,
            drain: true,
        });
        let slot = control.close.lock().expect("lock").clone().expect("set");
        assert_eq!(slot.code, close::TRY_AGAIN_LATER);
    }
}
