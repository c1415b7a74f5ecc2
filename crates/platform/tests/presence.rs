//! A reader that caches presence hashes (push's) against the real Redis:
//! it answers as a reader without a cache does after every write a
//! gateway makes, and it reuses a hash only while that hash's epoch, and
//! the epochs key itself, are unchanged. Each test has its own namespace.

use natter_platform::Config;
use natter_platform::cache::{self, Redis};
use natter_platform::presence::{self, PresenceReader, PresenceWriter, epochs};
use natter_protocol::subjects::Namespace;
use natter_protocol::{ChannelId, SocketId, UserId};

struct Scratch {
    redis: Redis,
    ns: Namespace,
    cached: PresenceReader,
    direct: PresenceReader,
}

impl Scratch {
    async fn new() -> Self {
        let config = Config::from_env().expect("defaults");
        let redis = cache::connect(&config).await.expect("Redis answers");
        let ns = Namespace::new(&format!("presence-{}", uuid::Uuid::new_v4().simple()));
        let cached = PresenceReader::new(redis.clone(), ns.clone()).caching_hashes();
        // The first read in a namespace finds no era, starts one and
        // keeps nothing.
        cached.live_sockets(&[UserId(0)]).await.expect("presence");
        Self {
            cached,
            direct: PresenceReader::new(redis.clone(), ns.clone()),
            redis,
            ns,
        }
    }

    /// A gateway's writer, marked alive.
    async fn gateway(&self, name: &str) -> PresenceWriter {
        let writer = PresenceWriter::new(self.redis.clone(), self.ns.clone(), name.into());
        writer.register().await.expect("liveness");
        writer
    }

    /// `(socket, entered)` of `user`'s live sockets as `reader` sees them,
    /// sorted.
    async fn sockets(reader: &PresenceReader, user: UserId) -> Vec<(u64, Option<i64>)> {
        let live = reader.live_sockets(&[user]).await.expect("presence");
        let mut sockets: Vec<_> = live
            .get(&user)
            .into_iter()
            .flatten()
            .map(|s| (s.socket.0, s.entered.map(|c| c.0)))
            .collect();
        sockets.sort_unstable();
        sockets
    }

    /// What both readers see of `user`, asserted equal.
    async fn agreed(&self, user: UserId) -> Vec<(u64, Option<i64>)> {
        let cached = Self::sockets(&self.cached, user).await;
        assert_eq!(cached, Self::sockets(&self.direct, user).await);
        cached
    }

    /// Writes a field behind every writer's back: no epoch moves.
    async fn sneak_in(&self, user: UserId, socket: u64) {
        let mut conn = self.redis.clone();
        let incarnation: String = redis::cmd("GET")
            .arg(presence::gateway_key(&self.ns, "gw-a"))
            .query_async(&mut conn)
            .await
            .expect("liveness");
        let _: () = redis::cmd("HSET")
            .arg(presence::user_key(&self.ns, user))
            .arg(presence::socket_field("gw-a", SocketId(socket)))
            .arg(format!("@{incarnation}"))
            .query_async(&mut conn)
            .await
            .expect("hset");
    }

    async fn clear(&self) {
        let mut conn = self.redis.clone();
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.ns.redis_prefix()))
            .query_async(&mut conn)
            .await
            .expect("keys");
        keys.push(epochs::key(&self.ns));
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut conn)
            .await
            .expect("del");
    }
}

#[tokio::test]
async fn a_caching_reader_sees_every_write_a_gateway_makes() {
    let s = Scratch::new().await;
    let gw = s.gateway("gw-a").await;
    let alice = UserId(7);
    let room = ChannelId(3);
    assert_eq!(s.agreed(alice).await, []);
    assert!(gw.admit(alice, SocketId(1), 5).await);
    assert_eq!(s.agreed(alice).await, [(1, None)]);
    gw.set(alice, SocketId(1), Some(room)).await;
    assert_eq!(s.agreed(alice).await, [(1, Some(3))]);
    assert!(gw.admit(alice, SocketId(2), 5).await);
    assert_eq!(s.agreed(alice).await, [(1, Some(3)), (2, None)]);
    gw.set(alice, SocketId(1), None).await;
    assert_eq!(s.agreed(alice).await, [(1, None), (2, None)]);
    gw.remove(alice, SocketId(1)).await;
    assert_eq!(s.agreed(alice).await, [(2, None)]);
    gw.remove(alice, SocketId(2)).await;
    assert_eq!(s.agreed(alice).await, []);
    s.clear().await;
}

