//! What message refuses to start with.

use natter_message::Message;
use natter_platform::lifecycle::Runnable;

/// The outbox relay and the batch writer each hold a connection for good:
/// with two, nothing would be left for lease renewals and reads, and the
/// relay would lose and retake its lease forever.
#[tokio::test]
async fn a_pool_too_small_for_the_relay_and_the_writer_is_refused_at_start() {
    let mut config = natter_testkit::test_config("postgres://postgres@127.0.0.1:5432/postgres");
    config.database_pool = 2;
    let refused = Message::build(&config)
        .await
        .err()
        .expect("message refuses a pool of two");
    assert!(
        refused.to_string().contains("NATTER_DATABASE_POOL"),
        "{refused:#}"
    );
}
