//! Partitions and their owners: several push instances, one stopped,
//! restarted or killed while events flow; leases lost and taken over.

use crate::support::{Harness, Instance, Tap, WAIT, eventually, frames, message, origin};
use natter_protocol::ChannelId;
use natter_protocol::events::Event;
use natter_protocol::partition::PartitionKey;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a rebalance may take: a lease expiry (2 s here) and a few
/// renewal periods.
const REBALANCE: Duration = Duration::from_secs(20);

fn two_second_leases(partitions: u16) -> impl FnOnce(&mut natter_platform::Config) {
    move |c| {
        c.partitions = partitions;
        c.push_lease_secs = 2;
    }
}

/// What a gateway received: each message's channel and seq, in arrival
/// order.
fn collect(mut tap: Tap) -> Arc<Mutex<Vec<(i64, i64)>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let into = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Some(batch) = tap.within(Duration::from_secs(60)).await {
            for (_, frame) in frames(&batch) {
                if let (Some(channel), Some(seq)) =
                    (frame["channel_id"].as_i64(), frame["seq"].as_i64())
                {
                    into.lock().expect("lock").push((channel, seq));
                }
            }
        }
    });
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_s_order_holds_while_instances_stop_restart_and_die() {
    let mut h = Harness::spawn_with(two_second_leases(4)).await;
    let b = Instance::start(&h.app.config).await;
    eventually("two instances share the partitions", REBALANCE, || async {
        h.shares().await == Some(vec![2, 2])
    })
    .await;
    let (alice, bob) = (h.user("alice").await, h.user("bob").await);
    let mut channels = Vec::new();
    for i in 0..6 {
        channels.push(h.channel(&format!("c{i}"), &[alice, bob]).await);
    }
    h.gateway_alive("gw-a").await;
    for (socket, channel) in (1..).zip(&channels) {
        h.online(bob, "gw-a", socket, Some(*channel)).await;
    }
    let seen = collect(h.tap("gw-a").await);
    let publish_rounds = async |h: &Harness, rounds: std::ops::RangeInclusive<i64>| {
        for seq in rounds {
            for channel in &channels {
                h.publish(&message(*channel, seq, alice, origin("gw-x", 9)))
                    .await;
            }
        }
    };

    publish_rounds(&h, 1..=20).await;
    h.app.stop_service().await;
    publish_rounds(&h, 21..=30).await;
    h.app.start_service().await;
    publish_rounds(&h, 31..=40).await;
    b.kill();
    publish_rounds(&h, 41..=60).await;

    eventually("every message arrives", Duration::from_secs(60), || async {
        let seen = seen.lock().expect("lock");
        channels
            .iter()
            .all(|c| seen.iter().any(|&(ch, seq)| ch == c.0 && seq == 60))
    })
    .await;
    let seen = seen.lock().expect("lock").clone();
    let mut newest: HashMap<i64, i64> = HashMap::new();
    let mut repeats = 0;
    for (channel, seq) in &seen {
        let newest = newest.entry(*channel).or_default();
        if seq <= newest {
            repeats += 1;
        } else {
            assert_eq!(*seq, *newest + 1, "channel {channel}: {seq} after {newest}");
            *newest = *seq;
        }
    }
    eprintln!(
        "{} deliveries, {repeats} repeated after a handover, none out of order",
        seen.len()
    );
    h.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_spread_to_a_new_instance_and_come_back_when_it_dies() {
    let h = Harness::spawn_with(two_second_leases(6)).await;
    eventually("one instance owns everything", REBALANCE, || async {
        h.shares().await == Some(vec![6])
    })
    .await;
    let joined = tokio::time::Instant::now();
    let b = Instance::start(&h.app.config).await;
    eventually("the newcomer gets half", REBALANCE, || async {
        h.shares().await == Some(vec![3, 3])
    })
    .await;
    let spread = joined.elapsed();
    let killed = tokio::time::Instant::now();
    b.kill();
    eventually(
        "the survivor takes the dead one's half",
        REBALANCE,
        || async { h.shares().await == Some(vec![6]) },
    )
    .await;
    eprintln!(
        "spread to a newcomer in {spread:?}; back from a killed one in {:?} (2 s leases)",
        killed.elapsed()
    );

    let (alice, bob) = (h.user("alice").await, h.user("bob").await);
    let channel = h.channel("general", &[alice, bob]).await;
    h.gateway_alive("gw-a").await;
    h.online(bob, "gw-a", 2, Some(channel)).await;
    let mut a = h.tap("gw-a").await;
    h.publish(&message(channel, 1, alice, origin("gw-x", 1)))
        .await;
    assert_eq!(frames(&a.next().await)[0].1["seq"], 1);
    h.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_hands_partitions_over_without_waiting_for_expiry() {
    let h = Harness::spawn_with(|c| {
        c.partitions = 4;
        c.push_lease_secs = 300;
    })
    .await;
    let b = Instance::start(&h.app.config).await;
    eventually("two instances share the partitions", REBALANCE, || async {
        h.shares().await == Some(vec![2, 2])
    })
    .await;
    b.stop().await;
    eventually(
        "the other instance takes over long before a lease could expire",
        REBALANCE,
        || async { h.shares().await == Some(vec![4]) },
    )
    .await;
    h.app.stop().await;
}

/// Another owner takes the only partition (the test plays it: it writes
/// the lease, handles a join without broadcasting it, commits past it),
/// then lets the lease lapse. The instance must stop delivering while the
/// partition is not its own, and must not trust members it cached before.
#[tokio::test]
async fn a_lost_lease_stops_delivery_and_a_new_term_starts_with_fresh_members() {
    let h = Harness::spawn_with(two_second_leases(1)).await;
    let (alice, bob, carol) = (
        h.user("alice").await,
        h.user("bob").await,
        h.user("carol").await,
    );
    let channel = h.channel("general", &[carol, alice]).await;
    h.gateway_alive("gw-a").await;
    h.online(alice, "gw-a", 1, Some(channel)).await;
    h.online(bob, "gw-a", 2, Some(channel)).await;
    let mut a = h.tap("gw-a").await;
    h.publish(&message(channel, 1, carol, origin("gw-x", 9)))
        .await;
    assert_eq!(frames(&a.next().await)[0].0, vec![1], "alice only: cached");

    let leases =
        h.js.get_key_value(h.ns.push_leases_bucket())
            .await
            .expect("the leases bucket");
    let thief = {
        let leases = leases.clone();
        tokio::spawn(async move {
            loop {
                let _ = leases.put("partition.0", "thief".into()).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    eventually("the thief holds the lease", WAIT, || async {
        h.owners().await == BTreeMap::from([(0, "thief".to_owned())])
    })
    .await;
    // Past a renewal period: the instance has seen its renewal fail.
    tokio::time::sleep(Duration::from_millis(800)).await;
    h.add_member(channel, bob).await;
    let joined = h
        .publish(&Event::MemberJoined {
            channel_id: channel,
            user_id: bob,
            username: Some("bob".into()),
        })
        .await;
    h.commit_offset(0, joined).await;
    h.publish(&message(channel, 2, carol, origin("gw-x", 9)))
        .await;
    a.expect_nothing().await;

    thief.abort();
    let _ = thief.await;
    leases.delete("partition.0").await.expect("released");
    let batch = a.next().await;
    assert_eq!(frames(&batch)[0].1["seq"], 2);
    let mut sockets = frames(&batch)[0].0.clone();
    sockets.sort_unstable();
    assert_eq!(
        sockets,
        vec![1, 2],
        "bob joined while another owner held it"
    );
    a.expect_nothing().await;
    h.app.stop().await;
}

/// A channel whose next event cannot be handled (its members cannot be
/// read: the test holds a lock on them) holds back its own partition only,
/// for as long as that lasts, and then goes on in order.
#[tokio::test]
async fn a_stuck_event_holds_back_its_partition_only_until_it_goes_through() {
    let h = Harness::spawn_with(|c| c.partitions = 8).await;
    let (alice, bob) = (h.user("alice").await, h.user("bob").await);
    let mut by_partition: BTreeMap<u16, ChannelId> = BTreeMap::new();
    while by_partition.len() < 2 {
        let channel = h.channel("c", &[alice, bob]).await;
        by_partition
            .entry(PartitionKey::Channel(channel).partition(8).0)
            .or_insert(channel);
    }
    let channels: Vec<ChannelId> = by_partition.into_values().collect();
    let (stuck, flowing) = (channels[0], channels[1]);
    h.gateway_alive("gw-a").await;
    h.online(bob, "gw-a", 1, Some(stuck)).await;
    h.online(bob, "gw-a", 2, Some(flowing)).await;
    let seen = collect(h.tap("gw-a").await);
    let of = |channel: ChannelId| -> Vec<i64> {
        seen.lock()
            .expect("lock")
            .iter()
            .filter(|(c, _)| *c == channel.0)
            .map(|(_, s)| *s)
            .collect()
    };
    // The flowing channel's members are cached from here on.
    h.publish(&message(flowing, 1, alice, origin("gw-x", 9)))
        .await;
    eventually("the first message arrives", WAIT, || async {
        of(flowing) == [1]
    })
    .await;

    let mut lock = h.app.pool.begin().await.expect("a transaction");
    sqlx::query("LOCK TABLE channel_members IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .expect("locked");
    for seq in 2..=10 {
        for channel in [stuck, flowing] {
            h.publish(&message(
                channel,
                seq - i64::from(channel == stuck),
                alice,
                origin("gw-x", 9),
            ))
            .await;
        }
    }
    eventually("the other partition flows", WAIT, || async {
        of(flowing).len() == 10
    })
    .await;
    assert_eq!(of(flowing), (1..=10).collect::<Vec<_>>());
    assert!(of(stuck).is_empty(), "{:?}", of(stuck));

    lock.rollback().await.expect("unlocked");
    eventually("the held-back partition goes on", WAIT, || async {
        of(stuck).len() == 9
    })
    .await;
    assert_eq!(of(stuck), (1..=9).collect::<Vec<_>>());
    assert_eq!(h.dead_letters().await, 0);
    h.app.stop().await;
}
