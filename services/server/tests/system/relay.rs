//! Relay leadership across processes: a leader frozen with SIGSTOP keeps
//! its connections open but stops renewing its lease, and a standby
//! publishes within seconds.

use natter_platform::Config;
use natter_platform::outbox::{self, OutboxRow};
use natter_protocol::events::Event;
use natter_protocol::{ChannelId, UserId};
use natter_server::Service;
use natter_server::testing::start_part;
use natter_testkit::Sandbox;
use natter_testkit::private::free_port;
use sqlx::PgPool;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// `natter-server message` as a child process; killed when dropped.
struct MessageProcess {
    child: Child,
    port: u16,
}

impl MessageProcess {
    fn spawn(config: &Config) -> Self {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_natter-server"))
            .arg("message")
            .env("NATTER_DATABASE_URL", &config.database_url)
            .env("NATTER_DATABASE_POOL", "3")
            .env("NATTER_NATS_URL", &config.nats_url)
            .env("NATTER_REDIS_URL", &config.redis_url)
            .env("NATTER_NAMESPACE", &config.namespace)
            .env(
                "NATTER_EVENTS_MAX_BYTES",
                config.events_max_bytes.to_string(),
            )
            .env("NATTER_MESSAGE_ADDR", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("natter-server starts");
        Self { child, port }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal}");
    }
}

impl Drop for MessageProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_ready(port: u16) {
    let url = format!("http://127.0.0.1:{port}/readyz");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(&url).await
            && r.status() == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "{url} never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn insert_event(pool: &PgPool, config: &Config, user: i64) {
    let event = Event::MemberJoined {
        channel_id: ChannelId(1),
        user_id: UserId(user),
    };
    let row = OutboxRow::event(&config.namespace(), &event, None).expect("encoded");
    let mut conn = pool.acquire().await.expect("connection");
    outbox::insert(&mut conn, &[row]).await.expect("outbox row");
}

/// Waits until the outbox is empty: some relay published everything.
async fn published(pool: &PgPool, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(pool)
            .await
            .expect("count");
        if left == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{left} outbox rows were never published"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn lease_holder(pool: &PgPool) -> String {
    sqlx::query_scalar("SELECT holder FROM outbox_relay_lease")
        .fetch_one(pool)
        .await
        .expect("a lease")
}

#[tokio::test]
async fn a_standby_relay_publishes_within_seconds_of_the_leader_freezing() {
    let sandbox = Sandbox::new(|_| {}).await;
    let config = sandbox.config().clone();
    let pool = sandbox.pool().await;
    let leader = MessageProcess::spawn(&config);
    wait_ready(leader.port).await;
    insert_event(&pool, &config, 1).await;
    published(&pool, Duration::from_secs(20)).await;
    let frozen = lease_holder(&pool).await;

    let stop = CancellationToken::new();
    let (_, standby) = start_part(Service::Message, &config, stop.clone()).await;
    leader.signal("-STOP");
    insert_event(&pool, &config, 2).await;
    // The lease lasts five seconds; a leader holding a session advisory
    // lock would have kept it for hours.
    published(&pool, Duration::from_secs(30)).await;
    assert_ne!(lease_holder(&pool).await, frozen);

    stop.cancel();
    standby
        .await
        .expect("standby task")
        .expect("the standby stops cleanly");
}
