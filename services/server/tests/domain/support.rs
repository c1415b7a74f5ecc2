//! Helpers shared by the domain tests: users talking over a real WebSocket
//! (or straight to the message service over NATS), and short-hands for
//! the usual setups (a connection, a channel).

use natter_protocol::rpc::{Caller, RpcReply, RpcRequest, SocketRef};
use natter_protocol::{SessionId, SocketId, UserId};
use natter_server::testing::{ErrorFrame, TestApp, WsClient};
use serde_json::{Value, json};

/// How a test user's requests reach the message service.
pub enum Transport {
    /// Through the gateway, as a client does.
    Ws(Box<WsClient>),
    /// Straight to `<ns>.rpc.message`, as the gateway does.
    Rpc {
        nats: async_nats::Client,
        subject: String,
        socket: SocketRef,
    },
}

/// A registered, logged-in user with one way in.
pub struct User {
    pub name: String,
    pub id: i64,
    pub token: String,
    pub via: Transport,
}

impl User {
    /// Sends one request: the result or the error frame.
    pub async fn call(&mut self, kind: &str, fields: Value) -> Result<Value, ErrorFrame> {
        match &mut self.via {
            Transport::Ws(ws) => ws.call(kind, fields).await,
            Transport::Rpc {
                nats,
                subject,
                socket,
            } => {
                let mut frame = if fields.is_object() {
                    fields
                } else {
                    json!({})
                };
                frame["type"] = json!(kind);
                let request = RpcRequest {
                    caller: Caller {
                        user_id: UserId(self.id),
                        username: self.name.clone(),
                        session_id: SessionId(uuid::Uuid::new_v4()),
                        socket: socket.clone(),
                    },
                    request: serde_json::from_value(frame).expect("a well-formed request"),
                };
                let body = serde_json::to_vec(&request).expect("serialize");
                let headers = natter_testkit::bus_signed(subject, &body);
                let reply = nats
                    .request_with_headers(subject.clone(), headers, body.into())
                    .await
                    .expect("the message service answers");
                match serde_json::from_slice::<RpcReply>(&reply.payload).expect("an RpcReply") {
                    RpcReply::Ok(v) => Ok(v),
                    RpcReply::Err(e) => Err(ErrorFrame {
                        code: e.code.as_str().to_owned(),
                        message: e.message,
                    }),
                }
            }
        }
    }

    /// Sends a request that must succeed.
    pub async fn ok(&mut self, kind: &str, fields: Value) -> Value {
        self.call(kind, fields)
            .await
            .unwrap_or_else(|e| panic!("{} {kind}: {e:?}", self.name))
    }

    /// Sends a request that must fail: its error code.
    pub async fn err(&mut self, kind: &str, fields: Value) -> String {
        match self.call(kind, fields).await {
            Ok(v) => panic!("{} {kind} succeeded: {v}", self.name),
            Err(e) => e.code,
        }
    }

    /// The socket, for pushes.
    pub fn ws(&mut self) -> &mut WsClient {
        match &mut self.via {
            Transport::Ws(ws) => ws,
            Transport::Rpc { .. } => panic!("{} has no socket", self.name),
        }
    }
}

async fn registered(app: &TestApp, name: &str) -> (String, i64) {
    let token = app.user(name).await;
    (token, user_id(app, name).await)
}

/// The live user's id.
pub async fn user_id(app: &TestApp, name: &str) -> i64 {
    sqlx::query_scalar("SELECT id FROM users WHERE username = $1 AND deleted_at IS NULL")
        .bind(name)
        .fetch_one(&app.pool)
        .await
        .expect("the user exists")
}

/// Registers `name` and opens a WebSocket for it.
pub async fn user(app: &TestApp, name: &str) -> User {
    let (token, id) = registered(app, name).await;
    let ws = app.ws(&token).await;
    User {
        name: name.to_owned(),
        id,
        token,
        via: Transport::Ws(Box::new(ws)),
    }
}

/// Registers `names` concurrently, each with a WebSocket.
pub async fn users(app: &TestApp, prefix: &str, n: usize) -> Vec<User> {
    futures::future::join_all((0..n).map(|i| async move {
        let name = format!("{prefix}-{i:02}");
        user(app, &name).await
    }))
    .await
}

/// Another socket of the same user.
pub async fn second_socket(app: &TestApp, of: &User) -> User {
    User {
        name: of.name.clone(),
        id: of.id,
        token: of.token.clone(),
        via: Transport::Ws(Box::new(app.ws(&of.token).await)),
    }
}

/// Registers `name` and talks to the message service directly over NATS
/// as if from `socket` on gateway `gateway_id`.
pub async fn rpc_user(app: &TestApp, name: &str, gateway_id: &str, socket_id: u64) -> User {
    let (token, id) = registered(app, name).await;
    let nats = async_nats::connect(&app.config.nats_url)
        .await
        .expect("nats");
    User {
        name: name.to_owned(),
        id,
        token,
        via: Transport::Rpc {
            nats,
            subject: app.config.namespace().rpc_message(),
            socket: SocketRef {
                gateway_id: gateway_id.to_owned(),
                socket_id: SocketId(socket_id),
            },
        },
    }
}

/// `a` invites `b`, `b` accepts.
pub async fn connect(a: &mut User, b: &mut User) {
    let code = b.ok("fetch_user_invite_code", json!({})).await["invite_code"].clone();
    a.ok("invite", json!({"invite_code": code})).await;
    b.ok("accept", json!({"username": a.name})).await;
}

/// `creator` connects with each of `members` and creates a channel with
/// them: its id.
pub async fn channel(creator: &mut User, members: &mut [&mut User]) -> i64 {
    for m in members.iter_mut() {
        connect(creator, m).await;
    }
    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    let created = creator
        .ok("create", json!({"title": "room", "usernames": names}))
        .await;
    created["channel_id"].as_i64().expect("channel_id")
}

/// The channel's invite code, asked by a member.
pub async fn channel_code(member: &mut User, channel: i64) -> String {
    member
        .ok("fetch_channel_invite_code", json!({"channel_id": channel}))
        .await["invite_code"]
        .as_str()
        .expect("code")
        .to_owned()
}

/// `users.connection_count` of a user.
pub async fn connection_count(app: &TestApp, id: i64) -> i32 {
    sqlx::query_scalar("SELECT connection_count FROM users WHERE id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .expect("count")
}

/// Accepted pairs a user is in.
pub async fn accepted_pairs(app: &TestApp, id: i64) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM user_connections \
         WHERE (user_low = $1 OR user_high = $1) AND status = 'accepted'",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .expect("pairs")
}

/// `(head_count, member rows)` of a channel.
pub async fn heads(app: &TestApp, channel: i64) -> (i32, i64) {
    sqlx::query_as(
        "SELECT c.head_count, (SELECT count(*) FROM channel_members m WHERE m.channel_id = c.id) \
         FROM channels c WHERE c.id = $1",
    )
    .bind(channel)
    .fetch_one(&app.pool)
    .await
    .expect("channel")
}
