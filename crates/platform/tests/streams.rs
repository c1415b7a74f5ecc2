//! Declaring natter's streams against the real NATS server.

use natter_platform::nats;
use natter_protocol::subjects::Namespace;
use std::time::Duration;

/// Six services starting at once, each on its own connection, with a
/// short token lifetime (a short revocation stream).
#[tokio::test]
async fn services_starting_together_all_declare_the_streams() {
    let ns = Namespace::new(&format!(
        "t{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    ));
    let mut contexts = Vec::new();
    for _ in 0..6 {
        let client = nats::connect("nats://127.0.0.1:4222", "streams-test")
            .await
            .expect("NATS answers");
        contexts.push(nats::jetstream(&client));
    }
    let ttl = Duration::from_secs(60);
    let attempts = contexts.iter().map(|js| nats::ensure_streams(js, &ns, ttl));
    let results = futures::future::join_all(attempts).await;
    let js = &contexts[0];
    for stream in [ns.events_stream(), ns.dlq_stream(), ns.sessions_stream()] {
        let _ = js.delete_stream(stream).await;
    }
    for r in results {
        r.expect("every concurrent declaration succeeds");
    }
}
