//! The client reaches natter through TLS (`https://` and `wss://`), as it
//! does behind an ingress: TLS terminators with a certificate from a test CA
//! stand in front of auth and the gateway, and the real binary trusts that
//! CA through `SSL_CERT_FILE`, the way it trusts a system store.

use natter_server::testing::TestApp;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA's PEM and a server config for `localhost` signed by it.
fn certificates() -> (String, Arc<ServerConfig>) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key"))
        .expect("ca certificate");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .expect("leaf params")
        .signed_by(&leaf_key, &ca)
        .expect("leaf certificate");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .expect("server config");
    (ca.pem(), Arc::new(config))
}

/// Terminates TLS on a free port and forwards the bytes to `backend`.
async fn terminator(config: Arc<ServerConfig>, backend: SocketAddr) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Ok(mut plain) = TcpStream::connect(backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn the_client_talks_to_natter_over_https_and_wss() {
    let app = TestApp::spawn().await;
    let (ca_pem, config) = certificates();
    let auth = terminator(config.clone(), app.addr(natter_server::Service::Auth)).await;
    let gateway = terminator(config, app.addr(natter_server::Service::Gateway)).await;
    let dir = std::env::temp_dir().join(format!("natter-tls-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca_pem).expect("write CA");

    let run = |commands: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_natter"));
        cmd.env("SSL_CERT_FILE", &ca_file)
            .env("NATTER_AUTH_URL", format!("https://localhost:{auth}"))
            .env(
                "NATTER_WS_URL",
                format!("wss://localhost:{gateway}/ws/v1/message"),
            )
            .env_remove("NATTER_HISTORY_FILE")
            .env("NATTER_SESSION_FILE", dir.join("session.json"));
        for c in commands {
            cmd.args(["-c", c]);
        }
        cmd
    };
    let out = run(&[
        "/register tess tls-password",
        "/login tess tls-password",
        "/invite-code user",
    ])
    .output()
    .await
    .expect("natter runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("registered tess"), "{lines:?}");
    assert_eq!(lines[1..3], ["logged in as tess", "no unread messages"]);
    assert!(lines[3].starts_with("your invite code: "), "{lines:?}");

    // Without the CA the certificate is refused, with a readable reason.
    let out = run(&["/login tess tls-password"])
        .env("SSL_CERT_FILE", dir.join("missing.pem"))
        .output()
        .await
        .expect("natter runs");
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("certificate"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
