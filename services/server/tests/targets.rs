//! The binary's targets start, report readiness and stop on SIGTERM.

use natter_testkit::TestDatabase;
use natter_testkit::private::free_port;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    ports: Vec<u16>,
}

fn spawn(target: &str, database_url: &str) -> Server {
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let namespace = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_natter-server"));
    cmd.arg(target)
        .env("NATTER_DATABASE_URL", database_url)
        .env("NATTER_NAMESPACE", &namespace)
        .env("NATTER_AUTH_ADDR", format!("127.0.0.1:{}", ports[0]))
        .env("NATTER_GATEWAY_ADDR", format!("127.0.0.1:{}", ports[1]))
        .env("NATTER_MESSAGE_ADDR", format!("127.0.0.1:{}", ports[2]))
        .env("NATTER_PUSH_ADDR", format!("127.0.0.1:{}", ports[3]))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if target != "all" {
        cmd.env("NATTER_JWT_SECRET", "a-secret-for-the-binary-test")
            .env("NATTER_BUS_KEY", natter_testkit::BUS_KEY);
    } else {
        cmd.env_remove("NATTER_JWT_SECRET")
            .env_remove("NATTER_BUS_KEY");
    }
    Server {
        child: cmd.spawn().expect("natter-server starts"),
        ports,
    }
}

async fn wait_ready(port: u16) {
    let url = format!("http://127.0.0.1:{port}/readyz");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(&url).await
            && r.status() == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "{url} never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn terminate(mut server: Server) {
    let pid = server.child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = server.child.try_wait().expect("wait") {
            assert!(status.success(), "exit after SIGTERM: {status}");
            return;
        }
        assert!(Instant::now() < deadline, "did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn all_runs_the_four_services_and_stops_on_sigterm() {
    let db = TestDatabase::create().await;
    let server = spawn("all", &db.url);
    for port in server.ports.clone() {
        wait_ready(port).await;
    }
    terminate(server);
}

#[tokio::test]
async fn each_service_target_starts_alone_and_stops_on_sigterm() {
    let db = TestDatabase::create().await;
    for (target, index) in [("auth", 0), ("gateway", 1), ("message", 2), ("push", 3)] {
        let server = spawn(target, &db.url);
        wait_ready(server.ports[index]).await;
        terminate(server);
    }
}

#[test]
fn a_service_refuses_to_start_without_a_jwt_secret() {
    let output = Command::new(env!("CARGO_BIN_EXE_natter-server"))
        .arg("auth")
        .env_remove("NATTER_JWT_SECRET")
        .env("NATTER_AUTH_ADDR", "127.0.0.1:0")
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stdout) + String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("NATTER_JWT_SECRET"), "{text}");
}

#[test]
fn a_service_refuses_to_start_without_a_bus_key() {
    for target in ["auth", "gateway", "message", "push"] {
        let output = Command::new(env!("CARGO_BIN_EXE_natter-server"))
            .arg(target)
            .env("NATTER_JWT_SECRET", "a-secret-for-the-binary-test")
            .env_remove("NATTER_BUS_KEY")
            .env("NATTER_AUTH_ADDR", "127.0.0.1:0")
            .output()
            .expect("runs");
        assert!(!output.status.success(), "{target} started");
        let text =
            String::from_utf8_lossy(&output.stdout) + String::from_utf8_lossy(&output.stderr);
        assert!(text.contains("NATTER_BUS_KEY"), "{target}: {text}");
    }
}

#[test]
fn migrate_creates_and_migrates_a_database() {
    let name = format!("natter_migrate_{}", uuid::Uuid::new_v4().simple());
    let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    let status = Command::new(env!("CARGO_BIN_EXE_natter-server"))
        .arg("migrate")
        .env("NATTER_DATABASE_URL", &url)
        .stdout(Stdio::null())
        .status()
        .expect("runs");
    assert!(status.success());
    let check = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", &name, "-tAc"])
        .arg("SELECT count(*) FROM _sqlx_migrations")
        .output()
        .expect("psql");
    let count = String::from_utf8_lossy(&check.stdout).trim().to_owned();
    let _ = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c"])
        .arg(format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
        .output();
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations"))
        .expect("migrations dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count();
    assert_eq!(count, migrations.to_string());
}

#[test]
fn flags_go_after_the_subcommand_and_config_prints_them_with_secrets_redacted() {
    let output = Command::new(env!("CARGO_BIN_EXE_natter-server"))
        .args(["config", "--ws-rate", "7", "--namespace", "flagged"])
        .env("NATTER_JWT_SECRET", "jwt-hunter2")
        .env(
            "NATTER_DATABASE_URL",
            "postgres://natter:db-hunter2@db.example:5432/natter",
        )
        .env("NATTER_NATS_URL", "nats://natter:nats-hunter2@nats:4222")
        .output()
        .expect("runs");
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(!text.contains("hunter2"), "{text}");
    for wanted in [
        "NATTER_WS_RATE=7",
        "NATTER_NAMESPACE=flagged",
        "NATTER_JWT_SECRET=[redacted]",
        "NATTER_DATABASE_URL=postgres://natter:***@db.example:5432/natter",
        "NATTER_NATS_URL=nats://natter:***@nats:4222",
    ] {
        assert!(text.lines().any(|l| l == wanted), "{wanted} in\n{text}");
    }
}

#[test]
fn version_names_the_commit_it_was_built_from() {
    let output = Command::new(env!("CARGO_BIN_EXE_natter-server"))
        .arg("--version")
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        text.trim(),
        format!(
            "natter-server {} ({})",
            env!("CARGO_PKG_VERSION"),
            env!("NATTER_COMMIT")
        )
    );
    assert!(!env!("NATTER_COMMIT").is_empty());
}

/// Every service's `/metrics`, after some traffic, holds the series the
/// dashboard reads and the build info.
#[tokio::test]
async fn every_service_serves_its_metrics_for_prometheus() {
    let db = TestDatabase::create().await;
    let server = spawn("all", &db.url);
    for port in server.ports.clone() {
        wait_ready(port).await;
    }
    let auth = format!("http://127.0.0.1:{}/api/v1/auth", server.ports[0]);
    let http = reqwest::Client::new();
    let creds = serde_json::json!({"username": "metered", "password": "correct horse battery"});
    let r = http
        .post(format!("{auth}/register"))
        .json(&creds)
        .send()
        .await
        .expect("register");
    assert_eq!(r.status(), 201);
    let login: serde_json::Value = http
        .post(format!("{auth}/login"))
        .json(&creds)
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("token");
    let token = login["token"].as_str().expect("token");
    let url = format!("ws://127.0.0.1:{}/ws/v1/message", server.ports[1]);
    let mut socket = natter_testkit::ws::connect(&url, Some(token))
        .await
        .expect("socket");
    socket
        .call("fetch_user_invite_code", serde_json::json!({}))
        .await
        .expect("a request");

    let build_info = format!("natter_build_info{{commit=\"{}\"", env!("NATTER_COMMIT"));
    for port in server.ports.clone() {
        let response = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .expect("scrape");
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .to_owned();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        let text = response.text().await.expect("text");
        let series = |name: &str| {
            text.lines()
                .any(|l| l.starts_with(name) && !l.starts_with('#'))
        };
        for name in [
            "natter_auth_logins_total{",
            "natter_requests_total{",
            "natter_gateway_sockets",
            "natter_gateway_frames_in_total",
            build_info.as_str(),
        ] {
            assert!(series(name), "port {port}: no {name} series in\n{text}");
        }
        assert!(
            text.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
            "{text}"
        );
    }
    drop(socket);
    terminate(server);
}
