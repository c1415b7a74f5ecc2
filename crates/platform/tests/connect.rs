//! Connecting to NATS: a server whose payload limit is below what natter's
//! messages are sized for is refused at start, with the reason, instead
//! of refusing natter's larger batches and outbox rows one by one later.

use natter_platform::{Config, nats};
use natter_testkit::private::{PrivateNats, Setup};

#[tokio::test]
async fn a_nats_server_taking_smaller_messages_than_natter_sends_is_refused_at_connect() {
    let small = PrivateNats::start_with(&Setup {
        config: "max_payload: 65536".into(),
        ..Setup::default()
    });
    let mut config = Config::from_env().expect("defaults");
    config.nats_url = small.url();
    let error = nats::connect(&config, "payload-test")
        .await
        .expect_err("a 64 KiB payload limit is refused");
    let reason = format!("{error:#}");
    assert!(
        reason.contains("at most 65536 bytes") && reason.contains("max_payload"),
        "{reason}"
    );

    let default = PrivateNats::start();
    config.nats_url = default.url();
    nats::connect(&config, "payload-test")
        .await
        .expect("nats-server's default limit is enough");
}
