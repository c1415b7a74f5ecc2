//! The signed bus: a process on NATS without `NATTER_BUS_KEY` can neither
//! act as a gateway (a forged caller), as auth (unregister anyone) nor as
//! push (frames into someone's socket).

use natter_platform::bus::BusKey;
use natter_platform::presence::PresenceReader;
use natter_protocol::events::{Delivery, DeliveryBatch};
use natter_protocol::frames::{Request, ServerFrame};
use natter_protocol::rpc::{
    BatchedRequest, Caller, RpcBatch, RpcBatchReply, RpcReply, RpcRequest, SocketRef,
    UnregisterRequest,
};
use natter_protocol::{ErrorCode, SessionId, SocketId, UserId};
use natter_server::testing::{PASSWORD, TestApp};
use natter_testkit::bus_signed;
use std::time::{Duration, Instant};

async fn user_id(app: &TestApp, name: &str) -> UserId {
    UserId(
        sqlx::query_scalar("SELECT id FROM users WHERE username = $1")
            .bind(name)
            .fetch_one(&app.pool)
            .await
            .expect("the user exists"),
    )
}

/// A running app with `alice` registered, her id, and a NATS client that
/// holds no bus key.
async fn alice_and_a_bus_client() -> (TestApp, UserId, async_nats::Client) {
    let app = TestApp::spawn().await;
    app.user("alice").await;
    let alice = user_id(&app, "alice").await;
    let nats = async_nats::connect(&app.config.nats_url)
        .await
        .expect("nats");
    (app, alice, nats)
}

fn as_caller(user: UserId, name: &str) -> Vec<u8> {
    serde_json::to_vec(&request_of(user, name, Request::FetchUserInviteCode)).expect("serialize")
}

fn request_of(user: UserId, name: &str, request: Request) -> RpcRequest {
    RpcRequest {
        caller: Caller {
            user_id: user,
            username: name.into(),
            session_id: SessionId(uuid::Uuid::new_v4()),
            socket: SocketRef {
                gateway_id: "gw-forged".into(),
                socket_id: SocketId(1),
            },
        },
        request,
    }
}

async fn ask(
    nats: &async_nats::Client,
    subject: &str,
    headers: Option<async_nats::HeaderMap>,
    body: Vec<u8>,
) -> RpcReply {
    let reply = nats
        .request_with_headers(subject.to_owned(), headers.unwrap_or_default(), body.into())
        .await
        .expect("message answers");
    serde_json::from_slice(&reply.payload).expect("an RpcReply")
}

fn is_unauthorized(reply: &RpcReply) -> bool {
    matches!(reply, RpcReply::Err(e) if e.code == ErrorCode::Unauthorized)
}

#[tokio::test]
async fn message_refuses_a_caller_that_is_unsigned_forged_replayed_or_moved() {
    let (app, alice, nats) = alice_and_a_bus_client().await;
    let subject = app.config.namespace().rpc_message();
    let body = as_caller(alice, "alice");

    let unsigned = ask(&nats, &subject, None, body.clone()).await;
    assert!(is_unauthorized(&unsigned), "{unsigned:?}");

    let other_key = BusKey::new("a-key-that-is-not-the-deployment-s-key").expect("long");
    let forged = ask(
        &nats,
        &subject,
        Some(other_key.signed(&subject, &body)),
        body.clone(),
    )
    .await;
    assert!(is_unauthorized(&forged), "{forged:?}");

    let elsewhere = bus_signed(&app.config.namespace().rpc_unregister(), &body);
    let moved = ask(&nats, &subject, Some(elsewhere), body.clone()).await;
    assert!(is_unauthorized(&moved), "{moved:?}");

    let signed = bus_signed(&subject, &body);
    let first = ask(&nats, &subject, Some(signed.clone()), body.clone()).await;
    assert!(matches!(first, RpcReply::Ok(_)), "{first:?}");
    let replayed = ask(&nats, &subject, Some(signed), body).await;
    assert!(is_unauthorized(&replayed), "{replayed:?}");
}

