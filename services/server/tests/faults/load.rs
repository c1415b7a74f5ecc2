//! A steady load on the system while the suite breaks it: per channel one
//! writer and receivers spread over both gateways; then the report that
//! says whether it held (exact seqs 1..N everywhere, the live share) and
//! the figures a run prints.

use crate::clients::{self, Progress, ReceiverReport, WriterReport};
use crate::system::System;
use natter_testkit::{AuthClient, ws};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long the receivers get to show the last seq once the writers stop.
const FINISH_WAIT: Duration = Duration::from_secs(60);

/// The share of deliveries that must arrive live.
pub const LIVE_SHARE: f64 = 0.95;

/// A channel's receivers, each with what it has shown so far.
type Receivers = Vec<(JoinHandle<ReceiverReport>, Arc<Mutex<Progress>>)>;

/// One channel's clients.
struct Channel {
    writer: JoinHandle<WriterReport>,
    target: watch::Sender<Option<i64>>,
    receivers: Receivers,
}

/// The running clients.
pub struct Load {
    stop: CancellationToken,
    channels: Vec<Channel>,
    started: Instant,
}

impl Load {
    /// Creates `channels` channels, each with a writer and `receivers`
    /// receivers (alternately homed on each gateway), waits until every
    /// receiver is in its channel, then starts the writers.
    pub async fn start(system: &System, channels: usize, receivers: usize) -> Self {
        // The workspace's reqwest has rustls without a default provider.
        natter_platform::tls::install_crypto_provider();
        let auth = AuthClient::new(reqwest::Client::new(), system.auth_url());
        let gateways = system.gateways();
        let stop = CancellationToken::new();
        let mut running: Vec<(watch::Sender<Option<i64>>, Receivers)> = Vec::new();
        let mut writers = Vec::new();
        for c in 0..channels {
            let writer_name = format!("writer{c}");
            let writer_token = auth.user(&writer_name).await;
            let mut writer = ws::connect(&gateways[0], Some(&writer_token))
                .await
                .expect("writer connects");
            let mut names = Vec::new();
            let mut tokens = Vec::new();
            for r in 0..receivers {
                let name = format!("reader{c}x{r}");
                let token = auth.user(&name).await;
                let mut reader = ws::connect(&gateways[0], Some(&token))
                    .await
                    .expect("reader connects");
                let code = reader
                    .call("fetch_user_invite_code", json!({}))
                    .await
                    .expect("invite code");
                writer
                    .call("invite", json!({"invite_code": code["invite_code"]}))
                    .await
                    .expect("invite");
                reader
                    .call("accept", json!({"username": writer_name}))
                    .await
                    .expect("accept");
                reader.close().await;
                names.push(name);
                tokens.push(token);
            }
            let created = writer
                .call(
                    "create",
                    json!({"title": format!("faults {c}"), "usernames": names}),
                )
                .await
                .expect("create");
            writer.close().await;
            let channel = created["channel_id"].as_i64().expect("channel id");
            let (target, watch) = watch::channel(None);
            let receivers = tokens
                .into_iter()
                .enumerate()
                .map(|(r, token)| {
                    let progress = Arc::new(Mutex::new(Progress::default()));
                    let task = tokio::spawn(clients::receive(
                        gateways.clone(),
                        r % gateways.len(),
                        token,
                        channel,
                        watch.clone(),
                        progress.clone(),
                    ));
                    (task, progress)
                })
                .collect();
            writers.push((writer_token, channel, c));
            running.push((target, receivers));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !running
            .iter()
            .flat_map(|(_, receivers)| receivers)
            .all(|(_, p)| p.lock().expect("progress").entered)
        {
            assert!(Instant::now() < deadline, "receivers never entered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let channels = writers
            .into_iter()
            .zip(running)
            .map(|((token, channel, c), (target, receivers))| Channel {
                writer: tokio::spawn(clients::write(
                    gateways.clone(),
                    token,
                    channel,
                    format!("w{c}"),
                    stop.clone(),
                )),
                target,
                receivers,
            })
            .collect();
        Self {
            stop,
            channels,
            started: Instant::now(),
        }
    }

    /// Deliveries so far over every receiver: (live, filled).
    pub fn totals(&self) -> (usize, usize) {
        self.channels
            .iter()
            .flat_map(|c| &c.receivers)
            .map(|(_, p)| {
                let progress = p.lock().expect("progress");
                (progress.live_at.len(), progress.filled)
            })
            .fold((0, 0), |(l, f), (pl, pf)| (l + pl, f + pf))
    }

    /// How long after `since` every receiver had a live delivery again,
    /// waiting at most `within`; `None` if one had none by then.
    pub async fn back_to_live(&self, since: Instant, within: Duration) -> Option<Duration> {
        let deadline = since + within;
        loop {
            let firsts: Option<Vec<Instant>> = self
                .channels
                .iter()
                .flat_map(|c| &c.receivers)
                .map(|(_, p)| {
                    let progress = p.lock().expect("progress");
                    progress.live_at.iter().find(|t| **t > since).copied()
                })
                .collect();
            if let Some(firsts) = firsts {
                return firsts.into_iter().max().map(|t| t - since);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the writers, tells the receivers their last seq and waits
    /// until each has shown it.
    pub async fn finish(self) -> Report {
        self.stop.cancel();
        let mut report = Report {
            writers: Vec::new(),
            receivers: Vec::new(),
            ran: self.started.elapsed(),
        };
        for channel in self.channels {
            let writer = channel.writer.await.expect("writer");
            let last = i64::try_from(writer.seqs.len()).expect("count");
            channel.target.send_replace(Some(last));
            for (task, _) in channel.receivers {
                let receiver = tokio::time::timeout(FINISH_WAIT, task)
                    .await
                    .unwrap_or_else(|_| panic!("a receiver never showed seq {last}"))
                    .expect("receiver");
                report.receivers.push((report.writers.len(), receiver));
            }
            report.writers.push(writer);
        }
        report
    }
}

/// What the clients saw, and the suite's verdicts on it.
pub struct Report {
    writers: Vec<WriterReport>,
    /// Each receiver with the index of its channel's writer.
    receivers: Vec<(usize, ReceiverReport)>,
    ran: Duration,
}

impl Report {
    /// Live deliveries over all deliveries.
    pub fn live_share(&self) -> f64 {
        let live: usize = self.receivers.iter().map(|(_, r)| r.live).sum();
        let filled: usize = self.receivers.iter().map(|(_, r)| r.filled).sum();
        live as f64 / (live + filled).max(1) as f64
    }

    /// Live deliveries that arrived after a later seq.
    pub fn out_of_order(&self) -> usize {
        self.receivers.iter().map(|(_, r)| r.out_of_order).sum()
    }

    /// The longest time any writer waited for an acknowledgement.
    pub fn longest_stall(&self) -> Duration {
        self.writers
            .iter()
            .map(|w| w.longest_stall)
            .max()
            .unwrap_or_default()
    }

    /// Prints the figures under `title`.
    pub fn print(&self, title: &str) {
        let written: usize = self.writers.iter().map(|w| w.seqs.len()).sum();
        let live: usize = self.receivers.iter().map(|(_, r)| r.live).sum();
        let filled: usize = self.receivers.iter().map(|(_, r)| r.filled).sum();
        let repeats: usize = self.receivers.iter().map(|(_, r)| r.repeats).sum();
        let reconnects: usize = self
            .receivers
            .iter()
            .map(|(_, r)| r.reconnects)
            .chain(self.writers.iter().map(|w| w.reconnects))
            .sum();
        println!(
            "faults: {title}: {written} messages in {:.0?} by {} writer(s), {} receivers; \
             {live} live, {filled} filled ({:.2} % live), {repeats} repeats dropped, \
             {} out of order, {reconnects} client reconnects, longest write stall {:.2?}",
            self.ran,
            self.writers.len(),
            self.receivers.len(),
            self.live_share() * 100.0,
            self.out_of_order(),
            self.longest_stall(),
        );
    }

    /// Every writer saw seqs 1..N, every receiver showed exactly 1..N.
    pub fn assert_exact(&self) {
        for (w, writer) in self.writers.iter().enumerate() {
            let expected: Vec<i64> = (1..).take(writer.seqs.len()).collect();
            assert_eq!(writer.seqs, expected, "writer {w}'s seqs");
        }
        for (w, receiver) in &self.receivers {
            let expected: Vec<i64> = (1..).take(self.writers[*w].seqs.len()).collect();
            assert_eq!(receiver.shown, expected, "a receiver of writer {w}");
        }
    }
}
