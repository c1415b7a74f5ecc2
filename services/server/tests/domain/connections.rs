//! Connections: every rule of `invite`/`accept`/`reject`/`disconnect`, the
//! state machine over all states × actors × operations, and
//! `fetch_connections` with its `online` flag.

use crate::support::{User, accepted_pairs, connect, connection_count, rpc_user, user};
use natter_platform::presence::PresenceWriter;
use natter_protocol::{SocketId, UserId};
use natter_server::testing::TestApp;
use serde_json::{Value, json};

async fn code_of(u: &mut User) -> Value {
    u.ok("fetch_user_invite_code", json!({})).await["invite_code"].clone()
}

#[tokio::test]
async fn invite_makes_a_pending_pair_and_accept_connects_both() {
    let app = TestApp::spawn().await;
    let mut alice = user(&app, "alice").await;
    let mut bob = user(&app, "bob").await;
    let code = code_of(&mut bob).await;
    assert_eq!(
        alice.ok("invite", json!({"invite_code": code})).await,
        json!({"username": "bob", "status": "pending"})
    );
    let received = bob.ws().push("invite_received").await;
    assert_eq!(received["username"], "alice");
    let pending = bob
        .ok("fetch_connections", json!({"status": "pending"}))
        .await;
    assert_eq!(pending["connections"][0]["username"], "alice");
    assert_eq!(pending["connections"][0]["status"], "pending");
    // Pending lists invitations received, not sent.
    let sent = alice
        .ok("fetch_connections", json!({"status": "pending"}))
        .await;
    assert_eq!(sent["connections"], json!([]));
    assert_eq!(
        bob.ok("accept", json!({"username": "alice"})).await,
        json!({"username": "alice", "status": "accepted"})
    );
    let accepted = alice.ws().push("invite_accepted").await;
    assert_eq!(accepted["username"], "bob");
    for (u, other) in [(&mut alice, "bob"), (&mut bob, "alice")] {
        let list = u
            .ok("fetch_connections", json!({"status": "accepted"}))
            .await;
        assert_eq!(list["connections"][0]["username"], other);
        assert_eq!(list["connections"][0]["status"], "accepted");
    }
    assert_eq!(connection_count(&app, alice.id).await, 1);
    assert_eq!(connection_count(&app, bob.id).await, 1);
}

#[tokio::test]
async fn invite_refusals_follow_the_rule_order() {
    let app = TestApp::spawn_with(|c| c.connection_limit = 1).await;
    let mut alice = user(&app, "alice").await;
    let mut bob = user(&app, "bob").await;
    let mut carol = user(&app, "carol").await;
    let own = code_of(&mut alice).await;
    assert_eq!(
        alice.err("invite", json!({"invite_code": "nope"})).await,
        "invalid_invite_code"
    );
    assert_eq!(
        alice.err("invite", json!({"invite_code": own})).await,
        "self_invite"
    );
    connect(&mut alice, &mut bob).await;
    let bob_code = code_of(&mut bob).await;
    assert_eq!(
        alice.err("invite", json!({"invite_code": bob_code})).await,
        "already_connected"
    );
    let carol_code = code_of(&mut carol).await;
    assert_eq!(
        alice
            .err("invite", json!({"invite_code": carol_code}))
            .await,
        "connection_limit_reached"
    );
}

#[tokio::test]
async fn accept_refuses_at_the_acceptors_limit_then_at_the_inviters() {
    let app = TestApp::spawn_with(|c| c.connection_limit = 1).await;
    let mut alice = user(&app, "alice").await;
    let mut bob = user(&app, "bob").await;
    let mut carol = user(&app, "carol").await;
    let mut dave = user(&app, "dave").await;
    let mut erin = user(&app, "erin").await;
    for invitee in [&mut alice, &mut dave] {
        let code = code_of(invitee).await;
        carol.ok("invite", json!({"invite_code": code})).await;
    }
    connect(&mut alice, &mut bob).await;
    assert_eq!(
        alice.err("accept", json!({"username": "carol"})).await,
        "connection_limit_reached"
    );
    connect(&mut erin, &mut carol).await;
    assert_eq!(
        dave.err("accept", json!({"username": "carol"})).await,
        "partner_connection_limit_reached"
    );
    assert_eq!(connection_count(&app, dave.id).await, 0);
    assert_eq!(connection_count(&app, carol.id).await, 1);
}

