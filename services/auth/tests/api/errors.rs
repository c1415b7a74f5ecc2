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
