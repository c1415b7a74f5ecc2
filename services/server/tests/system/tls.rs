//! TLS to every dependency: `natter-server all` against a private Postgres,
//! Redis and NATS that accept only TLS, with certificates from a test CA
//! the process is told about (`sslrootcert`, `NATTER_REDIS_CA`,
//! `NATTER_NATS_CA`), and passwords from the environment (`PGPASSWORD`,
//! `NATTER_REDIS_PASSWORD`) rather than the URLs.

use natter_protocol::http::paths;
use natter_server::testing::ws;
use natter_testkit::AuthClient;
use natter_testkit::private::{PrivateNats, PrivatePostgres, PrivateRedis, Setup, free_port};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PG_PASSWORD: &str = "a-postgres-password";
const REDIS_PASSWORD: &str = "a-redis-password";

/// A test CA and a certificate for `localhost` and 127.0.0.1 signed by it:
/// (CA, certificate, key), PEM.
fn certificates() -> (String, String, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key"))
        .expect("ca certificate");
    let key = KeyPair::generate().expect("server key");
    let certificate = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("server params")
        .signed_by(&key, &ca)
        .expect("server certificate");
    (ca.pem(), certificate.pem(), key.serialize_pem())
}

/// `natter-server` killed when dropped, its output kept for a failure.
struct Natter {
    child: Child,
    log: PathBuf,
}

impl Natter {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Natter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn natter(args: &[&str], env: &[(&str, String)], dir: &Path) -> Natter {
    let log = dir.join(format!("natter-{}.log", uuid::Uuid::new_v4()));
    let out = std::fs::File::create(&log).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_natter-server"))
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(out.try_clone().expect("log file"))
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .expect("natter-server starts");
    Natter { child, log }
}

fn database_url(port: u16, sslmode: &str, ca: &Path) -> String {
    format!(
        "postgres://postgres@127.0.0.1:{port}/natter?sslmode={sslmode}&sslrootcert={}",
        ca.display()
    )
}

#[tokio::test]
async fn natter_reaches_postgres_redis_and_nats_over_tls_only() {
    natter_platform::tls::install_crypto_provider();
    let (ca, certificate, key) = certificates();
    let dir = std::env::temp_dir().join(format!("natter-tls-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca).expect("write CA");
    let server_files = vec![
        ("server.pem".to_owned(), certificate.clone().into_bytes()),
        ("server-key.pem".to_owned(), key.clone().into_bytes()),
    ];

    let postgres = PrivatePostgres::start_tls(&certificate, &key, PG_PASSWORD);
    let redis = PrivateRedis::start_tls(&Setup {
        config: [
            "--tls-cert-file",
            "server.pem",
            "--tls-key-file",
            "server-key.pem",
            "--tls-auth-clients",
            "no",
            "--requirepass",
            REDIS_PASSWORD,
        ]
        .join("\n"),
        files: server_files.clone(),
        env: Vec::new(),
    });
    let nats = PrivateNats::start_with(&Setup {
        config: "tls { cert_file: \"server.pem\", key_file: \"server-key.pem\" }".into(),
        files: server_files,
        env: Vec::new(),
    });

    let base = |url: &str| -> Vec<(&str, String)> {
        vec![
            ("NATTER_DATABASE_URL", url.to_owned()),
            ("PGPASSWORD", PG_PASSWORD.to_owned()),
            ("NATTER_REDIS_URL", redis.url()),
            ("NATTER_REDIS_PASSWORD", REDIS_PASSWORD.to_owned()),
            ("NATTER_REDIS_CA", ca_file.display().to_string()),
            ("NATTER_NATS_URL", nats.url()),
            ("NATTER_NATS_CA", ca_file.display().to_string()),
            ("NATTER_NAMESPACE", "tls".to_owned()),
        ]
    };

    // Postgres takes no connection without TLS.
    let mut plain = natter(
        &["migrate"],
        &base(&database_url(postgres.port(), "disable", &ca_file)),
        &dir,
    );
    let status = plain.child.wait().expect("migrate ends");
    assert!(!status.success(), "migrated without TLS:\n{}", plain.log());

    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let mut env = base(&database_url(postgres.port(), "verify-full", &ca_file));
    env.extend([
        ("NATTER_AUTH_ADDR", format!("127.0.0.1:{}", ports[0])),
        ("NATTER_GATEWAY_ADDR", format!("127.0.0.1:{}", ports[1])),
        ("NATTER_MESSAGE_ADDR", format!("127.0.0.1:{}", ports[2])),
        ("NATTER_PUSH_ADDR", format!("127.0.0.1:{}", ports[3])),
    ]);
    let all = natter(&["all"], &env, &dir);
    for port in &ports {
        let url = format!("http://127.0.0.1:{port}/readyz");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = reqwest::get(&url).await
                && r.status() == 200
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not ready on {port}:\n{}",
                all.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let auth = AuthClient::new(
        reqwest::Client::new(),
        format!("http://127.0.0.1:{}", ports[0]),
    );
    let ws_url = format!("ws://127.0.0.1:{}{}", ports[1], paths::WEBSOCKET);
    let mut alice = ws::connect(&ws_url, Some(&auth.user("alice").await))
        .await
        .expect("alice's socket");
    let mut bob = ws::connect(&ws_url, Some(&auth.user("bob").await))
        .await
        .expect("bob's socket");
    let code = bob
        .call("fetch_user_invite_code", json!({}))
        .await
        .expect("invite code")["invite_code"]
        .clone();
    alice
        .call("invite", json!({"invite_code": code}))
        .await
        .expect("invite");
    assert_eq!(bob.push("invite_received").await["username"], "alice");
    drop(all);
    let _ = std::fs::remove_dir_all(&dir);
}
