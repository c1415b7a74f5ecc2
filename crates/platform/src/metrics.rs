//! natter's metrics: one place for every instrument's name, unit and
//! meaning, so the dashboard (`deploy/dashboards/natter.json`) and the code
//! cannot drift (a test checks every name it queries is one of [`NAMES`]).
//!
//! Instruments come from the global meter provider that telemetry installs
//! (`/metrics`, and OTLP when configured). OpenTelemetry names become Prometheus names with
//! `_` and unit suffixes: `natter.requests` → `natter_requests_total`,
//! `natter.delivery.latency` (s) → `natter_delivery_latency_seconds_*`.

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram, UpDownCounter};
use std::sync::OnceLock;

/// Every instrument name natter emits.
pub const NAMES: &[&str] = &[
    SOCKETS,
    FRAMES_IN,
    FRAMES_OUT,
    REQUESTS,
    MESSAGES_STORED,
    DELIVERIES,
    DELIVERY_LATENCY,
    CONSUMER_PENDING,
    OUTBOX_BACKLOG,
    OUTBOX_PARKED,
    LIMIT_REJECTIONS,
    LOGINS,
    REFRESHES,
    NATS_SLOW_CONSUMERS,
    BUILD_INFO,
];

/// Open WebSockets on a gateway.
pub const SOCKETS: &str = "natter.gateway.sockets";
/// Frames read from clients.
pub const FRAMES_IN: &str = "natter.gateway.frames.in";
/// Frames written to clients.
pub const FRAMES_OUT: &str = "natter.gateway.frames.out";
/// Requests by `type` and `outcome` (`ok` or the error code).
pub const REQUESTS: &str = "natter.requests";
/// Messages committed to Postgres.
pub const MESSAGES_STORED: &str = "natter.messages.stored";
/// Socket deliveries push routed, by push `type`.
pub const DELIVERIES: &str = "natter.push.deliveries";
/// Seconds from a message's `sent_at` (taken by the write as it stores,
/// just before its commit) to push handing it to the gateways.
pub const DELIVERY_LATENCY: &str = "natter.delivery.latency";
/// Events the push consumer has not yet received.
pub const CONSUMER_PENDING: &str = "natter.push.consumer.pending";
/// Outbox rows not yet published.
pub const OUTBOX_BACKLOG: &str = "natter.outbox.backlog";
/// Outbox rows NATS refused for good and the relay parked (see
/// `natter-server dlq list`).
pub const OUTBOX_PARKED: &str = "natter.outbox.parked";
/// Requests refused by a limit, by `limit` (`connection` or `head`).
pub const LIMIT_REJECTIONS: &str = "natter.limit.rejections";
/// Login attempts by `outcome` (`success`, `failure`, `rate_limited`).
pub const LOGINS: &str = "natter.auth.logins";
/// Refresh attempts by `outcome` (`rotated`, `refused`, `reused`: a
/// rotated token came back and its session was revoked).
pub const REFRESHES: &str = "natter.auth.refreshes";

/// Times a core NATS subscription overflowed and dropped messages.
pub const NATS_SLOW_CONSUMERS: &str = "natter.nats.slow_consumers";

/// Always 1, labelled with the `version` and the git `commit` the process
/// was built from: which build runs where.
pub const BUILD_INFO: &str = "natter.build.info";

/// Records [`BUILD_INFO`] (once, at start: the gauge keeps its value).
pub fn record_build_info(version: &str, commit: &str) {
    static GAUGE: OnceLock<Gauge<u64>> = OnceLock::new();
    GAUGE
        .get_or_init(|| {
            opentelemetry::global::meter("natter")
                .u64_gauge(BUILD_INFO)
                .with_description("The version and git commit of the running build")
                .build()
        })
        .record(
            1,
            &[
                KeyValue::new("version", version.to_owned()),
                KeyValue::new("commit", commit.to_owned()),
            ],
        );
}

