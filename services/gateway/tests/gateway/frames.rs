use crate::support::{GatewayApp, connect_user};
use natter_protocol::close;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn keep_alive_and_leave_are_answered_in_order() {
    let app = GatewayApp::spawn().await;
    let (_, mut ws) = connect_user(&app, "alice").await;
    assert_eq!(ws.call("keep_alive", json!({})).await, Ok(json!({})));
    assert_eq!(ws.call("leave", json!({})).await, Ok(json!({})));
}

#[tokio::test]
async fn bad_frames_get_invalid_request_and_the_socket_survives() {
    let app = GatewayApp::spawn().await;
    let (_, mut ws) = connect_user(&app, "alice").await;
    let cases = [
        ("not json", None),
        (r#"{"type":"keep_alive"}"#, None),
        (r#"{"id":"7","type":"keep_alive"}"#, None),
        (r#"{"id":3,"type":"no_such_thing"}"#, Some(3)),
        (r#"{"id":4,"type":"enter"}"#, Some(4)),
        (r#"{"id":5,"type":"enter","channel_id":"one"}"#, Some(5)),
        (
            r#"{"id":6,"type":"write_message","channel_id":1,"client_msg_id":"a","content":""}"#,
            Some(6),
        ),
    ];
    for (text, id) in cases {
        ws.send_text(text).await;
        let answer = ws.answer_to(id).await;
        assert_eq!(answer["type"], "error", "{text}");
        assert_eq!(answer["code"], "invalid_request", "{text}");
    }
    let oversized = json!({"type":"write_message","channel_id":1,"client_msg_id":"x",
                           "content": "é".repeat(4001)});
    let err = ws.request(oversized).await.expect_err("too long");
    assert_eq!(err.code, "invalid_request");
    ws.send_binary(vec![1, 2, 3]).await;
    assert_eq!(ws.answer_to(None).await["code"], "invalid_request");
    assert_eq!(ws.call("keep_alive", json!({})).await, Ok(json!({})));
}

#[tokio::test]
async fn a_frame_over_64_kib_closes_the_socket_with_1009() {
    let app = GatewayApp::spawn().await;
    let (_, mut ws) = connect_user(&app, "alice").await;
    ws.send_text(&format!(
        r#"{{"id":1,"type":"keep_alive","pad":"{}"}}"#,
        "x".repeat(70_000)
    ))
    .await;
    let closed = ws.closed_within(Duration::from_secs(5)).await;
    assert_eq!(closed.code, close::MESSAGE_TOO_BIG);
}

#[tokio::test]
async fn requests_beyond_the_rate_limit_are_refused_with_rate_limited() {
    let app = GatewayApp::spawn_with(|c| {
        c.ws_rate = 1;
        c.ws_burst = 3;
    })
    .await;
    let (_, mut ws) = connect_user(&app, "alice").await;
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(match ws.call("keep_alive", json!({})).await {
            Ok(_) => "ok".to_owned(),
            Err(e) => e.code,
        });
    }
    assert_eq!(&codes[..3], ["ok", "ok", "ok"]);
    assert!(codes[3..].iter().all(|c| c == "rate_limited"), "{codes:?}");
}

#[tokio::test]
async fn a_request_the_message_service_cannot_answer_is_unavailable() {
    let app = GatewayApp::spawn_with(|c| c.request_timeout_secs = 1).await;
    let (_, mut ws) = connect_user(&app, "alice").await;
    let err = ws
        .call("fetch_channels", json!({}))
        .await
        .expect_err("no message service");
    assert_eq!(err.code, "unavailable");
}

#[tokio::test]
async fn terminal_escape_sequences_are_refused_at_the_edge() {
    let app = GatewayApp::spawn().await;
    let (_, mut ws) = connect_user(&app, "alice").await;
    for frame in [
        json!({"type": "write_message", "channel_id": 1, "client_msg_id": "a",
               "content": "\u{1b}[2J\u{1b}[Hhello"}),
        json!({"type": "write_message", "channel_id": 1, "client_msg_id": "b",
               "content": "bell\u{7}"}),
        json!({"type": "create", "title": "\u{9b}31mred", "usernames": ["bob"]}),
    ] {
        let err = ws.request(frame.clone()).await.expect_err("refused");
        assert_eq!(err.code, "invalid_request", "{frame}");
        assert!(
            err.message.contains("control characters"),
            "{}",
            err.message
        );
    }
}

#[tokio::test]
async fn a_socket_that_keeps_sending_into_refusals_is_closed_with_1008() {
    let app = GatewayApp::spawn_with(|c| {
        c.ws_rate = 1;
        c.ws_burst = 1;
    })
    .await;
    let (_, mut ws) = connect_user(&app, "alice").await;
    for _ in 0..400 {
        ws.send_text("junk").await;
    }
    let closed = ws.closed_within(Duration::from_secs(10)).await;
    assert_eq!(closed.code, close::POLICY_VIOLATION);
    let answers = ws.take_answers();
    let refused = answers
        .iter()
        .filter(|a| a["code"] == "rate_limited")
        .count();
    assert!(refused <= 100, "{refused} refusals answered");
    assert!(answers.len() < 400, "the socket ended before the flood did");
}

#[tokio::test]
async fn frames_queued_behind_a_slow_request_are_all_answered_in_order() {
    let app = GatewayApp::spawn_with(|c| {
        c.ws_rate = 10_000;
        c.ws_burst = 10_000;
        c.request_timeout_secs = 1;
    })
    .await;
    let (_, mut ws) = connect_user(&app, "alice").await;
    // No message service answers: the first request waits for its
    // timeout while 600 frames arrive behind it, more than the gateway
    // queues before it stops reading the socket.
    ws.send_text(r#"{"id":1,"type":"fetch_channels"}"#).await;
    for id in 2..=601 {
        ws.send_text(&format!(r#"{{"id":{id},"type":"nope"}}"#))
            .await;
    }
    let first = ws.next_answer().await;
    assert_eq!(
        (first["id"].clone(), first["code"].clone()),
        (json!(1), json!("unavailable"))
    );
    for id in 2..=601 {
        let answer = ws.next_answer().await;
        assert_eq!(answer["id"], id);
        assert_eq!(answer["code"], "invalid_request");
    }
}
