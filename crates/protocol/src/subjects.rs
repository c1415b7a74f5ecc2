//! Names shared by services: NATS subjects, JetStream streams, key-value
//! buckets, and the Redis key prefix. Everything hangs off a [`Namespace`]
//! (`NATTER_NAMESPACE`) so that parallel tests, or two deployments on one
//! NATS/Redis, never see each other.
//!
//! The namespace also carries the deployment's partition count
//! (`NATTER_PARTITIONS`): an event's subject names its partition, so the
//! count is as much a part of the deployment's names as the prefix, and
//! every writer of an event subject must use the same one.

use crate::ChannelId;
use crate::events::Event;
use crate::partition::{DEFAULT_PARTITIONS, Partition, PartitionKey};

/// A sanitized namespace: lowercase `[a-z0-9_-]`, never empty; with the
/// number of event partitions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace {
    name: String,
    partitions: u16,
}

impl Namespace {
    /// Sanitizes `raw` (other characters become `_`), with
    /// [`DEFAULT_PARTITIONS`].
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
        Self {
            name: if s.is_empty() { "natter".into() } else { s },
            partitions: DEFAULT_PARTITIONS,
        }
    }

    /// The same namespace with `partitions` event partitions (at least 1).
    #[must_use]
    pub fn with_partitions(mut self, partitions: u16) -> Self {
        self.partitions = partitions.max(1);
        self
    }

    /// The namespace itself.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// How many partitions events are spread over.
    #[must_use]
    pub fn partitions(&self) -> u16 {
        self.partitions
    }

    /// Every partition, in order.
    pub fn all_partitions(&self) -> impl Iterator<Item = Partition> + use<> {
        (0..self.partitions).map(Partition)
    }

    fn upper(&self) -> String {
        self.name.to_ascii_uppercase().replace('-', "_")
    }

    /// Core NATS subject the message service answers (queue group
    /// [`Self::message_queue_group`]).
    #[must_use]
    pub fn rpc_message(&self) -> String {
        format!("{}.rpc.message", self.name)
    }

    /// Core NATS subject of [`crate::rpc::RpcBatch`]es, answered by the
    /// same queue group as [`Self::rpc_message`].
    #[must_use]
    pub fn rpc_message_batch(&self) -> String {
        format!("{}.rpc.message.batch", self.name)
    }

    /// Core NATS subject for auth's unregister request to message.
    #[must_use]
    pub fn rpc_unregister(&self) -> String {
        format!("{}.rpc.unregister", self.name)
    }

    /// Queue group shared by every message instance.
    #[must_use]
    pub fn message_queue_group(&self) -> String {
        format!("{}-message", self.name)
    }

    /// The events stream, e.g. `NATTER_EVENTS`.
    #[must_use]
    pub fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.upper())
    }

    /// Every subject of the events stream.
    #[must_use]
    pub fn events_wildcard(&self) -> String {
        format!("{}.evt.>", self.name)
    }

    /// Where `event` is published: `<ns>.evt.p<k>.<suffix>`, its partition
    /// first (see `Event::partition_key`, `Event::subject_suffix`).
    #[must_use]
    pub fn event_subject(&self, event: &Event) -> String {
        self.key_subject(event.partition_key())
    }

    /// Where a channel's events are published: [`Self::event_subject`] of
    /// any event of `channel`.
    #[must_use]
    pub fn channel_event_subject(&self, channel: ChannelId) -> String {
        self.key_subject(PartitionKey::Channel(channel))
    }

    /// Where the events of `key` are published.
    fn key_subject(&self, key: PartitionKey) -> String {
        self.partition_subject(key.partition(self.partitions), &key.subject_suffix())
    }

    /// A subject in `partition`: `<ns>.evt.p<k>.<suffix>`.
    #[must_use]
    pub fn partition_subject(&self, partition: Partition, suffix: &str) -> String {
        format!("{}p{partition}.{suffix}", self.events_prefix())
    }

    /// Every subject of `partition`: what its consumer reads.
    #[must_use]
    pub fn partition_wildcard(&self, partition: Partition) -> String {
        self.partition_subject(partition, ">")
    }

    /// What every event subject starts with, `<ns>.evt.`.
    #[must_use]
    pub fn events_prefix(&self) -> String {
        format!("{}.evt.", self.name)
    }

    /// Core NATS subject of a channel's typing notices: outside
    /// [`Self::events_wildcard`], so the events stream never stores them
    /// (they are worthless a few seconds later).
    #[must_use]
    pub fn typing_subject(&self, channel: ChannelId) -> String {
        format!("{}.eph.typing.{channel}", self.name)
    }

    /// Every channel's typing subject.
    #[must_use]
    pub fn typing_wildcard(&self) -> String {
        format!("{}.eph.typing.>", self.name)
    }

    /// Queue group of push's typing subscription: each notice is fanned
    /// out by one push instance.
    #[must_use]
    pub fn push_typing_queue_group(&self) -> String {
        format!("{}-push-typing", self.name)
    }

    /// The dead-letter stream, for events push could not handle.
    #[must_use]
    pub fn dlq_stream(&self) -> String {
        format!("{}_DLQ", self.upper())
    }

    /// Subject of a dead-lettered event.
    #[must_use]
    pub fn dlq_subject(&self, suffix: &str) -> String {
        format!("{}.dlq.{suffix}", self.name)
    }

    /// The event subject a dead-lettered event came from, partition
    /// included (push dead-letters `<ns>.evt.<suffix>` as
    /// `<ns>.dlq.<suffix>`). `None` for a subject outside this namespace's
    /// dead-letter stream. A redrive of an event that decodes publishes it
    /// to [`Self::event_subject`] instead, which follows a changed
    /// partition count.
    #[must_use]
    pub fn event_subject_of_dead_letter(&self, dlq_subject: &str) -> Option<String> {
        dlq_subject
            .strip_prefix(&self.dlq_subject(""))
            .filter(|suffix| !suffix.is_empty())
            .map(|suffix| format!("{}{suffix}", self.events_prefix()))
    }

    /// Every subject of the dead-letter stream.
    #[must_use]
    pub fn dlq_wildcard(&self) -> String {
        format!("{}.dlq.>", self.name)
    }

    /// Push's key-value bucket of partition leases and live instances
    /// (JetStream KV, stream `KV_<bucket>`).
    #[must_use]
    pub fn push_leases_bucket(&self) -> String {
        format!("{}_PUSH_LEASES", self.upper())
    }

    /// Push's key-value bucket of each partition's committed position.
    #[must_use]
    pub fn push_offsets_bucket(&self) -> String {
        format!("{}_PUSH_OFFSETS", self.upper())
    }

    /// Where one gateway hears its deliveries.
    #[must_use]
    pub fn gateway_subject(&self, gateway_id: &str) -> String {
        format!("{}.gw.{gateway_id}", self.name)
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
        format!("{}.sessions.revoked", self.name)
    }

    /// Core NATS broadcast: membership of a channel changed, drop caches.
    #[must_use]
    pub fn membership_subject(&self) -> String {
        format!("{}.membership", self.name)
    }

    /// Redis key prefix of everything in this namespace (the keys
    /// themselves are named by `natter_platform::presence`; tests delete
    /// the prefix).
    #[must_use]
    pub fn redis_prefix(&self) -> String {
        format!("{}:", self.name)
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
        assert!(!ns.typing_wildcard().starts_with(&ns.events_prefix()));
        assert_eq!(ns.push_leases_bucket(), "TEST_1_X_PUSH_LEASES");
        assert_eq!(ns.push_offsets_bucket(), "TEST_1_X_PUSH_OFFSETS");
    }

    #[test]
    fn an_event_subject_names_its_partition_then_its_channel_or_user() {
        let ns = Namespace::new("t").with_partitions(16);
        let joined = Event::MemberJoined {
            channel_id: ChannelId(4),
            user_id: crate::UserId(2),
            username: None,
        };
        assert_eq!(ns.event_subject(&joined), "t.evt.p4.channel.4");
        assert_eq!(
            ns.channel_event_subject(ChannelId(4)),
            ns.event_subject(&joined)
        );
        let invited = Event::InviteReceived {
            to: crate::UserId(4),
            from_username: "a".into(),
        };
        assert_eq!(ns.event_subject(&invited), "t.evt.p4.user.4");
        assert_eq!(ns.partition_wildcard(Partition(3)), "t.evt.p3.>");
        assert!(ns.event_subject(&joined).starts_with(&ns.events_prefix()));
        assert_eq!(ns.with_partitions(0).partitions(), 1);
    }

    #[test]
    fn a_dead_letter_goes_back_to_the_subject_it_came_from() {
        let ns = Namespace::new("n");
        let dlq = ns.dlq_subject("p3.channel.7");
        assert_eq!(
            ns.event_subject_of_dead_letter(&dlq).as_deref(),
            Some("n.evt.p3.channel.7")
        );
        assert_eq!(ns.event_subject_of_dead_letter("n.dlq."), None);
        assert_eq!(ns.event_subject_of_dead_letter("m.dlq.channel.7"), None);
    }
}
