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
