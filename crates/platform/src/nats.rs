//! NATS and JetStream: connecting, and declaring natter's streams
//! idempotently at start, named by the namespace.

use anyhow::Context;
use async_nats::jetstream::{self, stream};
use natter_protocol::subjects::Namespace;
use std::time::Duration;

/// How long events are kept for replay.
pub const EVENTS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// JetStream's de-duplication window on `Nats-Msg-Id`: longer than any
/// outbox relay retry.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(5 * 60);

/// Connects to NATS.
///
/// # Errors
/// When the server does not answer.
pub async fn connect(url: &str, name: &str) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .name(name)
        .subscription_capacity(64 * 1024)
        // A core subscription that overflows drops messages silently:
        // make every drop loud and counted.
        .event_callback(|event| async move {
            match event {
                async_nats::Event::SlowConsumer(sid) => {
                    crate::metrics::get().nats_slow_consumers.add(1, &[]);
                    tracing::warn!(
                        subscription = sid,
                        "NATS subscription overflowed: messages dropped"
                    );
                }
                async_nats::Event::Connected => tracing::info!("NATS connected"),
                other => tracing::warn!(event = %other, "NATS connection event"),
            }
        })
        .connect(url)
        .await
        .with_context(|| format!("connecting to NATS at {url}"))
}

/// A JetStream context on `client`.
#[must_use]
pub fn jetstream(client: &async_nats::Client) -> jetstream::Context {
    jetstream::new(client.clone())
}

/// Declares the events, dead-letter and revoked-sessions streams if they do
/// not exist. Revocations are kept as long as a token lives, so a gateway
/// starting late still refuses every revoked token.
///
/// # Errors
/// When JetStream refuses.
pub async fn ensure_streams(
    js: &jetstream::Context,
    ns: &Namespace,
    token_ttl: Duration,
) -> anyhow::Result<()> {
    let streams = [
        (ns.events_stream(), ns.events_wildcard(), EVENTS_MAX_AGE),
        (ns.dlq_stream(), ns.dlq_wildcard(), EVENTS_MAX_AGE),
        (
            ns.sessions_stream(),
            ns.session_revoked_subject(),
            token_ttl + Duration::from_secs(60),
        ),
    ];
    for (name, subject, max_age) in streams {
        let config = stream::Config {
            name: name.clone(),
            subjects: vec![subject],
            storage: stream::StorageType::File,
            max_age,
            // JetStream refuses a window longer than the stream's max age
            // (short token lifetimes make short revocation streams).
            duplicate_window: DUPLICATE_WINDOW.min(max_age),
            ..Default::default()
        };
        // Services start together (`natter-server all`, several pods): when
        // another process creates the stream between our lookup and our
        // create, JetStream refuses ours ("subjects overlap"); the stream
        // then exists, which is all we wanted.
        let mut attempt = 0;
        loop {
            match js.get_or_create_stream(config.clone()).await {
                Ok(_) => break,
                Err(_) if attempt < 5 && js.get_stream(&name).await.is_ok() => break,
                Err(e) if attempt < 5 => {
                    attempt += 1;
                    tracing::debug!(error = %e, stream = %name, "retrying stream declaration");
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                }
                Err(e) => return Err(e).with_context(|| format!("declaring stream {name}")),
            }
        }
    }
    Ok(())
}
