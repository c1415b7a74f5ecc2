//! Health and readiness of every service.

use natter_server::Service;
use natter_server::testing::TestApp;

#[tokio::test]
async fn every_service_answers_health_and_readiness() {
    let app = TestApp::spawn().await;
    for part in Service::ALL {
        for path in ["/healthz", "/readyz"] {
            let r = app
                .http
                .get(format!("http://{}{path}", app.addr(part)))
                .send()
                .await
                .expect("answer");
            assert_eq!(r.status(), 200, "{part:?} {path}");
        }
    }
    app.stop().await;
}
