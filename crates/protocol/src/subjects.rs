//! Names shared by services: NATS subjects, JetStream streams and
//! consumers, and the Redis key prefix. Everything hangs off a [`Namespace`]
//! (`NATTER_NAMESPACE`) so that parallel tests, or two deployments on one
//! NATS/Redis, never see each other.

use crate::ChannelId;

/// A sanitized namespace: lowercase `[a-z0-9_-]`, never empty.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace(String);

impl Namespace {
    /// Sanitizes `raw` (other characters become `_`).
    #[must_use]
    pub fn new(raw: &str) -> Self {
        let s: String = raw
            .chars()
            .map(|c| {
                let c = c.to_ascii_lowercase();
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Self(if s.is_empty() { "natter".into() } else { s })
    }

    /// The namespace itself.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn upper(&self) -> String {
        self.0.to_ascii_uppercase().replace('-', "_")
    }

    /// Core NATS subject the message service answers (queue group
    /// [`Self::message_queue_group`]).
    #[must_use]
    pub fn rpc_message(&self) -> String {
        format!("{}.rpc.message", self.0)
    }

    /// Core NATS subject for auth's unregister request to message.
    #[must_use]
    pub fn rpc_unregister(&self) -> String {
        format!("{}.rpc.unregister", self.0)
    }

    /// Queue group shared by every message instance.
    #[must_use]
    pub fn message_queue_group(&self) -> String {
        format!("{}-message", self.0)
    }

    /// The events stream, e.g. `NATTER_EVENTS`.
    #[must_use]
    pub fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.upper())
    }

    /// Every subject of the events stream.
    #[must_use]
    pub fn events_wildcard(&self) -> String {
        format!("{}.evt.>", self.0)
    }

    /// The subject of one event (see `Event::subject_suffix`).
    #[must_use]
    pub fn event_subject(&self, suffix: &str) -> String {
        format!("{}.evt.{suffix}", self.0)
    }

    /// Core NATS subject of a channel's typing notices: outside
    /// [`Self::events_wildcard`], so the events stream never stores them
    /// (they are worthless a few seconds later).
    #[must_use]
    pub fn typing_subject(&self, channel: ChannelId) -> String {
        format!("{}.eph.typing.{channel}", self.0)
    }

    /// Every channel's typing subject.
    #[must_use]
    pub fn typing_wildcard(&self) -> String {
        format!("{}.eph.typing.>", self.0)
    }

    /// Queue group of push's typing subscription: each notice is fanned
    /// out by one push instance.
    #[must_use]
    pub fn push_typing_queue_group(&self) -> String {
        format!("{}-push-typing", self.0)
    }

    /// The dead-letter stream, for events push could not handle.
    #[must_use]
    pub fn dlq_stream(&self) -> String {
        format!("{}_DLQ", self.upper())
    }

    /// Subject of a dead-lettered event.
    #[must_use]
    pub fn dlq_subject(&self, suffix: &str) -> String {
        format!("{}.dlq.{suffix}", self.0)
    }

    /// The event subject a dead-lettered event came from (the inverse of
    /// [`Self::dlq_subject`] over [`Self::event_subject`]): where a
    /// redrive publishes it again. `None` for a subject outside this
    /// namespace's dead-letter stream.
    #[must_use]
    pub fn event_subject_of_dead_letter(&self, dlq_subject: &str) -> Option<String> {
        dlq_subject
            .strip_prefix(&self.dlq_subject(""))
            .filter(|suffix| !suffix.is_empty())
            .map(|suffix| self.event_subject(suffix))
    }

    /// Every subject of the dead-letter stream.
    #[must_use]
    pub fn dlq_wildcard(&self) -> String {
        format!("{}.dlq.>", self.0)
    }

    /// Push's durable consumer.
    #[must_use]
    pub fn push_consumer(&self) -> String {
        "push".to_owned()
    }

    /// Where one gateway hears its deliveries.
    #[must_use]
    pub fn gateway_subject(&self, gateway_id: &str) -> String {
        format!("{}.gw.{gateway_id}", self.0)
    }

    /// Revoked sessions: a stream, so a gateway that starts late still
    /// learns every revocation younger than a token.
    #[must_use]
    pub fn sessions_stream(&self) -> String {
        format!("{}_SESSIONS", self.upper())
    }

    /// Subject of revoked-session announcements.
    #[must_use]
    pub fn session_revoked_subject(&self) -> String {
        format!("{}.sessions.revoked", self.0)
    }

    /// Core NATS broadcast: membership of a channel changed, drop caches.
    #[must_use]
    pub fn membership_subject(&self) -> String {
        format!("{}.membership", self.0)
    }

    /// Redis key prefix of everything in this namespace (the keys
    /// themselves are named by `natter_platform::presence`; tests delete
    /// the prefix).
    #[must_use]
    pub fn redis_prefix(&self) -> String {
        format!("{}:", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_sanitized_and_prefix_everything() {
        let ns = Namespace::new("Test.1 x");
        assert_eq!(ns.as_str(), "test_1_x");
        assert_eq!(ns.events_stream(), "TEST_1_X_EVENTS");
        assert_eq!(ns.gateway_subject("g-1"), "test_1_x.gw.g-1");
        assert_eq!(ns.redis_prefix(), "test_1_x:");
        assert_eq!(Namespace::new("natter").events_stream(), "NATTER_EVENTS");
        assert_eq!(ns.typing_subject(ChannelId(7)), "test_1_x.eph.typing.7");
        assert_eq!(ns.typing_wildcard(), "test_1_x.eph.typing.>");
        assert!(!ns.typing_wildcard().starts_with(&ns.event_subject("")));
    }

    #[test]
    fn a_dead_letter_goes_back_to_the_subject_it_came_from() {
        let ns = Namespace::new("n");
        let dlq = ns.dlq_subject("channel.7");
        assert_eq!(
            ns.event_subject_of_dead_letter(&dlq).as_deref(),
            Some("n.evt.channel.7")
        );
        assert_eq!(ns.event_subject_of_dead_letter("n.dlq."), None);
        assert_eq!(ns.event_subject_of_dead_letter("m.dlq.channel.7"), None);
    }
}
