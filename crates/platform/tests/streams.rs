//! Declaring natter's streams against the real NATS server: created once
//! however many services start together, and brought back in step with
//! the configuration on every start.

use async_nats::jetstream;
use natter_platform::{Config, nats};
use std::time::Duration;

/// A configuration in a namespace of its own.
fn config() -> Config {
    let mut config = Config::from_env().expect("defaults");
    config.namespace = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    // Tests share one NATS server; a small bound keeps its storage free.
    config.events_max_bytes = 64 << 20;
    config
}

async fn jetstream() -> jetstream::Context {
    let client = nats::connect(&config(), "streams-test")
        .await
        .expect("NATS answers");
    nats::jetstream(&client)
}

async fn delete_streams(js: &jetstream::Context, config: &Config) {
    let ns = config.namespace();
    for stream in [ns.events_stream(), ns.dlq_stream(), ns.sessions_stream()] {
        let _ = js.delete_stream(stream).await;
    }
}

async fn stream_config(js: &jetstream::Context, name: &str) -> jetstream::stream::Config {
    js.get_stream(name)
        .await
        .expect("the stream exists")
        .info()
        .await
        .expect("info")
        .config
        .clone()
}

/// Six services starting at once, each on its own connection, with a
/// short token lifetime (a short revocation stream).
#[tokio::test]
async fn services_starting_together_all_declare_the_streams() {
    let mut config = config();
    config.token_ttl_secs = 1;
    let mut contexts = Vec::new();
    for _ in 0..6 {
        contexts.push(jetstream().await);
    }
    let attempts = contexts.iter().map(|js| nats::ensure_streams(js, &config));
    let results = futures::future::join_all(attempts).await;
    delete_streams(&contexts[0], &config).await;
    for r in results {
        r.expect("every concurrent declaration succeeds");
    }
}

#[tokio::test]
async fn raising_the_token_lifetime_lengthens_the_sessions_stream_on_the_next_start() {
    let mut config = config();
    let js = jetstream().await;
    config.token_ttl_secs = 60;
    nats::ensure_streams(&js, &config).await.expect("declared");
    let sessions = config.namespace().sessions_stream();
    let before = stream_config(&js, &sessions).await.max_age;
    config.token_ttl_secs = 7200;
    nats::ensure_streams(&js, &config)
        .await
        .expect("declared again");
    let after = stream_config(&js, &sessions).await.max_age;
    delete_streams(&js, &config).await;
    assert_eq!(before, Duration::from_secs(60) + nats::REVOCATION_MARGIN);
    assert_eq!(after, Duration::from_secs(7200) + nats::REVOCATION_MARGIN);
}

#[tokio::test]
async fn the_events_stream_takes_its_limits_from_the_configuration_on_every_start() {
    let mut config = config();
    let js = jetstream().await;
    nats::ensure_streams(&js, &config).await.expect("declared");
    let events = config.namespace().events_stream();
    let first = stream_config(&js, &events).await;
    config.events_max_age = Duration::from_secs(3600);
    config.events_max_bytes = 32 << 20;
    nats::ensure_streams(&js, &config)
        .await
        .expect("declared again");
    let second = stream_config(&js, &events).await;
    let dlq = stream_config(&js, &config.namespace().dlq_stream()).await;
    delete_streams(&js, &config).await;
    assert_eq!(first.max_age, Duration::from_secs(7 * 86_400));
    assert_eq!(first.max_bytes, 64 << 20);
    assert_eq!(first.num_replicas, 1);
    assert_eq!(second.max_age, Duration::from_secs(3600));
    assert_eq!(second.max_bytes, 32 << 20);
    assert_eq!(dlq.max_age, Duration::from_secs(3600));
}

#[tokio::test]
async fn more_replicas_than_the_servers_hold_fail_the_start_naming_the_stream() {
    let mut config = config();
    config.stream_replicas = 3;
    let js = jetstream().await;
    let refused = nats::ensure_streams(&js, &config).await;
    delete_streams(&js, &config).await;
    let error = format!(
        "{:#}",
        refused.expect_err("one server cannot hold three replicas")
    );
    assert!(
        error.contains(&config.namespace().events_stream()),
        "{error}"
    );
}

#[tokio::test]
async fn a_url_listing_a_dead_server_and_a_live_one_connects() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    for url in [
        format!("nats://{dead},nats://127.0.0.1:4222"),
        format!("nats://127.0.0.1:4222, nats://{dead}"),
    ] {
        let mut config = config();
        config.nats_url.clone_from(&url);
        let client = nats::connect(&config, "list-test").await.expect("connects");
        assert_eq!(client.server_info().port, 4222, "{url}");
        let js = nats::jetstream(&client);
        let declared = nats::ensure_streams(&js, &config).await;
        delete_streams(&js, &config).await;
        declared.expect("JetStream answers");
    }
}