#[tokio::test]
async fn accept_reject_and_disconnect_refuse_unknown_and_own_names() {
    let app = TestApp::spawn().await;
    let mut alice = user(&app, "alice").await;
    for op in ["accept", "reject"] {
        assert_eq!(
            alice.err(op, json!({"username": "nobody"})).await,
            "invalid_username"
        );
        assert_eq!(
            alice.err(op, json!({"username": "alice"})).await,
            "invalid_username"
        );
    }
    assert_eq!(
        alice.err("disconnect", json!({"username": "nobody"})).await,
        "not_connected"
    );
    assert_eq!(
        alice.err("disconnect", json!({"username": "alice"})).await,
        "not_connected"
    );
}

#[tokio::test]
async fn disconnect_releases_both_counts_and_allows_a_new_invitation() {
    let app = TestApp::spawn().await;
    let mut alice = user(&app, "alice").await;
    let mut bob = user(&app, "bob").await;
    connect(&mut alice, &mut bob).await;
    assert_eq!(
        bob.ok("disconnect", json!({"username": "alice"})).await,
        json!({"username": "alice", "status": "disconnected"})
    );
    assert_eq!(connection_count(&app, alice.id).await, 0);
    assert_eq!(connection_count(&app, bob.id).await, 0);
    assert_eq!(accepted_pairs(&app, alice.id).await, 0);
    connect(&mut bob, &mut alice).await;
    assert_eq!(connection_count(&app, alice.id).await, 1);
}

/// A pair's state, set up through the API with `a` as the inviter.
#[derive(Debug, Clone, Copy)]
enum State {
    None,
    Pending,
    Accepted,
    Rejected,
    Disconnected,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Invite,
    Accept,
    Reject,
    Disconnect,
}

async fn set_up(state: State, a: &mut User, b: &mut User) {
    let b_code = code_of(b).await;
    match state {
        State::None => {}
        State::Pending => {
            a.ok("invite", json!({"invite_code": b_code})).await;
        }
        State::Accepted => connect(a, b).await,
        State::Rejected => {
            a.ok("invite", json!({"invite_code": b_code})).await;
            b.ok("reject", json!({"username": a.name})).await;
        }
        State::Disconnected => {
            connect(a, b).await;
            a.ok("disconnect", json!({"username": b.name})).await;
        }
    }
}

/// What `op` by the inviter (`by_inviter`) or the invitee gives from
/// `state`: the new status, or the error code.
fn expected(state: State, by_inviter: bool, op: Op) -> Result<&'static str, &'static str> {
    use Op::{Accept, Disconnect, Invite, Reject};
    match (state, op) {
        (State::None | State::Disconnected, Invite) => Ok("pending"),
        (State::None | State::Disconnected, Accept | Reject) => Err("invalid_username"),
        (State::None | State::Disconnected, Disconnect) => Err("not_connected"),
        (State::Pending | State::Rejected, Invite) => Err("already_invited"),
        (State::Pending, Accept) if !by_inviter => Ok("accepted"),
        (State::Pending, Reject) if !by_inviter => Ok("rejected"),
        (State::Pending | State::Rejected, Accept | Reject) => Err("invalid_username"),
        (State::Pending, Disconnect) => Err("not_connected"),
        (State::Rejected, Disconnect) if !by_inviter => Ok("disconnected"),
        (State::Rejected, Disconnect) => Err("not_connected"),
        (State::Accepted, Invite | Accept) => Err("already_connected"),
        (State::Accepted, Reject) => Err("invalid_username"),
        (State::Accepted, Disconnect) => Ok("disconnected"),
    }
}