#[tokio::test]
async fn a_caching_reader_reuses_a_hash_only_until_its_epoch_moves() {
    let s = Scratch::new().await;
    let gw = s.gateway("gw-a").await;
    let (alice, bob) = (UserId(10), UserId(11));
    gw.set(alice, SocketId(1), None).await;
    gw.set(bob, SocketId(2), None).await;
    let both = [alice, bob];
    let read = s.cached.live_sockets(&both).await.expect("presence");
    assert_eq!(read.len(), 2);

    // A field no epoch knows of is not seen through the cache...
    s.sneak_in(alice, 9).await;
    assert_eq!(Scratch::sockets(&s.cached, alice).await, [(1, None)]);
    assert_eq!(
        Scratch::sockets(&s.direct, alice).await,
        [(1, None), (9, None)]
    );
    // ...until a write through a writer moves alice's epoch; bob's copy,
    // in another bucket, still serves.
    s.sneak_in(bob, 8).await;
    gw.set(alice, SocketId(1), Some(ChannelId(4))).await;
    assert_eq!(s.agreed(alice).await, [(1, Some(4)), (9, None)]);
    assert_eq!(Scratch::sockets(&s.cached, bob).await, [(2, None)]);
    s.clear().await;
}

#[tokio::test]
async fn a_lost_epochs_key_makes_a_caching_reader_read_everything_again() {
    let s = Scratch::new().await;
    let gw = s.gateway("gw-a").await;
    let alice = UserId(20);
    gw.set(alice, SocketId(1), None).await;
    assert_eq!(Scratch::sockets(&s.cached, alice).await, [(1, None)]);
    s.sneak_in(alice, 9).await;
    assert_eq!(Scratch::sockets(&s.cached, alice).await, [(1, None)]);

    let mut conn = s.redis.clone();
    let _: () = redis::cmd("DEL")
        .arg(epochs::key(&s.ns))
        .query_async(&mut conn)
        .await
        .expect("del");
    assert_eq!(s.agreed(alice).await, [(1, None), (9, None)]);
    s.clear().await;
}

#[tokio::test]
async fn a_caching_reader_of_a_large_audience_reads_the_whole_epochs_key() {
    let s = Scratch::new().await;
    let gw = s.gateway("gw-a").await;
    // More users than one integer each is read for, in every bucket.
    let users: Vec<UserId> = (0..2_000).map(UserId).collect();
    for user in users.iter().step_by(100) {
        gw.set(*user, SocketId(user.0.unsigned_abs()), None).await;
    }
    let first = s.cached.live_sockets(&users).await.expect("presence");
    assert_eq!(first.len(), 20);
    s.sneak_in(UserId(1_999), 5).await;
    gw.set(UserId(1_998), SocketId(6), None).await;
    gw.remove(UserId(100), SocketId(100)).await;
    let cached = s.cached.live_sockets(&users).await.expect("presence");
    let direct = s.direct.live_sockets(&users).await.expect("presence");
    assert_eq!(cached.len(), 20, "1,998 in, 100 out; 1,999 unseen");
    assert!(cached.contains_key(&UserId(1_998)));
    assert!(!cached.contains_key(&UserId(100)));
    assert!(!cached.contains_key(&UserId(1_999)));
    assert!(direct.contains_key(&UserId(1_999)));
    s.clear().await;
}

#[tokio::test]
async fn a_field_judged_by_remembered_liveness_is_not_deleted_but_asked_about_again() {
    let s = Scratch::new().await;
    let reader = PresenceReader::new(s.redis.clone(), s.ns.clone())
        .caching_hashes()
        .caching_liveness(std::time::Duration::from_secs(60));
    let alice = UserId(30);
    let before = s.gateway("gw-a").await;
    before.set(alice, SocketId(1), None).await;
    assert_eq!(Scratch::sockets(&reader, alice).await, [(1, None)]);

    // The gateway restarts under its name and reuses socket id 1; the
    // reader still remembers the old incarnation.
    let after = s.gateway("gw-a").await;
    after.set(alice, SocketId(1), Some(ChannelId(5))).await;
    assert_eq!(Scratch::sockets(&reader, alice).await, []);
    assert_eq!(
        Scratch::sockets(&s.direct, alice).await,
        [(1, Some(5))],
        "the new incarnation's field was deleted"
    );
    assert_eq!(Scratch::sockets(&reader, alice).await, [(1, Some(5))]);
    s.clear().await;
}
