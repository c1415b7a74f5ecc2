//! What the prompt and the completer need to know about the session: who
//! is logged in, which channel they are in, the names and channels seen so
//! far, news from other channels and who is typing. Shared between the
//! socket task, the session and the REPL thread; the lock is never held
//! across an `.await`.

use natter_protocol::{ChannelId, Seq};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

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
    /// Channels seen, with their titles when known (for completion).
    pub channels: BTreeMap<ChannelId, Option<String>>,
    /// Unread counts of other channels since they were last entered, for
    /// the prompt's one-line summary: title and count.
    pub activity: BTreeMap<ChannelId, (String, i64)>,
    /// Who is typing in the entered channel, and until when to say so.
    pub typing: BTreeMap<String, Instant>,
    /// Own messages waiting for the link to come back.
    pub queued: usize,
}

impl View {
    /// The channels whose title is `title` (case-insensitive).
    #[must_use]
    pub fn channels_titled(&self, title: &str) -> Vec<ChannelId> {
        self.channels
            .iter()
            .filter(|(_, t)| t.as_deref().is_some_and(|t| t.eq_ignore_ascii_case(title)))
            .map(|(id, _)| *id)
            .collect()
    }

    /// A channel's title, else `channel <id>`.
    #[must_use]
    pub fn channel_name(&self, channel_id: ChannelId) -> String {
        match self.channels.get(&channel_id) {
            Some(Some(title)) => title.clone(),
            _ => format!("channel {channel_id}"),
        }
    }
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

    /// Sets (or clears) the logged-in user; logging out forgets the channel
    /// and the news.
    pub fn set_user(&self, username: Option<String>) {
        let mut v = self.lock();
        if username.is_none() {
            v.channel = None;
            v.last_seen = Seq::ZERO;
            v.activity.clear();
            v.typing.clear();
            v.queued = 0;
        }
        v.username = username;
    }

    /// Sets (or clears) the entered channel; its news is read now.
    pub fn set_channel(&self, channel: Option<(ChannelId, String)>, last_seen: Seq) {
        let mut v = self.lock();
        if let Some((id, title)) = &channel {
            v.channels.insert(*id, Some(title.clone()));
            v.activity.remove(id);
        }
        v.typing.clear();
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

    /// Remembers a channel (and its title, when known) for completion.
    pub fn learn_channel(&self, channel_id: ChannelId, title: Option<&str>) {
        let mut v = self.lock();
        let entry = v.channels.entry(channel_id).or_default();
        if let Some(title) = title {
            *entry = Some(title.to_owned());
        }
    }

    /// Forgets a channel the user is no longer a member of.
    pub fn forget_channel(&self, channel_id: ChannelId) {
        let mut v = self.lock();
        v.channels.remove(&channel_id);
        v.activity.remove(&channel_id);
    }

    /// Records an unread count of another channel; true when it is the
    /// first news of that channel since it was last entered.
    pub fn note_activity(&self, channel_id: ChannelId, title: &str, unread: i64) -> bool {
        let mut v = self.lock();
        v.channels.insert(channel_id, Some(title.to_owned()));
        v.activity
            .insert(channel_id, (title.to_owned(), unread))
            .is_none()
    }

    /// Says `username` is typing until `until`.
    pub fn note_typing(&self, username: &str, until: Instant) {
        self.lock().typing.insert(username.to_owned(), until);
    }

    /// Forgets typing notices that have run out.
    pub fn drop_stale_typing(&self, now: Instant) {
        self.lock().typing.retain(|_, until| *until > now);
    }

    /// Someone's message arrived: they are no longer typing it.
    pub fn stop_typing(&self, username: &str) {
        self.lock().typing.remove(username);
    }

    /// Sets how many own messages wait for the link.
    pub fn set_queued(&self, queued: usize) {
        self.lock().queued = queued;
    }
}