async fn run_cell(app: &TestApp, cell: usize, state: State, by_inviter: bool, op: Op) {
    let mut a = user(app, &format!("cell{cell}-a")).await;
    let mut b = user(app, &format!("cell{cell}-b")).await;
    set_up(state, &mut a, &mut b).await;
    let (actor, other) = if by_inviter {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    let got = match op {
        Op::Invite => {
            let code = code_of(other).await;
            actor.call("invite", json!({"invite_code": code})).await
        }
        Op::Accept => actor.call("accept", json!({"username": other.name})).await,
        Op::Reject => actor.call("reject", json!({"username": other.name})).await,
        Op::Disconnect => {
            actor
                .call("disconnect", json!({"username": other.name}))
                .await
        }
    };
    let got = got
        .map(|v| v["status"].as_str().unwrap_or_default().to_owned())
        .map_err(|e| e.code);
    let want = expected(state, by_inviter, op)
        .map(str::to_owned)
        .map_err(str::to_owned);
    assert_eq!(
        got,
        want,
        "{op:?} by {} from {state:?}",
        if by_inviter { "inviter" } else { "invitee" }
    );
    let accepted = i32::from(matches!(
        (state, op, &got),
        (State::Accepted, Op::Disconnect, Err(_))
            | (State::Accepted, Op::Invite | Op::Accept | Op::Reject, _)
            | (State::Pending, Op::Accept, Ok(_))
    ));
    assert_eq!(
        connection_count(app, a.id).await,
        accepted,
        "{state:?} {op:?}"
    );
    assert_eq!(
        connection_count(app, b.id).await,
        accepted,
        "{state:?} {op:?}"
    );
}

#[tokio::test]
async fn the_connection_state_machine_follows_the_table() {
    let app = TestApp::spawn().await;
    let states = [
        State::None,
        State::Pending,
        State::Accepted,
        State::Rejected,
        State::Disconnected,
    ];
    let ops = [Op::Invite, Op::Accept, Op::Reject, Op::Disconnect];
    let mut cells = Vec::new();
    for state in states {
        for by_inviter in [true, false] {
            for op in ops {
                cells.push((state, by_inviter, op));
            }
        }
    }
    // A few cells at a time: each registers two users (argon2).
    for chunk in cells.chunks(8).enumerate() {
        let (n, chunk) = chunk;
        futures::future::join_all(
            chunk
                .iter()
                .enumerate()
                .map(|(i, &(s, by, op))| run_cell(&app, n * 8 + i, s, by, op)),
        )
        .await;
    }
}

#[tokio::test]
async fn online_means_a_socket_on_a_live_gateway() {
    let app = TestApp::spawn().await;
    let ns = app.config.namespace();
    let mut alice = rpc_user(&app, "alice", "gw-test", 1).await;
    let mut bob = rpc_user(&app, "bob", "gw-test", 2).await;
    let mut carol = rpc_user(&app, "carol", "gw-test", 3).await;
    connect(&mut bob, &mut alice).await;
    connect(&mut carol, &mut alice).await;
    let redis = natter_platform::cache::connect(&app.config)
        .await
        .expect("redis");
    // bob has a socket on a live gateway; carol only on a dead one.
    let live = PresenceWriter::new(redis.clone(), ns.clone(), "gw-live".into());
    live.set(UserId(bob.id), SocketId(7), None).await;
    live.register().await.expect("gw-live is alive");
    PresenceWriter::new(redis.clone(), ns.clone(), "gw-dead".into())
        .set(UserId(carol.id), SocketId(8), None)
        .await;
    let list = alice
        .ok("fetch_connections", json!({"status": "accepted"}))
        .await;
    assert_eq!(
        list,
        json!({"connections": [
            {"username": "bob", "status": "accepted", "online": true},
            {"username": "carol", "status": "accepted", "online": false},
        ]})
    );
}

#[tokio::test]
async fn a_partner_with_an_open_socket_is_online() {
    let app = TestApp::spawn().await;
    let mut alice = user(&app, "alice").await;
    let mut bob = user(&app, "bob").await;
    connect(&mut alice, &mut bob).await;
    let list = alice
        .ok("fetch_connections", json!({"status": "accepted"}))
        .await;
    assert_eq!(list["connections"][0]["online"], true);
}
