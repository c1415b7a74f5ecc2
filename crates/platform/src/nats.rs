//! NATS and JetStream: connecting (to one server or a cluster), and
//! declaring natter's streams at start, named by the namespace, with the
//! configured replicas and limits — applied to streams that already exist
//! too, so a changed setting (a longer token lifetime, more replicas)
//! takes effect on the next start rather than only on a fresh install.

use crate::Config;
use anyhow::Context;
use async_nats::ServerAddr;
use async_nats::jetstream::{self, context::GetStreamErrorKind, stream};
use natter_protocol::subjects::Namespace;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// JetStream's de-duplication window on `Nats-Msg-Id`: longer than any
/// outbox relay retry.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(5 * 60);
/// How long past a token's lifetime a revocation is kept: a token issued
/// just before its session was revoked lives that long after it.
pub const REVOCATION_MARGIN: Duration = Duration::from_secs(60);

/// The servers of `NATTER_NATS_URL`: one URL, or a comma-separated list of
/// a cluster's servers.
///
/// # Errors
/// When one of them is not a NATS URL, or none is given.
pub fn servers(url: &str) -> anyhow::Result<Vec<ServerAddr>> {
    let servers = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<ServerAddr>()
                .with_context(|| format!("NATTER_NATS_URL: {s:?} is not a NATS URL"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!servers.is_empty(), "NATTER_NATS_URL names no server");
    Ok(servers)
}

/// Connects to NATS as `config` says: to one of the servers of
/// `NATTER_NATS_URL` (tried in turn until one answers), failing over to
/// the others (and to those the cluster announces) when the connection
/// drops; as `NATTER_NATS_USER` or with `NATTER_NATS_CREDS`; over TLS
/// verified against `NATTER_NATS_CA` when it is set.
///
/// # Errors
/// When the credentials file cannot be read or no server answers.
pub async fn connect(config: &Config, name: &str) -> anyhow::Result<async_nats::Client> {
    let url = &config.nats_url;
    let servers = servers(url)?;
    let mut options = async_nats::ConnectOptions::new();
    if let Some(creds) = &config.nats_creds {
        options = options
            .credentials_file(creds)
            .await
            .with_context(|| format!("reading NATTER_NATS_CREDS {}", creds.display()))?;
    }
    if let Some(user) = config.nats_user.clone().filter(|u| !u.is_empty()) {
        // Replies come to an inbox only this user may read.
        options = options
            .custom_inbox_prefix(inbox_prefix(&config.namespace(), &user))
            .user_and_password(
                user,
                config
                    .nats_password
                    .as_deref()
                    .unwrap_or_default()
                    .to_owned(),
            );
    }
    if let Some(ca) = &config.nats_ca {
        crate::tls::install_crypto_provider();
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    // Since when the connection is down, if it is: an outage is logged
    // when it begins and when it ends, not at every reconnection attempt.
    let outage: Arc<Mutex<Option<Instant>>> = Arc::default();
    options
        .name(name)
        .subscription_capacity(64 * 1024)
        // A core subscription that overflows drops messages silently:
        // make every drop loud and counted.
        .event_callback(move |event| {
            let outage = outage.clone();
            async move {
                match event {
                    async_nats::Event::SlowConsumer(sid) => {
                        crate::metrics::get().nats_slow_consumers.add(1, &[]);
                        tracing::warn!(
                            subscription = sid,
                            "NATS subscription overflowed: messages dropped"
                        );
                    }
                    async_nats::Event::Connected => {
                        let down = outage.lock().unwrap_or_else(PoisonError::into_inner).take();
                        match down {
                            Some(since) => tracing::info!(
                                after = ?since.elapsed(),
                                "NATS connected again"
                            ),
                            None => tracing::info!("NATS connected"),
                        }
                    }
                    async_nats::Event::Disconnected => {
                        let mut down = outage.lock().unwrap_or_else(PoisonError::into_inner);
                        if down.is_none() {
                            *down = Some(Instant::now());
                            tracing::warn!("NATS disconnected; reconnecting");
                        }
                    }
                    // Every failed reconnection attempt of an outage
                    // already announced: once is enough.
                    other
                        if outage
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .is_some() =>
                    {
                        tracing::debug!(event = %other, "NATS connection event");
                    }
                    other => tracing::warn!(event = %other, "NATS connection event"),
                }
            }
        })
        .connect(servers)
        .await
        .with_context(|| format!("connecting to NATS at {}", crate::secret::redact_url(url)))
        .and_then(|client| {
            let max_payload = client.server_info().max_payload;
            anyhow::ensure!(
                max_payload >= MIN_MAX_PAYLOAD,
                "the NATS server takes messages of at most {max_payload} bytes; natter needs \
                 {MIN_MAX_PAYLOAD} or more (`max_payload` in nats-server's configuration; \
                 {MIN_MAX_PAYLOAD} is its default)"
            );
            Ok(client)
        })
}

/// The smallest payload limit natter runs with: nats-server's default.
/// What natter publishes is bounded by constants well under it (batches
/// of requests and their replies at 512 KiB, outbox rows at 64 KiB), not
/// by the server's own figure, so a server configured lower would refuse
/// them one by one at run time: it is refused once, at start.
const MIN_MAX_PAYLOAD: usize = 1024 * 1024;

/// The inbox prefix of NATS user `user`: deploy/nats/natter-accounts.conf
/// lets each user subscribe to its own only.
#[must_use]
pub fn inbox_prefix(ns: &Namespace, user: &str) -> String {
    format!("_INBOX_{}_{user}", ns.as_str())
}

/// A JetStream context on `client`.
#[must_use]
pub fn jetstream(client: &async_nats::Client) -> jetstream::Context {
    jetstream::new(client.clone())
}

/// What natter wants of one stream; the fields it does not name are left
/// as they are.
#[derive(Debug, Clone)]
struct Wanted {
    name: String,
    subject: String,
    max_age: Duration,
    /// `-1`: unbounded.
    max_bytes: i64,
    replicas: usize,
}

impl Wanted {
    fn duplicate_window(&self) -> Duration {
        // JetStream refuses a window longer than the stream's max age
        // (short token lifetimes make short revocation streams).
        DUPLICATE_WINDOW.min(self.max_age)
    }

    /// A fresh stream's configuration.
    fn create(&self) -> stream::Config {
        self.apply(stream::Config {
            name: self.name.clone(),
            storage: stream::StorageType::File,
            ..Default::default()
        })
    }

    /// `current` with what natter sets replaced.
    fn apply(&self, current: stream::Config) -> stream::Config {
        stream::Config {
            subjects: vec![self.subject.clone()],
            max_age: self.max_age,
            max_bytes: self.max_bytes,
            num_replicas: self.replicas,
            duplicate_window: self.duplicate_window(),
            ..current
        }
    }

    fn differs(&self, current: &stream::Config) -> bool {
        current.subjects != [self.subject.clone()]
            || current.max_age != self.max_age
            || current.max_bytes != self.max_bytes
            || current.num_replicas.max(1) != self.replicas
            || current.duplicate_window != self.duplicate_window()
    }
}

/// The three streams as `config` wants them: events (`NATTER_EVENTS_*`),
/// dead letters (kept as long as events), and revoked sessions (kept as
/// long as a token lives, so a gateway starting late still refuses every
/// revoked token). All with `NATTER_STREAM_REPLICAS`.
fn wanted(config: &Config) -> [Wanted; 3] {
    let ns = config.namespace();
    let replicas = usize::from(config.stream_replicas.max(1));
    let events_max_bytes = match i64::try_from(config.events_max_bytes) {
        Ok(0) | Err(_) => -1,
        Ok(n) => n,
    };
    [
        Wanted {
            name: ns.events_stream(),
            subject: ns.events_wildcard(),
            max_age: config.events_max_age,
            max_bytes: events_max_bytes,
            replicas,
        },
        Wanted {
            name: ns.dlq_stream(),
            subject: ns.dlq_wildcard(),
            max_age: config.events_max_age,
            max_bytes: -1,
            replicas,
        },
        Wanted {
            name: ns.sessions_stream(),
            subject: ns.session_revoked_subject(),
            max_age: Duration::from_secs(config.token_ttl_secs) + REVOCATION_MARGIN,
            max_bytes: -1,
            replicas,
        },
    ]
}

/// Declares the events, dead-letter and revoked-sessions streams: creates
/// those that do not exist and updates those whose settings differ from
/// `config`'s. Safe to run from many processes at once.
///
/// # Errors
/// When JetStream refuses (a replica count the servers cannot hold, a
/// size bound beyond their storage).
pub async fn ensure_streams(js: &jetstream::Context, config: &Config) -> anyhow::Result<()> {
    for wanted in wanted(config) {
        ensure_stream(js, &wanted)
            .await
            .with_context(|| format!("declaring stream {}", wanted.name))?;
    }
    Ok(())
}

async fn ensure_stream(js: &jetstream::Context, wanted: &Wanted) -> anyhow::Result<()> {
    // Services start together (`natter-server all`, several pods): when
    // another process creates the stream between our lookup and our
    // create, JetStream refuses ours; the next lookup then finds it.
    let mut attempt = 0;
    loop {
        attempt += 1;
        match js.get_stream(&wanted.name).await {
            Ok(mut stream) => {
                let current = stream.info().await?.config.clone();
                if wanted.differs(&current) {
                    js.update_stream(wanted.apply(current.clone())).await?;
                    tracing::info!(
                        stream = %wanted.name,
                        max_age_secs = wanted.max_age.as_secs(),
                        max_bytes = wanted.max_bytes,
                        replicas = wanted.replicas,
                        was_max_age_secs = current.max_age.as_secs(),
                        was_max_bytes = current.max_bytes,
                        was_replicas = current.num_replicas,
                        "updated stream settings"
                    );
                }
                return Ok(());
            }
            Err(e) if is_not_found(&e) => match js.create_stream(wanted.create()).await {
                Ok(_) => return Ok(()),
                Err(e) if attempt < 5 => {
                    tracing::debug!(error = %e, stream = %wanted.name, "retrying stream declaration");
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                }
                Err(e) => return Err(e.into()),
            },
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether JetStream answered that the stream does not exist.
#[must_use]
pub fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        GetStreamErrorKind::JetStream(j) if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nats_url_may_list_several_servers() {
        let list = servers("nats://a:4222, nats://b:4222,").expect("parsed");
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].host(), "b");
        assert_eq!(servers("nats://127.0.0.1:4222").expect("parsed").len(), 1);
        assert!(servers(" , ").is_err());
        assert!(servers("nats://a:4222,http://[::1").is_err());
    }

    #[test]
    fn streams_follow_the_configuration() {
        let mut config = Config::from_env().expect("defaults");
        config.token_ttl_secs = 600;
        config.events_max_bytes = 0;
        config.stream_replicas = 3;
        let [events, dlq, sessions] = wanted(&config);
        assert_eq!(events.max_age, Duration::from_secs(7 * 86_400));
        assert_eq!(events.max_bytes, -1, "0 is unbounded");
        assert_eq!(sessions.max_age, Duration::from_secs(660));
        assert!(dlq.replicas == 3 && sessions.replicas == 3);
        let created = events.create();
        assert!(!events.differs(&created));
        config.events_max_bytes = 1 << 20;
        let [bounded, ..] = wanted(&config);
        assert!(bounded.differs(&created));
        assert_eq!(bounded.apply(created).max_bytes, 1 << 20);
    }
}
