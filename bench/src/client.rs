//! A natter user as seen from outside: register and log in over HTTP, open
//! sockets (from several loopback source addresses, so tens of thousands
//! fit in the ephemeral port range), send requests and wait for replies,
//! and build channels whose members all have a socket that entered them.

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt, TryStreamExt};
use serde_json::{Value, json};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// A socket to natter (or to the bare broadcast server): plain TCP, the
/// bench runs on loopback.
pub type Ws = WebSocketStream<TcpStream>;

/// Bytes a socket reads at a time. tungstenite zeroes this much of its
/// buffer before every read: at its default (128 KiB) that memset was 44 %
/// of the generator's core in the fan-out run, where it, not the server,
/// set the latency.
const READ_BUFFER: usize = 8 * 1024;

/// How many setup requests (registrations, joins, enters) run at once.
const SETUP_CONCURRENCY: usize = 16;

pub struct Client {
    pub http: reqwest::Client,
    pub auth_url: String,
    pub ws_url: String,
    /// Sockets are opened from 127.0.0.1 … 127.0.0.<source_ips>, in turn.
    pub source_ips: usize,
    next_source: AtomicUsize,
}

impl Client {
    pub fn new(auth_url: String, ws_url: String, source_ips: usize) -> Self {
        Self {
            http: reqwest::Client::new(),
            auth_url,
            ws_url,
            source_ips: source_ips.max(1),
            next_source: AtomicUsize::new(0),
        }
    }

    /// POSTs `body` to auth's `path`, again while auth answers 503 (its
    /// hashing slots are busy: setup registers many users at once).
    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<reqwest::Response> {
        for _ in 0..200 {
            let r = self
                .http
                .post(format!("{}/api/v1/auth/{path}", self.auth_url))
                .json(body)
                .send()
                .await?;
            if r.status() != 503 {
                return Ok(r);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("{path}: auth stayed busy")
    }

    /// Registers `name` (taken is fine) and logs in: the access token.
    pub async fn user(&self, name: &str) -> anyhow::Result<String> {
        let creds = json!({"username": name, "password": "load-test-password"});
        let r = self.post("register", &creds).await?;
        if !r.status().is_success() && r.status() != 409 {
            bail!("register {name}: {}", r.status());
        }
        let body: Value = self.post("login", &creds).await?.json().await?;
        body["token"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("login {name}: {body}"))
    }

    /// Tokens of `names`, registered a few at a time, in order.
    pub async fn users(&self, names: &[String]) -> anyhow::Result<Vec<String>> {
        futures::stream::iter(names)
            .map(|n| self.user(n))
            .buffered(SETUP_CONCURRENCY)
            .try_collect()
            .await
    }

    /// An authenticated socket to the gateway at `ws_url`.
    pub async fn connect_to(&self, ws_url: &str, token: Option<&str>) -> anyhow::Result<Ws> {
        let mut request = ws_url.into_client_request()?;
        if let Some(token) = token {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse()?);
        }
        let host = request.uri().host().context("ws url without host")?;
        let port = request.uri().port_u16().unwrap_or(80);
        let target: SocketAddr = tokio::net::lookup_host((host, port))
            .await?
            .next()
            .context("ws host does not resolve")?;
        let socket = TcpSocket::new_v4()?;
        if target.ip().is_loopback() && self.source_ips > 1 {
            let n = self.next_source.fetch_add(1, Ordering::Relaxed) % self.source_ips;
            let last = u8::try_from(n + 1).context("--source-ips at most 254")?;
            socket.bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, last), 0)))?;
        }
        let stream = socket.connect(target).await?;
        stream.set_nodelay(true)?;
        let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
        Ok(
            tokio_tungstenite::client_async_with_config(request, stream, Some(config))
                .await?
                .0,
        )
    }

    /// An authenticated socket to the configured gateway.
    pub async fn connect(&self, token: &str) -> anyhow::Result<Ws> {
        self.connect_to(&self.ws_url, Some(token)).await
    }
}

/// Sends one request and waits for its answer (pushes are skipped).
pub async fn call(ws: &mut Ws, id: u64, frame: Value) -> anyhow::Result<Value> {
    call_seeing(ws, id, frame, &mut |_| {}).await
}