/// The instruments.
pub struct Metrics {
    /// [`SOCKETS`].
    pub sockets: UpDownCounter<i64>,
    /// [`FRAMES_IN`].
    pub frames_in: Counter<u64>,
    /// [`FRAMES_OUT`].
    pub frames_out: Counter<u64>,
    /// [`REQUESTS`].
    pub requests: Counter<u64>,
    /// [`MESSAGES_STORED`].
    pub messages_stored: Counter<u64>,
    /// [`DELIVERIES`].
    pub deliveries: Counter<u64>,
    /// [`DELIVERY_LATENCY`].
    pub delivery_latency: Histogram<f64>,
    /// [`CONSUMER_PENDING`].
    pub consumer_pending: Gauge<u64>,
    /// [`OUTBOX_BACKLOG`].
    pub outbox_backlog: Gauge<u64>,
    /// [`OUTBOX_PARKED`].
    pub outbox_parked: Counter<u64>,
    /// [`LIMIT_REJECTIONS`].
    pub limit_rejections: Counter<u64>,
    /// [`LOGINS`].
    pub logins: Counter<u64>,
    /// [`REFRESHES`].
    pub refreshes: Counter<u64>,
    /// [`NATS_SLOW_CONSUMERS`].
    pub nats_slow_consumers: Counter<u64>,
}

/// The instruments, created on first use from the global meter provider.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let m = opentelemetry::global::meter("natter");
        Metrics {
            sockets: m
                .i64_up_down_counter(SOCKETS)
                .with_unit("{socket}")
                .with_description("Open WebSockets")
                .build(),
            frames_in: m
                .u64_counter(FRAMES_IN)
                .with_unit("{frame}")
                .with_description("Frames read from clients")
                .build(),
            frames_out: m
                .u64_counter(FRAMES_OUT)
                .with_unit("{frame}")
                .with_description("Frames written to clients")
                .build(),
            requests: m
                .u64_counter(REQUESTS)
                .with_unit("{request}")
                .with_description("Client requests by type and outcome")
                .build(),
            messages_stored: m
                .u64_counter(MESSAGES_STORED)
                .with_unit("{message}")
                .with_description("Messages committed")
                .build(),
            deliveries: m
                .u64_counter(DELIVERIES)
                .with_unit("{delivery}")
                .with_description("Socket deliveries routed by push")
                .build(),
            delivery_latency: m
                .f64_histogram(DELIVERY_LATENCY)
                .with_unit("s")
                .with_description("Message stored (sent_at) to hand-off to the gateways")
                // Finest around 15 ms, natter's goal for write → delivered
                // at p99 (README "Benchmarks"), so that a dashboard and
                // bench/run can set this part of it against the goal.
                .with_boundaries(vec![
                    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
                    0.2, 0.5, 1.0, 2.0, 5.0,
                ])
                .build(),
            consumer_pending: m
                .u64_gauge(CONSUMER_PENDING)
                .with_unit("{event}")
                .with_description("Events not yet received by the push consumer")
                .build(),
            outbox_backlog: m
                .u64_gauge(OUTBOX_BACKLOG)
                .with_unit("{row}")
                .with_description("Outbox rows not yet published")
                .build(),
            outbox_parked: m
                .u64_counter(OUTBOX_PARKED)
                .with_unit("{row}")
                .with_description("Outbox rows parked: refused by NATS for good")
                .build(),
            limit_rejections: m
                .u64_counter(LIMIT_REJECTIONS)
                .with_unit("{request}")
                .with_description("Requests refused by the connection or head limit")
                .build(),
            logins: m
                .u64_counter(LOGINS)
                .with_unit("{attempt}")
                .with_description("Login attempts by outcome")
                .build(),
            refreshes: m
                .u64_counter(REFRESHES)
                .with_unit("{attempt}")
                .with_description("Refresh attempts by outcome")
                .build(),
            nats_slow_consumers: m
                .u64_counter(NATS_SLOW_CONSUMERS)
                .with_unit("{event}")
                .with_description("Core NATS subscriptions that overflowed and dropped messages")
                .build(),
        }
    })
}

/// A one-attribute set, for the common case.
#[must_use]
pub fn attr(key: &'static str, value: impl Into<opentelemetry::Value>) -> [KeyValue; 1] {
    [KeyValue::new(key, value)]
}

/// The Prometheus name an OTLP → Prometheus pipeline gives an instrument
/// (dots to underscores, unit suffix, `_total` for counters), as the
/// dashboard queries it.
#[must_use]
pub fn prometheus_name(name: &str) -> String {
    let base = name.replace('.', "_");
    match name {
        DELIVERY_LATENCY => format!("{base}_seconds"),
        SOCKETS | CONSUMER_PENDING | OUTBOX_BACKLOG | BUILD_INFO => base,
        _ => format!("{base}_total"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_names_follow_the_translation_rules() {
        assert_eq!(prometheus_name(REQUESTS), "natter_requests_total");
        assert_eq!(
            prometheus_name(DELIVERY_LATENCY),
            "natter_delivery_latency_seconds"
        );
        assert_eq!(prometheus_name(SOCKETS), "natter_gateway_sockets");
    }
}
