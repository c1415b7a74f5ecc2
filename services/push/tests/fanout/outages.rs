//! Dependencies that go away: events wait, in order, and nothing is
//! dead-lettered for it.

use crate::support::{Harness, PrivateRedis, WAIT, eventually, frames, message, origin, readyz};
use natter_push::HELD_BACK;
use std::time::Duration;

#[tokio::test]
async fn a_redis_outage_holds_events_back_then_delivers_them_all_in_order() {
    let mut redis = PrivateRedis::start().await;
    let url = redis.url();
    let mut h = Harness::spawn_with(|c| c.redis_url = url).await;
    let (alice, bob) = (h.user("alice").await, h.user("bob").await);
    let channel = h.channel("general", &[alice, bob]).await;
    h.gateway_alive("gw-a").await;
    h.online(bob, "gw-a", 2, Some(channel)).await;
    let mut a = h.tap("gw-a").await;
    h.publish(&message(channel, 1, alice, origin("gw-x", 1)))
        .await;
    assert_eq!(frames(&a.next().await)[0].1["seq"], 1);

    redis.kill().await;
    for seq in 2..=20 {
        h.publish(&message(channel, seq, alice, origin("gw-x", 1)))
            .await;
    }
    a.expect_nothing().await;
    eventually("push says events are held back", WAIT, || async {
        readyz(h.app.addr()).await.1.contains(&HELD_BACK.to_owned())
    })
    .await;
    // Long enough for retries to reach their longest pause.
    tokio::time::sleep(Duration::from_secs(4)).await;
    a.expect_nothing().await;

    redis.restart().await;
    // The gateway registers its sockets again in the empty Redis.
    h.reconnect_redis().await;
    h.gateway_alive("gw-a").await;
    h.online(bob, "gw-a", 2, Some(channel)).await;
    for seq in 2..=20 {
        assert_eq!(a.next_frame().await.1["seq"], seq);
    }
    a.expect_nothing().await;
    eventually("push is ready again", WAIT, || async {
        readyz(h.app.addr()).await.0 == 200
    })
    .await;
    assert_eq!(h.dead_letters().await, 0, "an outage is waited out");
    h.app.stop().await;
}
