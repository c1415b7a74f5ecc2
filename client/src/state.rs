//! What the prompt and the completer need to know about the session: who
//! is logged in, which channel they are in, and the names and channel ids
//! seen so far. Shared between the socket task, the session and the REPL
//! thread; the lock is never held across an `.await`.

use natter_protocol::{ChannelId, Seq};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

/// A snapshot of the session for display.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// The logged-in user.
    pub username: Option<String>,
    /// The entered channel and its title.
    pub channel: Option<(ChannelId, String)>,
    /// The highest seq shown in the entered channel.
    pub last_seen: Seq,
    /// Usernames seen (for completion).
    pub users: BTreeSet<String>,
    /// Channel ids seen (for completion).
    pub channels: BTreeSet<ChannelId>,
}

/// [`View`] behind a lock, cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct SharedView(Arc<Mutex<View>>);

impl SharedView {
    fn lock(&self) -> MutexGuard<'_, View> {
        // A panic while holding this lock leaves plain data behind; keep going.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A copy of the current state.
    #[must_use]
    pub fn snapshot(&self) -> View {
        self.lock().clone()
    }

    /// Sets (or clears) the logged-in user; logging out forgets the channel.
    pub fn set_user(&self, username: Option<String>) {
        let mut v = self.lock();
        if username.is_none() {
            v.channel = None;
            v.last_seen = Seq::ZERO;
        }
        v.username = username;
    }

    /// Sets (or clears) the entered channel.
    pub fn set_channel(&self, channel: Option<(ChannelId, String)>, last_seen: Seq) {
        let mut v = self.lock();
        if let Some((id, _)) = &channel {
            v.channels.insert(*id);
        }
        v.channel = channel;
        v.last_seen = last_seen;
    }

    /// Records the highest seq shown in the entered channel.
    pub fn set_last_seen(&self, seq: Seq) {
        self.lock().last_seen = seq;
    }

    /// Remembers a username for completion.
    pub fn learn_user(&self, username: &str) {
        let mut v = self.lock();
        if !v.users.contains(username) {
            v.users.insert(username.to_owned());
        }
    }

    /// Remembers a channel id for completion.
    pub fn learn_channel(&self, channel_id: ChannelId) {
        self.lock().channels.insert(channel_id);
    }
}
