//! A dropped link: the client says so, reconnects with backoff,
//! re-enters its channel and shows what it missed — once.

use crate::support::{Client, word_after};
use natter_client::cli::Endpoints;
use natter_client::render::Event;
use natter_server::testing::TestApp;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP proxy in front of the gateway whose connections the test can cut,
/// and which can refuse new ones for a while.
pub struct Proxy {
    pub addr: SocketAddr,
    cut: watch::Sender<u64>,
    down: Arc<AtomicBool>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (cut, _) = watch::channel(0u64);
        let cuts = cut.clone();
        let down = Arc::new(AtomicBool::new(false));
        let refusing = down.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if refusing.load(Ordering::SeqCst) {
                    continue;
                }
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self { addr, cut, down }
    }

    pub fn cut_all(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    /// Cuts every connection and refuses new ones until [`Self::up`].
    pub fn down(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.cut_all();
    }

    pub fn up(&self) {
        self.down.store(false, Ordering::SeqCst);
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws/v1/message", self.addr)
    }
}

#[tokio::test]
async fn a_dropped_socket_reconnects_and_fills_the_gap_without_duplicates() {
    let app = TestApp::spawn().await;
    let proxy = Proxy::start(app.addr(natter_server::Service::Gateway)).await;
    let mut alice = Client::new(
        "alice",
        &Endpoints {
            auth_url: app.auth_url(),
            ws_url: format!("ws://{}/ws/v1/message", proxy.addr),
        },
    );
    alice.ok("/register alice correct-horse-battery").await;
    alice.ok("/login alice correct-horse-battery").await;
    let mut bob = Client::online(&app, "bob").await;
    let code = alice.ok("/invite-code user").await.remove(0);
    bob.ok(&format!(
        "/invite {}",
        word_after(&code, "your invite code: ")
    ))
    .await;
    alice.ok("/accept bob").await;
    let id = crate::support::channel_id(&alice.ok("/create general bob").await[0]);
    alice.ok(&format!("/enter {id}")).await;
    bob.ok(&format!("/enter {id}")).await;

    bob.ok("before the drop").await;
    alice.message("before the drop").await;

    proxy.cut_all();
    alice
        .push("connection lost", |e| matches!(e, Event::LinkLost { .. }))
        .await;
    bob.ok("while away 1").await;
    bob.ok("while away 2").await;
    alice
        .push("reconnected", |e| *e == Event::Reconnected)
        .await;
    alice.message("while away 1").await;
    alice.message("while away 2").await;
    bob.ok("after the return").await;
    alice.message("after the return").await;

    // Nothing shows twice, and the prompt's channel survived.
    let later = alice.pushes_within(Duration::from_secs(2)).await;
    assert!(
        !later.iter().any(|e| matches!(e, Event::Message { .. })),
        "duplicates: {later:?}"
    );
    assert_eq!(
        alice
            .session
            .view()
            .snapshot()
            .channel
            .map(|(_, t)| t)
            .as_deref(),
        Some("general")
    );
    app.stop().await;
}

#[tokio::test]
async fn a_draining_gateway_is_announced_and_the_client_reconnects() {
    let mut app = TestApp::spawn().await;
    let proxy = Proxy::start(app.addr(natter_server::Service::Gateway)).await;
    let mut alice = Client::new(
        "alice",
        &Endpoints {
            auth_url: app.auth_url(),
            ws_url: format!("ws://{}/ws/v1/message", proxy.addr),
        },
    );
    alice.ok("/register alice correct-horse-battery").await;
    alice.ok("/login alice correct-horse-battery").await;
    app.stop_part(natter_server::Service::Gateway).await;
    let lost = alice
        .push("connection lost", |e| matches!(e, Event::LinkLost { .. }))
        .await;
    let Event::LinkLost { reason, .. } = lost else {
        unreachable!()
    };
    assert!(reason.starts_with("server restarting"), "{reason}");
    assert!(!alice.run("/channels").await.ok);
    app.stop().await;
}
