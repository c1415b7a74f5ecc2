//! NATS accounts: a private `nats-server` with the shipped
//! deploy/nats/natter-accounts.conf. A client without a natter user is
//! refused; a natter user may publish and subscribe only what its service
//! does; and natter works with each service as its own user.

use natter_platform::Config;
use natter_protocol::http::paths;
use natter_server::Service;
use natter_server::testing::{start_part, ws};
use natter_testkit::private::{PrivateNats, PrivateRedis, Setup};
use natter_testkit::{AuthClient, Sandbox};
use serde_json::json;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const ACCOUNTS: &str = include_str!("../../../../deploy/nats/natter-accounts.conf");

fn password(user: &str) -> String {
    format!("{user}-password-for-the-accounts-test")
}

/// A private NATS with natter's accounts and the passwords in its
/// environment, as a Secret would put them there.
fn accounts_server() -> PrivateNats {
    PrivateNats::start_with(&Setup {
        config: "include \"natter-accounts.conf\"".into(),
        files: vec![("natter-accounts.conf".into(), ACCOUNTS.as_bytes().to_vec())],
        env: ["auth", "gateway", "message", "push"]
            .into_iter()
            .map(|user| {
                (
                    format!("NATTER_NATS_{}_PASSWORD", user.to_uppercase()),
                    password(user),
                )
            })
            .collect(),
    })
}

/// Connects as `user`; what the server reports (permission violations)
/// arrives on the receiver.
async fn connect_as(
    nats: &PrivateNats,
    user: &str,
) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_user_and_password(user.into(), password(user))
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(event.to_string());
            }
        })
        .connect(nats.url())
        .await
        .unwrap_or_else(|e| panic!("{user} connects: {e}"));
    (client, rx)
}

/// Waits for the server to report a permission violation on `subject`.
async fn violation(events: &mut mpsc::UnboundedReceiver<String>, subject: &str) {
    let wait = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = events.recv().await {
            if event.contains("Permissions Violation") && event.contains(subject) {
                return;
            }
        }
    });
    wait.await
        .unwrap_or_else(|_| panic!("no permission violation for {subject}"));
}

#[tokio::test]
async fn a_client_without_the_right_nats_user_cannot_send_requests_or_read_events() {
    let nats = accounts_server();
    assert!(
        async_nats::connect(nats.url()).await.is_err(),
        "a client without a user connected"
    );
    let wrong =
        async_nats::ConnectOptions::with_user_and_password("gateway".into(), "guess".into())
            .connect(nats.url())
            .await;
    assert!(wrong.is_err(), "a wrong password connected");

    for (user, subject) in [
        ("auth", "natter.rpc.message"),
        ("push", "natter.rpc.message"),
        ("gateway", "natter.rpc.unregister"),
        ("auth", "natter.gw.gw-1"),
        ("gateway", "natter.evt.p0.channel.1"),
    ] {
        let (client, mut events) = connect_as(&nats, user).await;
        client
            .publish(subject, "{}".into())
            .await
            .expect("handed to the client");
        client.flush().await.expect("flushed");
        violation(&mut events, subject).await;
    }
    for (user, subject) in [
        ("auth", "natter.evt.>"),
        ("gateway", "natter.evt.>"),
        ("message", "natter.evt.>"),
        ("push", "natter.rpc.message"),
        ("gateway", "_INBOX_natter_message.>"),
    ] {
        let (client, mut events) = connect_as(&nats, user).await;
        let _subscription = client.subscribe(subject).await.expect("sent");
        client.flush().await.expect("flushed");
        violation(&mut events, subject).await;
    }
}

#[tokio::test]
async fn natter_works_with_each_service_as_its_own_nats_user() {
    let nats = accounts_server();
    let redis = PrivateRedis::start();
    // The accounts file is written for the namespace `natter`: a private
    // NATS and Redis keep it from meeting anyone else's.
    let sandbox = Sandbox::new(|c| {
        c.nats_url = nats.url();
        c.redis_url = redis.url();
        c.namespace = "natter".into();
    })
    .await;
    let as_user = |service: Service| -> Config {
        let mut config = sandbox.config().clone();
        config.nats_user = Some(service.name().into());
        config.nats_password = Some(password(service.name()).into());
        config
    };
    let stop = CancellationToken::new();
    let mut addrs = std::collections::HashMap::new();
    let mut tasks = Vec::new();
    for service in Service::ALL {
        let (addr, task) = start_part(service, &as_user(service), stop.clone()).await;
        addrs.insert(service, addr);
        tasks.push(task);
    }
    let auth = AuthClient::new(
        reqwest::Client::new(),
        format!("http://{}", addrs[&Service::Auth]),
    );
    let ws_url = format!("ws://{}{}", addrs[&Service::Gateway], paths::WEBSOCKET);
    let alice_token = auth.user("alice").await;
    let bob_token = auth.user("bob").await;
    let mut alice = ws::connect(&ws_url, Some(&alice_token))
        .await
        .expect("alice's socket");
    let mut bob = ws::connect(&ws_url, Some(&bob_token))
        .await
        .expect("bob's socket");

    // gateway → message → outbox relay → JetStream → push → gateway.
    let code = bob
        .call("fetch_user_invite_code", json!({}))
        .await
        .expect("invite code")["invite_code"]
        .clone();
    alice
        .call("invite", json!({"invite_code": code}))
        .await
        .expect("invite");
    assert_eq!(bob.push("invite_received").await["username"], "alice");

    // auth → message.
    let gone = auth
        .post(paths::UNREGISTER, &json!({}), Some(&alice_token))
        .await;
    assert_eq!(gone.status(), 204);

    // The operator's commands run as the service they stand in for.
    for (user, args) in [
        ("message", &["dlq", "list"][..]),
        ("push", &["replay", "--from-seq", "1"][..]),
    ] {
        let config = sandbox.config();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_natter-server"))
            .args(args)
            .env("NATTER_DATABASE_URL", &config.database_url)
            .env("NATTER_NATS_URL", &config.nats_url)
            .env("NATTER_REDIS_URL", &config.redis_url)
            .env("NATTER_NAMESPACE", &config.namespace)
            .env("NATTER_BUS_KEY", natter_testkit::BUS_KEY)
            .env("NATTER_NATS_USER", user)
            .env("NATTER_NATS_PASSWORD", password(user))
            .output()
            .expect("natter-server runs");
        assert!(output.status.success(), "{args:?} as {user}: {output:?}");
    }

    stop.cancel();
    for task in tasks {
        task.await.expect("joined").expect("stopped cleanly");
    }
    let log = nats.log();
    assert!(
        !log.contains("Violation"),
        "a service did something its user may not:\n{log}"
    );
}
