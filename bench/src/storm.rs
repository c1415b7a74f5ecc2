//! `storm`: the reconnect storm of a lost gateway. `--sockets`
//! authenticated sockets (`--per-user` per user, users in channels of
//! `--channel-users`, every socket with its channel entered) on the
//! gateway at `--victim-url`; messages are written; the victim is killed
//! (SIGKILL to `--kill-pid`) and more messages are written through the
//! surviving gateway (`--ws-url`). Every socket reconnects there
//! (`--concurrency` handshakes in flight, as clients with backoff would
//! spread them), enters its channel again, fetches what it missed after
//! the last seq it saw and reads what is pushed from then on, as the client
//! does (it does not poll: 10,000 sockets polling would be a load of their
//! own, not a reconnect storm). Reported: the survivor's authenticated upgrades/s
//! and the time from the kill until every socket has seen every seq of its
//! channel.

use crate::client::{Client, Ws, call_retrying, call_retrying_seeing, enter_all, make_channel};
use crate::frame::Frame;
use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

/// Messages written to each channel before the kill.
const BEFORE: i64 = 3;
/// How long the storm may take before the run gives up.
const GIVE_UP: Duration = Duration::from_secs(120);
/// A recovering socket that has seen a gap and hears nothing for this long
/// fetches again.
const GAP_FILL_AFTER: Duration = Duration::from_secs(1);

#[derive(clap::Args, Clone)]
pub struct Storm {
    /// Sockets on the victim gateway.
    #[arg(long, default_value_t = 10_000)]
    pub sockets: usize,
    /// Sockets per user.
    #[arg(long, default_value_t = 100)]
    pub per_user: usize,
    /// Users per channel.
    #[arg(long, default_value_t = 10)]
    pub channel_users: usize,
    /// The gateway that is killed.
    #[arg(long)]
    pub victim_url: String,
    /// Its process id (SIGKILLed once every socket is up).
    #[arg(long)]
    pub kill_pid: u32,
    /// Messages written to each channel after the kill.
    #[arg(long, default_value_t = 5)]
    pub writes: i64,
    /// Reconnect handshakes in flight at once.
    #[arg(long, default_value_t = 512)]
    pub concurrency: usize,
}

/// One socket's storm, in seconds since the kill.
struct Outcome {
    upgraded: f64,
    recovered: f64,
    failed_attempts: u64,
    /// `fetch_messages` calls it needed (1 unless a push went missing).
    fetches: u64,
}

