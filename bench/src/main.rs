//! `natter-load`: drives a running natter through its public API (auth over
//! HTTP, the gateway over WebSockets) and reports what a user would feel,
//! one JSON object on stdout per run; bench/run, bench/storm and
//! bench/abuse read it.
//!
//! - `throughput` (throughput.rs): channels whose members all write;
//!   messages/s stored and acknowledged, write → delivered latency; closed
//!   loop or paced (`--rate`).
//! - `fanout` (fanout.rs): one big channel, one paced writer; natter or
//!   (`--bare`) the bare broadcast server `natter-ceiling-ws`.
//! - `idle`, `connect` (sockets.rs): memory per idle socket (the script
//!   reads RSS), authenticated upgrades/s.
//! - `storm` (storm.rs): a gateway killed under its sockets, all of them
//!   reconnecting elsewhere and recovering their channel by seq.
//! - `ceiling-pg`, `ceiling-js` (ceiling.rs): what Postgres and JetStream
//!   alone take on this machine.
//! - `junk`, `logins` (abuse.rs): hostile clients for bench/abuse.
//!
//! The server must allow the load: run it with a high `NATTER_WS_RATE`
//! (the scripts do).

mod abuse;
mod ceiling;
mod client;
mod fanout;
mod frame;
mod sockets;
mod storm;
mod throughput;

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use serde_json::{Value, json};

#[derive(Parser)]
#[command(name = "natter-load", about = "Load generator for natter")]
struct Args {
    /// Auth base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    auth_url: String,
    /// Gateway WebSocket URL (the bare server's with `--bare`).
    #[arg(long, default_value = "ws://127.0.0.1:8090/ws/v1/message")]
    ws_url: String,
    /// Prefix of the usernames this run registers (runs must not clash).
    #[arg(long, default_value = "load")]
    prefix: String,
    /// Open sockets from this many loopback source addresses (127.0.0.1 …
    /// 127.0.0.N), so that more sockets fit the ephemeral port range.
    #[arg(long, default_value_t = 1)]
    source_ips: usize,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Messages/s and write → delivered latency.
    Throughput(throughput::Load),
    /// One channel of many entered members, one paced writer.
    Fanout(fanout::Fanout),
    /// Hold idle sockets (authenticated unless `--bare`).
    Idle {
        /// How many.
        #[arg(long, default_value_t = 10_000)]
        sockets: usize,
        /// Seconds to hold them.
        #[arg(long, default_value_t = 20)]
        hold: u64,
        /// Unauthenticated, to the bare server.
        #[arg(long)]
        bare: bool,
    },
    /// Upgrades/s (authenticated unless `--bare`).
    Connect {
        /// How many sockets.
        #[arg(long, default_value_t = 2000)]
        sockets: usize,
        /// Handshakes in flight at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Unauthenticated, to the bare server.
        #[arg(long)]
        bare: bool,
    },
    /// Kill a gateway under its sockets; all reconnect to `--ws-url`.
    Storm(storm::Storm),
    /// Postgres alone: message-shaped rows in batched transactions.
    CeilingPg {
        /// Postgres URL (a database the run may create a table in).
        #[arg(long)]
        database_url: String,
        /// Connections inserting at once.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Rows per transaction.
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Seconds.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// JetStream alone: pipelined publishes.
    CeilingJs {
        /// NATS URL.
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats_url: String,
        /// Prefix of the stream's name and subject.
        #[arg(long)]
        namespace: String,
        /// Acks outstanding.
        #[arg(long, default_value_t = 256)]
        window: usize,
        /// Seconds.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// Delete a run's JetStream streams and key-value buckets (the scripts
    /// call it on exit).
    Cleanup {
        /// NATS URL.
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats_url: String,
        /// The run's NATTER_NAMESPACE.
        #[arg(long)]
        namespace: String,
    },
    /// Sockets that flood junk frames behind a request in flight.
    Junk {
        /// How many sockets (each of its own user).
        #[arg(long, default_value_t = 50)]
        sockets: usize,
        /// Seconds of flooding.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Concurrent logins of unknown usernames.
    Logins {
        /// How many at once.
        #[arg(long, default_value_t = 300)]
        concurrent: usize,
    },
}

/// A latency histogram in µs, from 1 µs to a minute, to 3 significant
/// digits: 139 KB, zeroed when made, so a run makes a few and shares them
/// (see `throughput::Latencies`).
fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

/// Latency percentiles in milliseconds, as every mode reports them.
fn latency_json(h: &Histogram<u64>) -> Value {
    let ms = |micros: u64| (micros as f64 / 10.0).round() / 100.0;
    json!({
        "samples": h.len(),
        "p50": ms(h.value_at_quantile(0.5)),
        "p90": ms(h.value_at_quantile(0.9)),
        "p99": ms(h.value_at_quantile(0.99)),
        "max": ms(h.max()),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    // reqwest is built without a crypto provider of its own (see
    // natter_platform::tls).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = client::Client::new(args.auth_url, args.ws_url, args.source_ips);
    let prefix = args.prefix.as_str();
    let result = match args.mode {
        Mode::Throughput(load) => throughput::run(&client, prefix, load).await?,
        Mode::Fanout(f) => fanout::run(&client, prefix, f).await?,
        Mode::Idle {
            sockets,
            hold,
            bare,
        } => sockets::idle(&client, prefix, sockets, hold, bare).await?,
        Mode::Connect {
            sockets,
            concurrency,
            bare,
        } => sockets::connect(&client, prefix, sockets, concurrency, bare).await?,
        Mode::Storm(s) => storm::run(&client, prefix, s).await?,
        Mode::CeilingPg {
            database_url,
            connections,
            batch,
            seconds,
        } => ceiling::postgres(&database_url, connections, batch, seconds).await?,
        Mode::CeilingJs {
            nats_url,
            namespace,
            window,
            seconds,
        } => ceiling::jetstream(&nats_url, &namespace, window, seconds).await?,
        Mode::Junk { sockets, seconds } => abuse::junk(&client, prefix, sockets, seconds).await?,
        Mode::Logins { concurrent } => abuse::logins(&client, prefix, concurrent).await?,
        Mode::Cleanup {
            nats_url,
            namespace,
        } => {
            let ns = natter_protocol::subjects::Namespace::new(&namespace);
            let js = async_nats::jetstream::new(async_nats::connect(&nats_url).await?);
            for stream in [ns.events_stream(), ns.dlq_stream(), ns.sessions_stream()] {
                let _ = js.delete_stream(stream).await;
            }
            // Push's leases and offsets live in key-value buckets (streams
            // too): left behind, every run added two to the server.
            for bucket in [ns.push_leases_bucket(), ns.push_offsets_bucket()] {
                let _ = js.delete_key_value(bucket).await;
            }
            json!({"cleaned": namespace})
        }
    };
    println!("{result}");
    Ok(())
}
