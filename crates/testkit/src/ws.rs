//! A real WebSocket client for tests: sends requests with fresh ids,
//! matches replies to them, and keeps pushes queued for the test to read.

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, http};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for an expected frame.
pub const WAIT: Duration = Duration::from_secs(10);

/// An `error` frame's code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFrame {
    /// The error code, e.g. `not_joined`.
    pub code: String,
    /// The human message.
    pub message: String,
}

/// How the server ended a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// The close code (1005 when the close frame had none).
    pub code: u16,
    /// The close reason.
    pub reason: String,
}

/// A connected socket.
pub struct WsClient {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    pushes: VecDeque<Value>,
    replies: VecDeque<Value>,
    closed: Option<Closed>,
}

/// Opens a socket on `url` with `token`; the HTTP status on refusal.
///
/// # Errors
/// The upgrade's HTTP status and body when the server refuses.
///
/// # Panics
/// When the URL is malformed.
pub async fn connect(url: &str, token: Option<&str>) -> Result<WsClient, (u16, String)> {
    let mut request = url.into_client_request().expect("ws url");
    if let Some(token) = token {
        request.headers_mut().insert(
            http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().expect("header"),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((stream, _)) => Ok(WsClient {
            stream,
            next_id: 1,
            pushes: VecDeque::new(),
            replies: VecDeque::new(),
            closed: None,
        }),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err((status, body))
        }
        Err(e) => Err((0, e.to_string())),
    }
}

impl WsClient {
    /// Sends `{"id": <fresh>, ...frame}` and waits for its reply: the
    /// `result`, or the error. Pushes that arrive meanwhile are queued.
    ///
    /// # Panics
    /// When no answer comes within [`WAIT`].
    pub async fn request(&mut self, frame: Value) -> Result<Value, ErrorFrame> {
        let id = self.next_id;
        self.next_id += 1;
        let mut frame = frame;
        frame["id"] = json!(id);
        self.send_text(&frame.to_string()).await;
        let answer = self.answer_to(Some(id)).await;
        into_result(&answer)
    }

    /// Sends a request by type with fields, e.g.
    /// `call("enter", json!({"channel_id": 1}))`.
    pub async fn call(&mut self, kind: &str, fields: Value) -> Result<Value, ErrorFrame> {
        let mut frame = if fields.is_object() {
            fields
        } else {
            json!({})
        };
        frame["type"] = json!(kind);
        self.request(frame).await
    }

    /// Sends a text frame as it is.
    ///
    /// # Panics
    /// When the socket is gone.
    pub async fn send_text(&mut self, text: &str) {
        self.stream
            .send(Message::text(text.to_owned()))
            .await
            .expect("send");
    }

    /// Sends a binary frame.
    ///
    /// # Panics
    /// When the socket is gone.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.stream
            .send(Message::binary(bytes))
            .await
            .expect("send");
    }

    /// Waits for the reply or error whose id is `id` (null: `None`).
    ///
    /// # Panics
    /// When none comes within [`WAIT`].
    pub async fn answer_to(&mut self, id: Option<u64>) -> Value {
        let wanted = id.map_or(Value::Null, |i| json!(i));
        loop {
            if let Some(pos) = self.replies.iter().position(|r| r["id"] == wanted) {
                return self.replies.remove(pos).expect("position is valid");
            }
            let frame = self
                .read_frame(WAIT)
                .await
                .unwrap_or_else(|| panic!("no answer to request {wanted}"));
            self.file(frame);
        }
    }

    /// The next reply or error in the order the server sent them.
    ///
    /// # Panics
    /// When none comes within [`WAIT`].
    pub async fn next_answer(&mut self) -> Value {
        loop {
            if let Some(answer) = self.replies.pop_front() {
                return answer;
            }
            let frame = self
                .read_frame(WAIT)
                .await
                .unwrap_or_else(|| panic!("no answer within {WAIT:?}"));
            self.file(frame);
        }
    }

    /// Waits for the next push of type `kind` (others stay queued).
    ///
    /// # Panics
    /// When none comes within [`WAIT`].
    pub async fn push(&mut self, kind: &str) -> Value {
        self.push_within(kind, WAIT)
            .await
            .unwrap_or_else(|| panic!("no {kind} push within {WAIT:?}"))
    }

    /// The next push of type `kind` within `wait`, if any.
    pub async fn push_within(&mut self, kind: &str, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(pos) = self.pushes.iter().position(|p| p["type"] == kind) {
                return self.pushes.remove(pos);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = self.read_frame(left).await?;
            self.file(frame);
        }
    }

    /// Asserts that no push of type `kind` arrives within `wait`.
    ///
    /// # Panics
    /// When one does.
    pub async fn expect_no_push(&mut self, kind: &str, wait: Duration) {
        if let Some(p) = self.push_within(kind, wait).await {
            panic!("unexpected {kind} push: {p}");
        }
    }

    /// Every push received so far, oldest first (drains the queue).
    pub fn take_pushes(&mut self) -> Vec<Value> {
        self.pushes.drain(..).collect()
    }

    /// Every reply and error received so far and not yet taken, oldest
    /// first (drains the queue).
    pub fn take_answers(&mut self) -> Vec<Value> {
        self.replies.drain(..).collect()
    }

    /// Waits for the server to close the socket: its code and reason.
    ///
    /// # Panics
    /// When it stays open past `wait`.
    pub async fn closed_within(&mut self, wait: Duration) -> Closed {
        let deadline = tokio::time::Instant::now() + wait;
        while self.closed.is_none() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(!left.is_zero(), "socket still open after {wait:?}");
            if let Some(frame) = self.read_frame(left).await {
                self.file(frame);
            }
        }
        self.closed.clone().expect("closed")
    }

    /// Closes from the client side.
    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }

    fn file(&mut self, frame: Value) {
        match frame["type"].as_str() {
            Some("reply" | "error") => self.replies.push_back(frame),
            _ => self.pushes.push_back(frame),
        }
    }

    /// The next JSON text frame within `wait`; `None` on timeout or close.
    async fn read_frame(&mut self, wait: Duration) -> Option<Value> {
        if self.closed.is_some() {
            tokio::time::sleep(wait.min(Duration::from_millis(10))).await;
            return None;
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()?;
            match next {
                Some(Ok(Message::Text(text))) => {
                    return Some(serde_json::from_str(&text).expect("server frames are JSON"));
                }
                Some(Ok(Message::Close(frame))) => {
                    self.closed = Some(close_of(frame.as_ref()));
                    return None;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    self.closed.get_or_insert(Closed {
                        code: 1006,
                        reason: String::new(),
                    });
                    return None;
                }
            }
        }
    }
}

fn close_of(frame: Option<&CloseFrame>) -> Closed {
    frame.map_or(
        Closed {
            code: 1005,
            reason: String::new(),
        },
        |f| Closed {
            code: f.code.into(),
            reason: f.reason.to_string(),
        },
    )
}

fn into_result(answer: &Value) -> Result<Value, ErrorFrame> {
    if answer["type"] == "reply" {
        Ok(answer["result"].clone())
    } else {
        Err(ErrorFrame {
            code: answer["code"].as_str().unwrap_or_default().to_owned(),
            message: answer["message"].as_str().unwrap_or_default().to_owned(),
        })
    }
}
