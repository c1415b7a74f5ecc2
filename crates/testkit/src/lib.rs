//! natter's test kit: what a test needs around a service, without knowing
//! any service. Every test gets its own database (cloned from a migrated
//! template) and its own namespace for NATS subjects/streams and Redis
//! keys ([`Sandbox`]), so tests run in parallel against the machine's real
//! Postgres, NATS and Redis and leave nothing behind; a service starts
//! in-process on port 0 ([`Running`]), alone in its sandbox
//! ([`TestService`]); [`AuthClient`] and [`ws`] talk to it as clients do.
//! A test that must kill a dependency starts one of its own ([`private`]).
//!
//! It depends on `natter-protocol` and `natter-platform` only, so a
//! service's own tests use it without linking another service. Starting
//! several services together is the composition root's job:
//! `natter_server::testing::TestApp`.

mod database;
mod http;
mod logs;
pub mod private;
mod running;
mod service;
pub mod ws;

use natter_platform::Config;
use natter_platform::token::TokenKeys;
use natter_protocol::{SessionId, UserId};
use sqlx::PgPool;
use std::net::SocketAddr;

pub use database::TestDatabase;
pub use http::AuthClient;
pub use running::Running;
pub use service::TestService;
pub use ws::{Closed, ErrorFrame, WsClient};

/// The password [`AuthClient::user`] registers with.
pub const PASSWORD: &str = "correct horse battery";

/// The JWT secret of [`test_config`].
const JWT_SECRET: &str = "test-secret-that-is-long-enough-for-hs256";
/// The bus key of [`test_config`].
pub const BUS_KEY: &str = "test-bus-key-that-is-long-enough-to-sign";

/// Starts test logging once per process (later calls do nothing); silent
/// unless `TEST_LOG` is set.
pub fn init_logs() {
    logs::init();
}

/// A fresh configuration for one test: its own database and namespace,
/// every service on 127.0.0.1 port 0, a fixed JWT secret and bus key.
///
/// # Panics
/// When the defaults cannot be read (never, with sane environment).
#[must_use]
pub fn test_config(database_url: &str) -> Config {
    let mut config = Config::from_env().expect("config defaults");
    let id = uuid::Uuid::new_v4().simple().to_string();
    config.database_url = database_url.to_owned();
    config.namespace = format!("t{}", &id[..16]);
    config.jwt_secret = Some(JWT_SECRET.into());
    config.bus_key = Some(BUS_KEY.into());
    let local: SocketAddr = ([127, 0, 0, 1], 0).into();
    config.auth_addr = local;
    config.gateway_addr = local;
    config.message_addr = local;
    config.push_addr = local;
    config.gateway_id = Some(format!("gw-{}", &id[..8]));
    // Tests run in parallel against one Postgres (100 connections by
    // default): small pools keep a full run under that.
    config.database_pool = 5;
    // JetStream reserves a stream's byte bound from the server's storage up
    // front: a small one lets many parallel tests share one server.
    config.events_max_bytes = 64 << 20;
    // Tests register users by the dozen at once on a shared machine: they
    // wait for a hashing slot as long as it takes, rather than get 503
    // (the tests of that limit set their own wait).
    config.hash_wait_ms = 60_000;
    config
}

/// A token for `user` signed with `config`'s secret, as auth would issue
/// it: lets a test reach the gateway without running auth.
///
/// # Panics
/// When `config` has no JWT secret.
#[must_use]
pub fn token_for(config: &Config, user: UserId, username: &str) -> String {
    let secret = config.jwt_secret.as_deref().expect("a JWT secret");
    TokenKeys::new(secret.as_bytes(), config.token_ttl_secs)
        .issue(user, username, SessionId(uuid::Uuid::new_v4()))
        .expect("signing a token")
}

/// The bus signature headers for `payload` published to `subject` under
/// [`BUS_KEY`], as a gateway, auth or push would sign it: lets a test talk
/// to a service over NATS directly.
///
/// # Panics
/// Never: [`BUS_KEY`] is long enough.
#[must_use]
pub fn bus_signed(subject: &str, payload: &[u8]) -> async_nats::HeaderMap {
    natter_platform::bus::BusKey::new(BUS_KEY)
        .expect("the test bus key is long enough")
        .signed(subject, payload)
}

/// What one test owns outside its process: a database and a namespace
/// (JetStream streams, Redis keys), both deleted when it is dropped.
pub struct Sandbox {
    config: Config,
    // Dropped after `Drop::drop` has cleaned the namespace.
    db: TestDatabase,
}

impl Sandbox {
    /// A fresh database and a configuration pointing at it, after `tweak`
    /// adjusts it.
    pub async fn new(tweak: impl FnOnce(&mut Config)) -> Self {
        init_logs();
        let db = TestDatabase::create().await;
        let mut config = test_config(&db.url);
        tweak(&mut config);
        Self { config, db }
    }

    /// The configuration services run with.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A small pool on the test's database, for assertions and seeding.
    pub async fn pool(&self) -> PgPool {
        self.db.pool().await
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        cleanup_namespace(&self.config);
    }
}

/// Runs `cleanup` to completion on a thread of its own with its own
/// runtime: `Drop` cannot await, and may run inside the test's runtime.
/// Failures are ignored; a cleanup that cannot reach a service has nothing
/// to clean there.
pub(crate) fn block_on_cleanup(cleanup: impl std::future::Future<Output = ()> + Send + 'static) {
    let work = std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(cleanup);
        }
    });
    let _ = work.join();
}

/// Deletes a test namespace's JetStream streams, key-value buckets and
/// Redis keys.
fn cleanup_namespace(config: &Config) {
    let ns = config.namespace();
    let config = config.clone();
    block_on_cleanup(async move {
        if let Ok(client) = natter_platform::nats::connect(&config, "natter-test-cleanup").await {
            let js = async_nats::jetstream::new(client);
            for stream in [ns.events_stream(), ns.dlq_stream(), ns.sessions_stream()] {
                let _ = js.delete_stream(stream).await;
            }
            for bucket in [ns.push_leases_bucket(), ns.push_offsets_bucket()] {
                let _ = js.delete_key_value(bucket).await;
            }
        }
        if let Ok(client) = natter_platform::cache::client(&config)
            && let Ok(mut conn) = client.get_multiplexed_async_connection().await
        {
            let pattern = format!("{}*", ns.redis_prefix());
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(pattern)
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
            }
        }
    });
}
