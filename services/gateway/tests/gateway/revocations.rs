//! A starting gateway catches up with the sessions stream whatever state it
//! is in: never written, aged out (JetStream keeps `last_sequence` after
//! the messages are gone), or holding revocations.

use crate::support::{GatewayApp, connect, session_token, token, user_id, ws_url};
use async_nats::jetstream::{self, stream};
use natter_protocol::SessionId;
use natter_protocol::events::SessionRevoked;
use natter_testkit::ws;
use std::time::{Duration, Instant};

async fn jetstream(app: &GatewayApp) -> jetstream::Context {
    let client = async_nats::connect(&app.config.nats_url)
        .await
        .expect("nats");
    jetstream::new(client)
}

/// Announces `session` as revoked on the sessions stream, as the relay does.
async fn revoke(app: &GatewayApp, js: &jetstream::Context, session: SessionId, name: &str) {
    let revoked = SessionRevoked {
        session_id: session,
        user_id: user_id(name),
    };
    js.publish(
        app.config.namespace().session_revoked_subject(),
        serde_json::to_vec(&revoked).expect("encoded").into(),
    )
    .await
    .expect("published")
    .await
    .expect("stored");
}

/// Replaces the sessions stream with one whose messages live `max_age`.
async fn recreate_sessions_stream(
    app: &GatewayApp,
    js: &jetstream::Context,
    max_age: Duration,
) -> stream::Stream {
    let ns = app.config.namespace();
    js.delete_stream(ns.sessions_stream())
        .await
        .expect("deleted");
    js.create_stream(stream::Config {
        name: ns.sessions_stream(),
        subjects: vec![ns.session_revoked_subject()],
        max_age,
        duplicate_window: max_age,
        ..Default::default()
    })
    .await
    .expect("created")
}

async fn refused(app: &GatewayApp, token: &str) -> bool {
    match ws::connect(&ws_url(app), Some(token)).await {
        Ok(_) => false,
        Err((status, _)) => status == 401,
    }
}

#[tokio::test]
async fn a_gateway_starts_on_a_sessions_stream_that_never_held_a_revocation() {
    let app = GatewayApp::spawn().await;
    let token = token(&app, "alice").await;
    connect(&app, &token).await.close().await;
}

#[tokio::test]
async fn a_gateway_starts_after_its_revocations_aged_out_and_knows_the_later_ones() {
    let mut app = GatewayApp::spawn().await;
    app.stop_service().await;
    let js = jetstream(&app).await;
    let mut sessions = recreate_sessions_stream(&app, &js, Duration::from_secs(1)).await;
    revoke(&app, &js, SessionId(uuid::Uuid::new_v4()), "old").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = sessions.info().await.expect("info").state.clone();
        if state.messages == 0 {
            assert_eq!(state.last_sequence, 1, "the stream keeps its sequence");
            break;
        }
        assert!(Instant::now() < deadline, "the revocation never aged out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // An aged-out stream alone.
    app.start_service().await;
    let live = token(&app, "alice").await;
    connect(&app, &live).await.close().await;
    app.stop_service().await;
    // Aged-out revocations followed by one that is still kept.
    let mut config = sessions.info().await.expect("info").config.clone();
    config.max_age = Duration::from_secs(3600);
    js.update_stream(config).await.expect("updated");
    let (bob, bob_session) = session_token(&app, "bob").await;
    revoke(&app, &js, bob_session, "bob").await;
    app.start_service().await;
    assert!(refused(&app, &bob).await, "a kept revocation is honoured");
    connect(&app, &live).await.close().await;
}

#[tokio::test]
async fn a_gateway_that_starts_after_a_revocation_refuses_its_token() {
    let mut app = GatewayApp::spawn().await;
    app.stop_service().await;
    let js = jetstream(&app).await;
    let (bob, bob_session) = session_token(&app, "bob").await;
    for _ in 0..3 {
        revoke(&app, &js, SessionId(uuid::Uuid::new_v4()), "other").await;
    }
    revoke(&app, &js, bob_session, "bob").await;
    app.start_service().await;
    assert!(refused(&app, &bob).await);
    let alice = token(&app, "alice").await;
    connect(&app, &alice).await.close().await;
}

/// The follower's consumer lives in the NATS server's memory: after a
/// restart it is gone, and the follower must open a new one after the
/// last revocation it applied (a private server, killed and restarted).
#[tokio::test]
async fn a_revocation_after_a_nats_restart_still_closes_its_session() {
    let mut nats = natter_testkit::private::PrivateNats::start();
    let url = nats.url();
    let app = GatewayApp::spawn_with(|c| c.nats_url = url).await;
    let (alice, alice_session) = session_token(&app, "alice").await;
    let mut socket = connect(&app, &alice).await;

    nats.kill();
    // Long enough for the follower to find its consumer gone.
    tokio::time::sleep(natter_platform::tail::SILENCE + Duration::from_secs(1)).await;
    nats.restart();
    let js = jetstream(&app).await;
    let revoked = SessionRevoked {
        session_id: alice_session,
        user_id: user_id("alice"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let published = js
            .publish(
                app.config.namespace().session_revoked_subject(),
                serde_json::to_vec(&revoked).expect("encoded").into(),
            )
            .await;
        if let Ok(ack) = published
            && ack.await.is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "JetStream never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let closed = socket.closed_within(Duration::from_secs(10)).await;
    assert_eq!(closed.code, natter_protocol::close::POLICY_VIOLATION);
    assert!(refused(&app, &alice).await, "and its token is refused");
}
