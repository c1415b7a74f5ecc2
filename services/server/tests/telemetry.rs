//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set, one message sent through the
//! four services, each its own `natter-server` process, produces one
//! connected trace (gateway → message → outbox → JetStream → push →
//! gateway) and the metrics the dashboard reads, and message's JSON log
//! lines carry the ids of those traces. Messages stored together, which
//! travel as one bus message, each keep their trace as far as push. A real
//! OTLP/HTTP receiver, built from opentelemetry-proto's types, stands in
//! for the collector.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use natter_testkit::private::free_port;
use natter_testkit::{TestDatabase, ws};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use serde_json::json;
use std::collections::{BTreeSet, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Received {
    spans: Vec<Span>,
    metrics: BTreeSet<String>,
}

struct Span {
    trace: Vec<u8>,
    service: String,
    name: String,
    /// Its `request` attribute (the gateway's forwarding span has one).
    request: Option<String>,
    /// The traces it links to.
    links: Vec<Vec<u8>>,
}

type Shared = Arc<Mutex<Received>>;

fn service_name(resource: Option<&opentelemetry_proto::tonic::resource::v1::Resource>) -> String {
    resource
        .and_then(|r| string_attribute(&r.attributes, "service.name"))
        .unwrap_or_default()
}

fn string_attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| match &v.value {
            Some(AnyValue::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
}

async fn traces(State(shared): State<Shared>, body: Bytes) -> &'static str {
    let request = ExportTraceServiceRequest::decode(body).expect("OTLP traces");
    let mut received = shared.lock().expect("lock");
    for rs in request.resource_spans {
        let service = service_name(rs.resource.as_ref());
        for ss in rs.scope_spans {
            for span in ss.spans {
                let request = string_attribute(&span.attributes, "request");
                received.spans.push(Span {
                    trace: span.trace_id,
                    service: service.clone(),
                    name: span.name,
                    request,
                    links: span.links.into_iter().map(|l| l.trace_id).collect(),
                });
            }
        }
    }
    ""
}

async fn metrics(State(shared): State<Shared>, body: Bytes) -> &'static str {
    let request = ExportMetricsServiceRequest::decode(body).expect("OTLP metrics");
    let mut received = shared.lock().expect("lock");
    for rm in request.resource_metrics {
        for sm in rm.scope_metrics {
            for m in sm.metrics {
                received.metrics.insert(m.name);
            }
        }
    }
    ""
}

async fn receiver() -> (u16, Shared) {
    let shared = Shared::default();
    let app = Router::new()
        .route("/v1/traces", post(traces))
        .route("/v1/metrics", post(metrics))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, shared)
}

struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        for child in &mut self.0 {
            let _ = child.wait();
        }
    }
}