pub async fn run(client: &Client, prefix: &str, s: Storm) -> anyhow::Result<Value> {
    let per_user = s.per_user.max(1);
    let users = s.sockets.div_ceil(per_user).max(2);
    let names: Vec<String> = (0..users).map(|u| format!("{prefix}s{u}")).collect();
    let tokens = client.users(&names).await?;
    let started = Instant::now();
    let mut sockets: Vec<Vec<Ws>> = Vec::with_capacity(users);
    for token in &tokens {
        let user_sockets: Vec<Ws> = futures::stream::iter(0..per_user)
            .map(|_| client.connect_to(&s.victim_url, Some(token)))
            .buffer_unordered(64)
            .try_collect()
            .await?;
        sockets.push(user_sockets);
    }
    let initial_rate = (users * per_user) as f64 / started.elapsed().as_secs_f64();
    let group = s.channel_users.max(2);
    let mut channels = Vec::new();
    let mut writers = Vec::new();
    for (g, first) in (0..users).step_by(group).enumerate() {
        let last = (first + group).min(users);
        if last - first < 2 {
            bail!("--sockets/--per-user leaves a channel of one user");
        }
        let mut firsts: Vec<Ws> = sockets[first..last]
            .iter_mut()
            .map(|v| v.pop().context("a user without sockets"))
            .collect::<anyhow::Result<_>>()?;
        let channel = make_channel(&mut firsts, &names[first + 1], &format!("storm {g}")).await?;
        for (v, ws) in sockets[first..last].iter_mut().zip(firsts) {
            v.push(ws);
        }
        for v in &mut sockets[first..last] {
            enter_all(v, channel).await?;
        }
        let mut writer = client.connect(&tokens[first]).await?;
        for i in 0..BEFORE {
            write(&mut writer, channel, i).await?;
        }
        channels.push((channel, first..last));
        writers.push((channel, writer));
    }
    let final_seq = BEFORE + s.writes;
    let slots = Arc::new(Semaphore::new(s.concurrency.max(1)));
    let (kill_tx, kill_rx) = tokio::sync::watch::channel(None::<Instant>);
    let survivor = Arc::new(Client::new(
        client.auth_url.clone(),
        client.ws_url.clone(),
        client.source_ips,
    ));
    let mut tasks = tokio::task::JoinSet::new();
    let mut count = 0usize;
    for (channel, range) in &channels {
        for u in range.clone() {
            for ws in std::mem::take(&mut sockets[u]) {
                count += 1;
                let token = tokens[u].clone();
                let (slots, kill_rx, survivor) = (slots.clone(), kill_rx.clone(), survivor.clone());
                let channel = *channel;
                tasks.spawn(async move {
                    storm_socket(ws, &survivor, &token, channel, final_seq, &slots, kill_rx).await
                });
            }
        }
    }
    eprintln!(
        "storm: {count} sockets in {} channels up on the victim in {:.1}s; killing it",
        channels.len(),
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed_at = Instant::now();
    kill_tx.send_replace(Some(killed_at));
    let status = std::process::Command::new("kill")
        .args(["-KILL", &s.kill_pid.to_string()])
        .status()?;
    if !status.success() {
        bail!("could not kill the victim gateway {}", s.kill_pid);
    }
    // Each channel's writer writes on its own, as independent users do.
    futures::future::try_join_all(writers.into_iter().map(|(channel, mut writer)| async move {
        for i in BEFORE..final_seq {
            write(&mut writer, channel, i).await?;
        }
        anyhow::Ok(())
    }))
    .await?;
    let writes_done = killed_at.elapsed().as_secs_f64();
    let mut outcomes = Vec::with_capacity(count);
    let deadline = tokio::time::Instant::now() + GIVE_UP;
    while let Ok(Some(r)) = tokio::time::timeout_at(deadline, tasks.join_next()).await {
        outcomes.push(r??);
    }
    let upgraded_last = outcomes.iter().map(|o| o.upgraded).fold(0.0, f64::max);
    let upgraded_first = outcomes.iter().map(|o| o.upgraded).fold(f64::MAX, f64::min);
    let recovered_last = outcomes.iter().map(|o| o.recovered).fold(0.0, f64::max);
    Ok(json!({
        "sockets": count, "users": users, "channels": channels.len(),
        "initial_upgrades_per_s": initial_rate.round(),
        "recovered": outcomes.len(),
        "all_recovered_s": if outcomes.len() == count { json!(recovered_last) } else { Value::Null },
        "first_upgrade_s": upgraded_first, "last_upgrade_s": upgraded_last,
        "reconnect_upgrades_per_s": (outcomes.len() as f64 / upgraded_last.max(0.001)).round(),
        "writes_acknowledged_s": writes_done,
        "failed_attempts": outcomes.iter().map(|o| o.failed_attempts).sum::<u64>(),
        "gap_fills_after_the_first": outcomes.iter().map(|o| o.fetches.saturating_sub(1)).sum::<u64>(),
        "seqs_per_channel": final_seq,
    }))
}

/// Writes message `i` of `channel` (retried while natter is overloaded:
/// the storm loads the message service too).
async fn write(ws: &mut Ws, channel: i64, i: i64) -> anyhow::Result<()> {
    let frame = json!({"type": "write_message", "channel_id": channel,
                       "client_msg_id": format!("storm-{channel}-{i}"), "content": "storm"});
    call_retrying(ws, u64::try_from(i)? + 10, frame).await?;
    Ok(())
}

/// The seqs one socket has seen of its channel: all up to `upto`, and
/// those that came early (a push can overtake a gap-fill page).
struct Seen {
    upto: i64,
    early: BTreeSet<i64>,
}

impl Seen {
    fn add(&mut self, seq: i64) {
        if seq > self.upto {
            self.early.insert(seq);
        }
        while self.early.remove(&(self.upto + 1)) {
            self.upto += 1;
        }
    }

    /// Notes the seq of a `message` push (other frames are not messages).
    fn push(&mut self, text: &str) {
        if let Ok(frame) = Frame::parse(text)
            && frame.kind == "message"
            && let Some(seq) = frame.seq
        {
            self.add(seq);
        }
    }
}

/// Reads pushes until the victim dies, then reconnects to the survivor and
/// recovers as a client does: enters the channel (from then on new messages
/// are pushed), fetches what was stored after the last seq it saw, and
/// reads pushes until it has seen `final_seq`, fetching again only when a
/// push shows a gap that stays open.
async fn storm_socket(
    mut ws: Ws,
    client: &Client,
    token: &str,
    channel: i64,
    final_seq: i64,
    slots: &Semaphore,
    mut killed: tokio::sync::watch::Receiver<Option<Instant>>,
) -> anyhow::Result<Outcome> {
    let mut seen = Seen {
        upto: 0,
        early: BTreeSet::new(),
    };
    while let Some(Ok(msg)) = ws.next().await {
        if let Message::Text(text) = msg {
            seen.push(&text);
        }
    }
    drop(ws);
    let killed_at = *killed.wait_for(Option::is_some).await?;
    let killed_at = killed_at.context("the kill time")?;
    let mut failed_attempts = 0;
    let slot = slots.acquire().await?;
    let mut ws = loop {
        match client.connect(token).await {
            Ok(ws) => break ws,
            Err(_) if killed_at.elapsed() < GIVE_UP => {
                failed_attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.context("reconnect")),
        }
    };
    drop(slot);
    let upgraded = killed_at.elapsed().as_secs_f64();
    let enter = json!({"type": "enter", "channel_id": channel});
    call_retrying_seeing(&mut ws, 1, enter, &mut |t| seen.push(t)).await?;
    let mut id = 2;
    let mut fetches = 0;
    while seen.upto < final_seq {
        let fetch = json!({"type": "fetch_messages", "channel_id": channel,
                           "after_seq": seen.upto, "limit": 100});
        let page = call_retrying_seeing(&mut ws, id, fetch, &mut |t| seen.push(t)).await?;
        id += 1;
        fetches += 1;
        for m in page["messages"]
            .as_array()
            .context("fetch_messages: messages")?
        {
            if let Some(seq) = m["seq"].as_i64() {
                seen.add(seq);
            }
        }
        while seen.upto < final_seq {
            // A gap (a later seq here, an earlier one missing) is filled
            // after a moment; otherwise the next push is waited for.
            let wait = if seen.early.is_empty() {
                GIVE_UP
            } else {
                GAP_FILL_AFTER
            };
            match tokio::time::timeout(wait, ws.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => seen.push(&text),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => return Err(anyhow::Error::from(e).context("recovering")),
                Ok(None) => bail!("the survivor closed a recovering socket"),
                Err(_) => break,
            }
        }
    }
    Ok(Outcome {
        upgraded,
        recovered: killed_at.elapsed().as_secs_f64(),
        failed_attempts,
        fetches,
    })
}