/// A batch of requests is refused whole unless signed for its subject;
/// signed, each request gets its own answer, in order.
#[tokio::test]
async fn message_answers_a_signed_batch_request_by_request_and_refuses_an_unsigned_one() {
    let (app, alice, nats) = alice_and_a_bus_client().await;
    let subject = app.config.namespace().rpc_message_batch();
    let batch = RpcBatch {
        requests: [
            Request::FetchUserInviteCode,
            Request::FetchChannels,
            Request::Enter {
                channel_id: natter_protocol::ChannelId(999_999),
            },
        ]
        .into_iter()
        .map(|request| BatchedRequest {
            rpc: request_of(alice, "alice", request),
            traceparent: None,
        })
        .collect(),
    };
    let body = serde_json::to_vec(&batch).expect("serialize");

    let unsigned = ask(&nats, &subject, None, body.clone()).await;
    assert!(is_unauthorized(&unsigned), "{unsigned:?}");
    let moved = bus_signed(&app.config.namespace().rpc_message(), &body);
    let moved = ask(&nats, &subject, Some(moved), body.clone()).await;
    assert!(is_unauthorized(&moved), "{moved:?}");

    let reply = nats
        .request_with_headers(subject.clone(), bus_signed(&subject, &body), body.into())
        .await
        .expect("message answers");
    let replies = serde_json::from_slice::<RpcBatchReply>(&reply.payload)
        .expect("an RpcBatchReply")
        .replies;
    assert_eq!(replies.len(), 3, "{replies:?}");
    assert!(
        matches!(&replies[0], RpcReply::Ok(v) if v["invite_code"].is_string()),
        "{replies:?}"
    );
    assert!(
        matches!(&replies[1], RpcReply::Ok(v) if v["channels"].is_array()),
        "{replies:?}"
    );
    assert!(
        matches!(&replies[2], RpcReply::Err(e) if e.code == ErrorCode::NotFound),
        "{replies:?}"
    );
}

#[tokio::test]
async fn an_unsigned_unregister_deletes_nobody() {
    let (app, alice, nats) = alice_and_a_bus_client().await;
    let body = serde_json::to_vec(&UnregisterRequest { user_id: alice }).expect("serialize");
    let reply = ask(&nats, &app.config.namespace().rpc_unregister(), None, body).await;
    assert!(is_unauthorized(&reply), "{reply:?}");
    assert_eq!(app.login("alice", PASSWORD).await.status(), 200);
}

#[tokio::test]
async fn a_gateway_writes_only_signed_deliveries_to_its_sockets() {
    let app = TestApp::spawn().await;
    let (_, mut socket) = app.ws_user("alice").await;
    let alice = user_id(&app, "alice").await;
    let redis = natter_platform::cache::connect(&app.config)
        .await
        .expect("redis");
    let reader = PresenceReader::new(redis, app.config.namespace());
    let deadline = Instant::now() + Duration::from_secs(10);
    let live = loop {
        let live = reader.live_sockets(&[alice]).await.expect("presence");
        if let Some(sockets) = live.get(&alice).filter(|s| !s.is_empty()) {
            break sockets[0].clone();
        }
        assert!(Instant::now() < deadline, "alice never became live");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let batch = |reason: &str| {
        serde_json::to_vec(&DeliveryBatch {
            items: vec![Delivery::Frame {
                sockets: vec![live.socket],
                frame: ServerFrame::Reconnect {
                    reason: reason.into(),
                }
                .to_json(),
            }],
        })
        .expect("serialize")
    };
    let nats = async_nats::connect(&app.config.nats_url)
        .await
        .expect("nats");
    let subject = app.config.namespace().gateway_subject(&live.gateway);
    nats.publish(subject.clone(), batch("forged").into())
        .await
        .expect("publish");
    let genuine = batch("signed");
    nats.publish_with_headers(
        subject.clone(),
        bus_signed(&subject, &genuine),
        genuine.into(),
    )
    .await
    .expect("publish");
    let push = socket.push("reconnect").await;
    assert_eq!(push["reason"], "signed", "the unsigned batch came first");
}