/// Waits for `service` on `port` to be ready: a minute, since the fault
/// suite's processes may share the machine with it.
async fn wait_ready(service: &str, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        match reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await {
            Ok(r) if r.status() == 200 => return,
            Ok(r) => last = r.text().await.unwrap_or_default(),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{service} (port {port}) never became ready: {last}");
}

#[tokio::test]
async fn every_message_makes_one_trace_across_the_services_its_log_lines_name_and_the_dashboard_metrics()
 {
    let (otlp_port, received) = receiver().await;
    let db = TestDatabase::create().await;
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let namespace = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let mut children = Processes(Vec::new());
    let log_path = std::env::temp_dir().join(format!("natter-telemetry-{namespace}.log"));
    let message_log = std::fs::File::create(&log_path).expect("log file");
    for target in ["auth", "message", "push", "gateway"] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_natter-server"));
        if target == "message" {
            // Its queries log inside the spans of the requests it handles.
            command
                .env("NATTER_LOG_FORMAT", "json")
                .env("RUST_LOG", "info,sqlx::query=trace")
                .stdout(message_log.try_clone().expect("log file"));
        } else {
            command.stdout(Stdio::null());
        }
        let child = command
            .arg(target)
            .env("NATTER_DATABASE_URL", &db.url)
            .env("NATTER_NAMESPACE", &namespace)
            .env("NATTER_JWT_SECRET", "telemetry-test-secret")
            .env("NATTER_BUS_KEY", natter_testkit::BUS_KEY)
            // JetStream reserves a stream's max bytes up front: keep this
            // test's reservation small on the shared server.
            .env("NATTER_EVENTS_MAX_BYTES", "64MiB")
            .env("NATTER_AUTH_ADDR", format!("127.0.0.1:{}", ports[0]))
            .env("NATTER_GATEWAY_ADDR", format!("127.0.0.1:{}", ports[1]))
            .env("NATTER_MESSAGE_ADDR", format!("127.0.0.1:{}", ports[2]))
            .env("NATTER_PUSH_ADDR", format!("127.0.0.1:{}", ports[3]))
            .env(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{otlp_port}"),
            )
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env("OTEL_METRIC_EXPORT_INTERVAL", "300")
            .env_remove("OTEL_SERVICE_NAME")
            .stderr(Stdio::null())
            .spawn()
            .expect("natter-server starts");
        children.0.push(child);
    }
    for (service, port) in ["auth", "gateway", "message", "push"].iter().zip(&ports) {
        wait_ready(service, *port).await;
    }

    let auth = format!("http://127.0.0.1:{}", ports[0]);
    let http = reqwest::Client::new();
    let mut tokens = HashMap::new();
    for name in ["alice", "bob"] {
        let creds = json!({"username": name, "password": "correct horse battery"});
        let r = http
            .post(format!("{auth}/api/v1/auth/register"))
            .json(&creds)
            .send()
            .await
            .expect("register");
        assert_eq!(r.status(), 201);
        let r = http
            .post(format!("{auth}/api/v1/auth/login"))
            .json(&creds)
            .send()
            .await
            .expect("login");
        let body: serde_json::Value = r.json().await.expect("token");
        tokens.insert(name, body["token"].as_str().expect("token").to_owned());
    }
    let url = format!("ws://127.0.0.1:{}/ws/v1/message", ports[1]);
    let mut alice = ws::connect(&url, Some(&tokens["alice"]))
        .await
        .expect("alice socket");
    let mut bob = ws::connect(&url, Some(&tokens["bob"]))
        .await
        .expect("bob socket");
    let code = bob
        .call("fetch_user_invite_code", json!({}))
        .await
        .expect("code")["invite_code"]
        .clone();
    alice
        .call("invite", json!({"invite_code": code}))
        .await
        .expect("invite");
    bob.call("accept", json!({"username": "alice"}))
        .await
        .expect("accept");
    let channel = alice
        .call("create", json!({"title": "traced", "usernames": ["bob"]}))
        .await
        .expect("create")["channel_id"]
        .clone();
    alice
        .call("enter", json!({"channel_id": channel}))
        .await
        .expect("enter");
    bob.call("enter", json!({"channel_id": channel}))
        .await
        .expect("enter");
    alice
        .call(
            "write_message",
            json!({"channel_id": channel, "client_msg_id": "m1", "content": "hello"}),
        )
        .await
        .expect("write");
    bob.push("message").await;

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let logged = logged_trace_ids(&log_path);
        let (connected, metrics, traces, joined) = {
            let r = received.lock().expect("lock");
            let joined = r
                .spans
                .iter()
                .any(|s| s.service == "natter-message" && logged.contains(&hex(&s.trace)));
            let mut services_by_trace: HashMap<&[u8], BTreeSet<&str>> = HashMap::new();
            for span in &r.spans {
                services_by_trace
                    .entry(&span.trace)
                    .or_default()
                    .insert(&span.service);
            }
            let connected = services_by_trace.values().any(|s| {
                ["natter-gateway", "natter-message", "natter-push"]
                    .iter()
                    .all(|n| s.contains(n))
            });
            let traces: Vec<String> = services_by_trace
                .values()
                .map(|s| s.iter().copied().collect::<Vec<_>>().join("+"))
                .collect();
            (connected, r.metrics.clone(), traces, joined)
        };
        let wanted = [
            natter_platform::metrics::REQUESTS,
            natter_platform::metrics::MESSAGES_STORED,
            natter_platform::metrics::DELIVERIES,
            natter_platform::metrics::DELIVERY_LATENCY,
            natter_platform::metrics::SOCKETS,
            natter_platform::metrics::LOGINS,
        ];
        if connected && joined && wanted.iter().all(|w| metrics.contains(*w)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no connected trace, metrics missing or no log line of an exported trace: \
             connected={connected}, joined={joined}, traces={traces:?}, metrics={metrics:?}, \
             logged trace ids={logged:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Messages one `write_messages` call stores in a partition (they
    // share its time) travel as one bus message; each still takes its own trace
    // to push, as the span that delivers it or as a link of a merged
    // delivery. Alice and Bob write at once until two writes meet in a
    // call.
    let mut writes = 1;
    let mut together = false;
    for round in 0..ROUNDS {
        let (a, b) = tokio::join!(
            alice.call(
                "write_message",
                json!({"channel_id": channel, "client_msg_id": format!("a{round}"), "content": "one"}),
            ),
            bob.call(
                "write_message",
                json!({"channel_id": channel, "client_msg_id": format!("b{round}"), "content": "two"}),
            ),
        );
        let (a, b) = (a.expect("alice writes"), b.expect("bob writes"));
        writes += 2;
        if a["sent_at"] == b["sent_at"] {
            together = true;
            break;
        }
    }
    assert!(
        together,
        "no two writes were stored by one call in {ROUNDS} rounds"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (traced, unreached) = {
            let r = received.lock().expect("lock");
            let reached: BTreeSet<&[u8]> = r
                .spans
                .iter()
                .filter(|s| s.service == "natter-push")
                .flat_map(|s| std::iter::once(&s.trace).chain(&s.links))
                .map(Vec::as_slice)
                .collect();
            let traced: BTreeSet<&[u8]> = r
                .spans
                .iter()
                .filter(|s| {
                    s.name == "gateway.forward" && s.request.as_deref() == Some("write_message")
                })
                .map(|s| s.trace.as_slice())
                .collect();
            let unreached: Vec<String> = traced
                .iter()
                .filter(|t| !reached.contains(*t))
                .map(|t| hex(t))
                .collect();
            (traced.len(), unreached)
        };
        if traced == writes && unreached.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{traced} of {writes} writes traced; these never reached push: {unreached:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = std::fs::remove_file(&log_path);
}

/// Rounds of simultaneous writes tried before giving up on two of them
/// being stored by one call.
const ROUNDS: usize = 200;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `trace_id`s of the JSON log lines in `path` (each line checked to
/// carry a `span_id` with it).
fn logged_trace_ids(path: &std::path::Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["span_id"].as_str().is_some_and(|s| s.len() == 16))
        .filter_map(|line| line["trace_id"].as_str().map(str::to_owned))
        .collect()
}