/// [`call`], handing every other frame that arrives before the answer (the
/// pushes) to `push`.
pub async fn call_seeing(
    ws: &mut Ws,
    id: u64,
    mut frame: Value,
    push: &mut impl FnMut(&str),
) -> anyhow::Result<Value> {
    frame["id"] = json!(id);
    ws.send(Message::text(frame.to_string())).await?;
    while let Some(msg) = ws.next().await {
        if let Message::Text(text) = msg? {
            let v: Value = serde_json::from_str(&text)?;
            if v["id"] == json!(id) {
                if v["type"] == "reply" {
                    return Ok(v["result"].clone());
                }
                bail!("request {frame} failed: {v}");
            }
            push(&text);
        }
    }
    bail!("socket closed")
}

/// [`call`], again (with a fresh id) while natter answers `unavailable`,
/// which every request may be retried after (protocol §2.6); a write keeps
/// its `client_msg_id`, so it is stored once.
pub async fn call_retrying(ws: &mut Ws, id: u64, frame: Value) -> anyhow::Result<Value> {
    call_retrying_seeing(ws, id, frame, &mut |_| {}).await
}

/// [`call_seeing`], retried as [`call_retrying`] is. Backs off as a client
/// should when the service sheds load: exponentially to 0.5 s, with jitter
/// so that thousands of sockets refused at once do not come back at once,
/// for at most a minute.
pub async fn call_retrying_seeing(
    ws: &mut Ws,
    id: u64,
    frame: Value,
    push: &mut impl FnMut(&str),
) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut attempt: u32 = 0;
    loop {
        match call_seeing(ws, id * 1000 + u64::from(attempt), frame.clone(), push).await {
            Err(e)
                if tokio::time::Instant::now() < deadline
                    && e.to_string().contains("\"unavailable\"") =>
            {
                let backoff = 100_u64.saturating_mul(1 << attempt.min(3)).min(500);
                // Jitter from the clock's nanoseconds: good enough to spread
                // sockets, and no random generator to carry around.
                let spread = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::from(d.subsec_nanos()) % 250);
                tokio::time::sleep(Duration::from_millis(backoff + spread)).await;
                attempt += 1;
            }
            answer => return answer,
        }
    }
}

/// Makes a channel of the users behind `sockets` (`sockets[0]` creates it;
/// every user once): the creator connects with the second member and
/// creates the channel with them, everyone else joins by the channel's
/// invite code, a few at a time. Nobody has entered it yet.
pub async fn make_channel(
    sockets: &mut [Ws],
    second_name: &str,
    title: &str,
) -> anyhow::Result<i64> {
    let [creator, second, rest @ ..] = sockets else {
        bail!("a channel needs at least two members");
    };
    let code =
        call(creator, 1, json!({"type": "fetch_user_invite_code"})).await?["invite_code"].clone();
    call(second, 1, json!({"type": "invite", "invite_code": code})).await?;
    call(
        creator,
        2,
        json!({"type": "accept", "username": second_name}),
    )
    .await?;
    let created = call(
        creator,
        3,
        json!({"type": "create", "title": title, "usernames": [second_name]}),
    )
    .await?;
    let channel = created["channel_id"].as_i64().context("channel id")?;
    let code = call(
        creator,
        4,
        json!({"type": "fetch_channel_invite_code", "channel_id": channel}),
    )
    .await?["invite_code"]
        .clone();
    futures::stream::iter(rest.iter_mut())
        .map(|ws| call(ws, 2, json!({"type": "join", "invite_code": code})))
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(channel)
}

/// Every socket enters `channel`, a few at a time; returns each one's
/// `last_seq`.
pub async fn enter_all(sockets: &mut [Ws], channel: i64) -> anyhow::Result<Vec<i64>> {
    futures::stream::iter(sockets.iter_mut())
        .map(|ws| async move {
            let r = call(ws, 5, json!({"type": "enter", "channel_id": channel})).await?;
            r["last_seq"].as_i64().context("enter: last_seq")
        })
        .buffered(SETUP_CONCURRENCY)
        .try_collect()
        .await
}

/// Microseconds since `epoch`, the clock every frame's send time uses.
pub fn micros_since(epoch: std::time::Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
}
