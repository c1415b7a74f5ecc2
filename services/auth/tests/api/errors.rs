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

/// Property test of auth's extractors through the real service: any method,
/// path, content type, body and `Authorization` header gets a success or a
/// typed JSON error whose code matches its status, never a 500. CI-sized:
/// each case is a real request.
#[test]
fn arbitrary_requests_get_typed_json_errors() {
    use natter_protocol::ErrorCode;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let app = runtime.block_on(TestService::<Auth>::spawn());
    let method = prop::sample::select(vec!["GET", "POST", "PUT", "DELETE"]);
    let path = prop_oneof![
        prop::sample::select(vec![
            paths::REGISTER,
            paths::LOGIN,
            paths::LOGOUT,
            paths::UNREGISTER,
            paths::ME,
        ])
        .prop_map(str::to_owned),
        "/[a-z/]{0,20}",
    ];
    let content_type = prop::option::of(prop_oneof![
        Just("application/json".to_owned()),
        Just("text/plain".to_owned()),
        "[ -~]{0,20}",
    ]);
    let body = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..128),
        (".{0,40}", ".{0,40}").prop_map(|(u, p)| {
            serde_json::json!({"username": u, "password": p})
                .to_string()
                .into_bytes()
        }),
        ("[a-z]{3,8}", "[a-z ]{8,12}").prop_map(|(u, p)| {
            serde_json::json!({"username": u, "password": p})
                .to_string()
                .into_bytes()
        }),
    ];
    let authorization =
        prop::option::of(prop_oneof!["Bearer [A-Za-z0-9._-]{0,60}", "[ -~]{0,30}",]);
    let mut runner = TestRunner::new(Config::with_cases(64));
    runner
        .run(
            &(method, path, content_type, body, authorization),
            |(method, path, content_type, body, authorization)| {
                let (status, body) = runtime.block_on(async {
                    let mut request = app
                        .http
                        .request(
                            method.parse().expect("method"),
                            format!("{}{path}", app.url()),
                        )
                        .body(body);
                    if let Some(v) = &content_type {
                        request = request.header("content-type", v);
                    }
                    if let Some(v) = &authorization {
                        request = request.header("authorization", v);
                    }
                    let response = request.send().await.expect("auth answers");
                    let status = response.status().as_u16();
                    (status, response.bytes().await.expect("body"))
                });
                prop_assert_ne!(status, 500);
                if matches!(status, 200 | 201 | 204) {
                    return Ok(());
                }
                let error: Value = serde_json::from_slice(&body).expect("a JSON error body");
                let code: ErrorCode =
                    serde_json::from_value(error["code"].clone()).expect("a known code");
                prop_assert_eq!(code.http_status(), status);
                prop_assert!(error["message"].is_string());
                Ok(())
            },
        )
        .expect("every request gets a typed answer");
    drop(app);
}
