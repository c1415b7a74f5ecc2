use natter_auth::Auth;
use natter_protocol::http::paths;
use natter_testkit::TestService;
use serde_json::Value;

async fn error_of(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body: Value = r.json().await.expect("every error has a JSON body");
    assert!(body["message"].is_string(), "{body}");
    (status, body["code"].as_str().expect("code").to_owned())
}

#[tokio::test]
async fn every_bad_request_gets_a_typed_json_error() {
    let app = TestService::<Auth>::spawn().await;
    let url = |p: &str| format!("{}{p}", app.url());
    let cases = [
        (
            app.http
                .post(url(paths::REGISTER))
                .body("{\"username\":")
                .header("content-type", "application/json"),
            (400, "invalid_request"),
        ),
        (
            app.http.post(url(paths::REGISTER)).body("{}"),
            (415, "unsupported_media_type"),
        ),
        (
            app.http
                .post(url(paths::REGISTER))
                .header("content-type", "application/json")
                .body(format!("{{\"username\":\"{}\"}}", "a".repeat(70_000))),
            (413, "payload_too_large"),
        ),
        (
            app.http.get(url(paths::REGISTER)),
            (405, "method_not_allowed"),
        ),
        (app.http.get(url("/api/v1/auth/nope")), (404, "not_found")),
        (app.http.get(url("/")), (404, "not_found")),
    ];
    for (request, expected) in cases {
        let got = error_of(request.send().await.expect("answer")).await;
        assert_eq!((got.0, got.1.as_str()), expected);
    }
}

#[tokio::test]
async fn half_sent_requests_are_dropped_while_whole_ones_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestService::<Auth>::spawn_with(|c| c.http_timeout_secs = 1).await;
    // 100 clients that stop in the middle of their headers, and 100 that
    // stop in the middle of their bodies.
    let mut half_sent = Vec::new();
    for i in 0..200 {
        let mut stream = tokio::net::TcpStream::connect(app.addr())
            .await
            .expect("connect");
        let partial: &[u8] = if i % 2 == 0 {
            b"POST /api/v1/auth/login HTTP/1.1\r\nHost: natter\r\nContent-Ty"
        } else {
            b"POST /api/v1/auth/login HTTP/1.1\r\nHost: natter\r\n\
              Content-Type: application/json\r\nContent-Length: 60\r\n\r\n{\"username\":"
        };
        stream.write_all(partial).await.expect("write");
        half_sent.push(stream);
    }
    let r = app.client().login("nobody", "some password").await;
    assert_eq!(r.status(), 401);
    for stream in &mut half_sent {
        let mut answer = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            stream.read_to_end(&mut answer),
        )
        .await
        .expect("the half-sent request was dropped")
        .expect("read");
        assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    }
}
