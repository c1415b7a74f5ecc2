//! `natter-server admin …`, the real binary, against message's admin API
//! on the real stack: who is online and where, sockets per gateway,
//! disconnecting a user, streams and consumers, dead letters; and the
//! secret that guards all of it.

use natter_server::Service;
use natter_server::testing::TestApp;
use serde_json::Value;
use std::process::Output;
use std::time::Duration;
use tokio::process::Command;

const SECRET: &str = "admin-test-secret";

/// Runs the binary without blocking the runtime, which serves the API it
/// calls.
async fn admin(app: &TestApp, secret: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_natter-server"));
    command
        .arg("admin")
        .args(["--url", &format!("http://{}", app.addr(Service::Message))])
        .args(args)
        .env_remove("NATTER_ADMIN_SECRET");
    if let Some(secret) = secret {
        command.env("NATTER_ADMIN_SECRET", secret);
    }
    command.output().await.expect("natter-server runs")
}

async fn answer(app: &TestApp, args: &[&str]) -> Value {
    let output = admin(app, Some(SECRET), args).await;
    assert!(output.status.success(), "{args:?}: {output:?}");
    serde_json::from_slice(&output.stdout).expect("JSON on stdout")
}

#[tokio::test]
async fn admin_shows_who_is_online_where_and_disconnects_a_user() {
    let app = TestApp::spawn_with(|c| c.admin_secret = Some(SECRET.into())).await;
    let (_, _alice) = app.ws_user("alice").await;
    let (_, mut bob) = app.ws_user("bob").await;
    let bob_again = app.ws(&app.token("bob").await).await;

    let online = answer(&app, &["online"]).await;
    let users = online["users"].as_array().expect("users");
    let names: Vec<&str> = users
        .iter()
        .map(|u| u["username"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["alice", "bob"], "{online}");
    assert_eq!(users[1]["sockets"].as_array().expect("sockets").len(), 2);
    let gateway = users[0]["sockets"][0]["gateway"]
        .as_str()
        .expect("a gateway")
        .to_owned();
    assert!(!gateway.is_empty());

    let gateways = answer(&app, &["gateways"]).await;
    assert_eq!(
        gateways["gateways"],
        serde_json::json!([{"gateway": gateway, "sockets": 3, "users": 2}])
    );

    let disconnected = answer(&app, &["disconnect", "bob"]).await;
    assert_eq!(disconnected["sessions_revoked"], 2, "{disconnected}");
    bob.closed_within(Duration::from_secs(10)).await;
    let mut bob_again = bob_again;
    bob_again.closed_within(Duration::from_secs(10)).await;
    let me = app
        .get("/api/v1/auth/me", Some(&app.token("alice").await))
        .await;
    assert_eq!(me.status(), 200, "alice is untouched");

    let missing = admin(&app, Some(SECRET), &["disconnect", "nobody"]).await;
    assert!(!missing.status.success());
    app.stop().await;
}

#[tokio::test]
async fn admin_lists_streams_with_consumers_and_dead_letters() {
    let app = TestApp::spawn_with(|c| c.admin_secret = Some(SECRET.into())).await;
    let streams = answer(&app, &["streams"]).await;
    let names: Vec<&str> = streams["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .map(|s| s["name"].as_str().expect("name"))
        .collect();
    let ns = app.config.namespace();
    assert!(names.contains(&ns.events_stream().as_str()), "{streams}");
    assert!(
        names
            .iter()
            .all(|n| n.contains(&ns.as_str().to_uppercase())),
        "only this namespace's streams: {names:?}"
    );
    let dead = answer(&app, &["dlq", "list"]).await;
    assert_eq!(dead["dead_letters"], serde_json::json!([]));
    let redriven = answer(&app, &["dlq", "redrive", "--all"]).await;
    assert_eq!(redriven["redriven"], serde_json::json!([]));
    app.stop().await;
}

#[tokio::test]
async fn the_admin_api_refuses_a_wrong_secret_and_is_off_without_one() {
    let app = TestApp::spawn_with(|c| c.admin_secret = Some(SECRET.into())).await;
    let wrong = admin(&app, Some("not-the-secret"), &["online"]).await;
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("401"),
        "{wrong:?}"
    );
    let none = admin(&app, None, &["online"]).await;
    assert!(!none.status.success());
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("NATTER_ADMIN_SECRET"),
        "{none:?}"
    );
    app.stop().await;

    let off = TestApp::spawn_with(|c| c.admin_secret = None).await;
    let refused = admin(&off, Some(SECRET), &["online"]).await;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("set NATTER_ADMIN_SECRET"),
        "{refused:?}"
    );
    off.stop().await;
}
