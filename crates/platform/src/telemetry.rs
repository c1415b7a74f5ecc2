//! Logs, traces and metrics.
//!
//! Metrics are always recorded, and served in the Prometheus text format
//! on every service's `/metrics` ([`metrics::render`]); the same
//! instruments are also pushed by OTLP when an endpoint is set.
//!
//! Logs go to stdout: human lines by default, JSON on request, level from
//! `RUST_LOG` (default `info`). A JSON line written while a traced span is
//! active carries that span's `trace_id` and `span_id`, so a log line and
//! its trace can be joined. Traces and metrics are exported by OTLP
//! (HTTP/protobuf) only when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! the per-signal `…_TRACES_ENDPOINT` / `…_METRICS_ENDPOINT`) is set; unset,
//! no exporter, no layer and no-op instruments: nothing is paid.
//! `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` are honoured.

use crate::config::LogFormat;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The exporters installed by [`init`]; [`Telemetry::shutdown`] flushes
/// what they hold (call it before the process exits).
#[derive(Default)]
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
    metrics: Option<SdkMeterProvider>,
}

impl Telemetry {
    /// Flushes and stops the exporters.
    pub fn shutdown(self) {
        if let Some(t) = self.traces
            && let Err(e) = t.shutdown()
        {
            tracing::warn!(error = %e, "flushing traces failed");
        }
        if let Some(m) = self.metrics
            && let Err(e) = m.shutdown()
        {
            tracing::warn!(error = %e, "flushing metrics failed");
        }
    }

    /// Exports what is buffered now (tests read it right after).
    pub fn flush(&self) {
        if let Some(t) = &self.traces {
            let _ = t.force_flush();
        }
        if let Some(m) = &self.metrics {
            let _ = m.force_flush();
        }
    }
}

fn otlp_enabled(signal: &str) -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    set("OTEL_EXPORTER_OTLP_ENDPOINT") || set(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"))
}

fn resource(default_service: &str) -> Resource {
    let builder = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty()) {
        builder.build()
    } else {
        builder
            .with_service_name(default_service.to_owned())
            .build()
    }
}

/// Installs logging, the meter provider behind `/metrics` and, when
/// configured, OTLP export of traces and metrics, with W3C trace-context
/// propagation. A second call (tests) keeps the first subscriber and meter
/// provider.
pub fn init(format: LogFormat, service: &str) -> Telemetry {
    init_with_writer(format, service, std::io::stdout)
}

/// [`init`] with the log lines going to `writer`: the test kit passes
/// `std::io::sink` unless `TEST_LOG` is set, keeping the propagator and
/// exporters that tests rely on without flooding their output.
pub fn init_with_writer<W>(format: LogFormat, service: &str, writer: W) -> Telemetry
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    // The OTLP exporter's HTTP client needs it.
    crate::tls::install_crypto_provider();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let mut telemetry = Telemetry::default();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let otel_layer = if otlp_enabled("TRACES") {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
        {
            Ok(exporter) => {
                let provider = SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource(service))
                    .build();
                opentelemetry::global::set_tracer_provider(provider.clone());
                // natter's own spans only: dependencies' internals would
                // multiply the export volume for little insight. The hot
                // paths' spans are at DEBUG, so they cost nothing unless
                // this exporter (or RUST_LOG=debug) asks for them.
                let spans = tracing_subscriber::filter::Targets::new()
                    .with_default(tracing::Level::WARN)
                    .with_targets(
                        [
                            "natter_auth",
                            "natter_gateway",
                            "natter_message",
                            "natter_push",
                            "natter_platform",
                        ]
                        .map(|t| (t, tracing::Level::DEBUG)),
                    );
                let layer = tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer("natter"))
                    .with_filter(spans);
                telemetry.traces = Some(provider);
                Some(layer)
            }
            Err(e) => {
                eprintln!("natter: OTLP trace exporter not started: {e}");
                None
            }
        }
    } else {
        None
    };
    telemetry.metrics = metrics::install(service);
    let dispatcher = trace_ids::Dispatcher::default();
    let fmt = match format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer().with_writer(writer).boxed(),
        LogFormat::Json => trace_ids::json_layer(writer, dispatcher.clone()).boxed(),
    };
    // The dispatcher layer needs no spans or events of its own: filtered
    // off, it does not make every callsite interesting. Unfiltered, the
    // subscriber's level would be TRACE, and every `log` record of a
    // dependency (tungstenite logs each frame) would be built and passed
    // to the filters: 14 % of the gateway's CPU under fan-out.
    let _ = tracing_subscriber::registry()
        .with(otel_layer)
        .with(dispatcher.with_filter(LevelFilter::OFF))
        .with(fmt.with_filter(filter))
        .try_init();
    telemetry
}

/// `trace_id` and `span_id` in JSON log lines.
///
/// The ids are those of the innermost active span the OpenTelemetry layer
/// traces. The fmt layer's own context cannot find it: its filter
/// (`RUST_LOG`, `info` by default) hides the `debug` spans the trace layer
/// records. So [`Dispatcher`] keeps the subscriber it is registered with,
/// and the formatter asks the registry for the current span and walks up
/// to the first one with a trace context.
mod trace_ids {
    use opentelemetry::trace::{SpanId, TraceContextExt, TraceId};
    use std::fmt;
    use std::sync::{Arc, OnceLock};
    use tracing::dispatcher::WeakDispatch;
    use tracing::{Dispatch, Event, Subscriber};
    use tracing_subscriber::Registry;
    use tracing_subscriber::fmt::format::{Format, Json, JsonFields, Writer};
    use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
    use tracing_subscriber::layer::Layer;
    use tracing_subscriber::registry::LookupSpan;

    /// A layer that does nothing but remember the subscriber it is part of.
    #[derive(Clone, Default)]
    pub(super) struct Dispatcher(Arc<OnceLock<WeakDispatch>>);

    impl<S: Subscriber> Layer<S> for Dispatcher {
        fn on_register_dispatch(&self, subscriber: &Dispatch) {
            let _ = self.0.set(subscriber.downgrade());
        }
    }

    impl Dispatcher {
        /// The trace and span id of the innermost traced span active now.
        fn current_ids(&self) -> Option<(TraceId, SpanId)> {
            let dispatch = self.0.get()?.upgrade()?;
            let current = dispatch.current_span();
            let registry = dispatch.downcast_ref::<Registry>()?;
            let span = registry.span(current.id()?)?;
            span.scope().find_map(|s| {
                let cx = tracing_opentelemetry::get_otel_context(&s.id(), &dispatch)?;
                let span = cx.span();
                let context = span.span_context();
                context
                    .is_valid()
                    .then(|| (context.trace_id(), context.span_id()))
            })
        }
    }

    /// The JSON formatter, with the ids put first in the object.
    pub(super) struct WithTraceIds<F> {
        inner: F,
        dispatcher: Dispatcher,
    }

    impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
        F: FormatEvent<S, N>,
    {
        fn format_event(
            &self,
            ctx: &FmtContext<'_, S, N>,
            mut writer: Writer<'_>,
            event: &Event<'_>,
        ) -> fmt::Result {
            let Some((trace_id, span_id)) = self.dispatcher.current_ids() else {
                return self.inner.format_event(ctx, writer, event);
            };
            let mut line = String::new();
            self.inner
                .format_event(ctx, Writer::new(&mut line), event)?;
            match line.strip_prefix('{') {
                Some(rest) => write!(
                    writer,
                    "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"
                ),
                None => writer.write_str(&line),
            }
        }
    }

    /// The JSON log layer writing to `writer`; `dispatcher` must be a layer
    /// of the same subscriber.
    pub(super) fn json_layer<S, W>(
        writer: W,
        dispatcher: Dispatcher,
    ) -> tracing_subscriber::fmt::Layer<S, JsonFields, WithTraceIds<Format<Json>>, W>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    {
        tracing_subscriber::fmt::layer()
            .json()
            .map_event_format(|inner| WithTraceIds { inner, dispatcher })
            .with_writer(writer)
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use opentelemetry::trace::TracerProvider as _;
        use opentelemetry_sdk::trace::SdkTracerProvider;
        use std::io;
        use std::sync::{Mutex, PoisonError};
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        use tracing_subscriber::filter::LevelFilter;
        use tracing_subscriber::layer::SubscriberExt;

        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);

        impl io::Write for Lines {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend_from_slice(buf);
                Ok(buf.len())
            }

            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }

        impl<'w> MakeWriter<'w> for Lines {
            type Writer = Self;

            fn make_writer(&'w self) -> Self {
                self.clone()
            }
        }

        #[test]
        fn json_lines_carry_the_ids_of_the_active_traced_span_and_none_outside() {
            let provider = SdkTracerProvider::builder().build();
            let lines = Lines::default();
            let dispatcher = Dispatcher::default();
            // As in `init`: the trace layer sees debug spans, the log
            // layer only info and above.
            let traced = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("test"))
                .with_filter(LevelFilter::DEBUG);
            let logs = json_layer(lines.clone(), dispatcher.clone()).with_filter(LevelFilter::INFO);
            let subscriber = tracing_subscriber::registry()
                .with(traced)
                .with(dispatcher.with_filter(LevelFilter::OFF))
                .with(logs);
            let expected = tracing::subscriber::with_default(subscriber, || {
                tracing::info!("outside");
                let span = tracing::debug_span!("handling");
                let _entered = span.enter();
                tracing::info!("inside");
                let context = span.context();
                let span_context = context.span().span_context().clone();
                (span_context.trace_id(), span_context.span_id())
            });
            let text = String::from_utf8(lines.0.lock().expect("lines").clone()).expect("utf-8");
            let lines: Vec<serde_json::Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).expect("a JSON line"))
                .collect();
            assert_eq!(lines.len(), 2, "{text}");
            assert!(lines[0].get("trace_id").is_none(), "{text}");
            assert_eq!(lines[0]["fields"]["message"], "outside");
            assert_eq!(lines[1]["fields"]["message"], "inside");
            assert_eq!(lines[1]["trace_id"], expected.0.to_string(), "{text}");
            assert_eq!(lines[1]["span_id"], expected.1.to_string(), "{text}");
            assert_ne!(expected.0, TraceId::INVALID);
        }
    }
}

/// The meter provider behind every instrument: a Prometheus reader for
/// `/metrics` always, an OTLP reader when configured.
pub mod metrics {
    use super::{otlp_enabled, resource};
    use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
    use prometheus::{Encoder, TextEncoder};
    use std::sync::OnceLock;

    /// What `/metrics` reads: set by the first [`install`].
    static REGISTRY: OnceLock<prometheus::Registry> = OnceLock::new();

    /// The content type of [`render`]'s text.
    pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

    /// Installs the global meter provider, once per process (a second
    /// call, in tests, keeps the first: instruments already created stay
    /// on it).
    pub(super) fn install(service: &str) -> Option<SdkMeterProvider> {
        let registry = prometheus::Registry::new();
        if REGISTRY.set(registry.clone()).is_err() {
            return None;
        }
        let mut builder = SdkMeterProvider::builder().with_resource(resource(service));
        match opentelemetry_prometheus::exporter()
            .with_registry(registry)
            .build()
        {
            Ok(exporter) => builder = builder.with_reader(exporter),
            Err(e) => eprintln!("natter: Prometheus metrics reader not started: {e}"),
        }
        if otlp_enabled("METRICS") {
            match opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .build()
            {
                Ok(exporter) => {
                    builder = builder.with_reader(PeriodicReader::builder(exporter).build());
                }
                Err(e) => eprintln!("natter: OTLP metric exporter not started: {e}"),
            }
        }
        let provider = builder.build();
        opentelemetry::global::set_meter_provider(provider.clone());
        Some(provider)
    }

    /// Every instrument's current value in the Prometheus text format
    /// (empty before telemetry is installed).
    #[must_use]
    pub fn render() -> String {
        let Some(registry) = REGISTRY.get() else {
            return String::new();
        };
        let mut text = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut text) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8_lossy(&text).into_owned()
    }
}

/// Trace context across NATS: the W3C `traceparent` travels in message
/// headers (and inside a stored message's event, where one bus message
/// carries several), so one trace follows a message gateway → message →
/// outbox → JetStream → push → gateway.
pub mod propagation {
    use opentelemetry::propagation::{Extractor, Injector};
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    /// The W3C trace context header.
    const TRACEPARENT: &str = "traceparent";

    struct HeaderInjector<'a>(&'a mut async_nats::HeaderMap);

    impl Injector for HeaderInjector<'_> {
        fn set(&mut self, key: &str, value: String) {
            self.0.insert(key, value.as_str());
        }
    }

    struct HeaderExtractor<'a>(&'a async_nats::HeaderMap);

    impl Extractor for HeaderExtractor<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).map(async_nats::HeaderValue::as_str)
        }

        fn keys(&self) -> Vec<&str> {
            self.0.iter().map(|(k, _)| k.as_ref()).collect()
        }
    }

    /// Headers carrying the current span's context (empty when tracing is
    /// off).
    #[must_use]
    pub fn headers() -> async_nats::HeaderMap {
        let mut headers = async_nats::HeaderMap::new();
        let cx = tracing::Span::current().context();
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&cx, &mut HeaderInjector(&mut headers));
        });
        headers
    }

    /// The current span's context as a `traceparent` string, for storing
    /// beside an outbox row; `None` when tracing is off.
    #[must_use]
    pub fn traceparent() -> Option<String> {
        headers().get(TRACEPARENT).map(|v| v.as_str().to_owned())
    }

    /// Makes `span` a child of the context a [`traceparent`] string names
    /// (one carried beside a request or inside an event rather than in
    /// its message's headers).
    pub fn adopt_traceparent(span: &tracing::Span, traceparent: &str) {
        adopt(span, Some(&carrying(traceparent)));
    }

    /// Links `span` to the context a [`traceparent`] string names.
    pub fn link_traceparent(span: &tracing::Span, traceparent: &str) {
        link(span, Some(&carrying(traceparent)));
    }

    fn carrying(traceparent: &str) -> async_nats::HeaderMap {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(TRACEPARENT, traceparent);
        headers
    }

    /// Makes `span` a child of the context in `headers`, if any.
    pub fn adopt(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>) {
        let Some(cx) = extract(headers) else { return };
        let _ = span.set_parent(cx);
    }

    /// Links `span` to the context in `headers`, if any: a span doing the
    /// work of several traces (one delivery of several events) is the
    /// child of one of them and linked to the others.
    pub fn link(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>) {
        if span.is_disabled() {
            return;
        }
        let Some(cx) = extract(headers) else { return };
        let linked = cx.span().span_context().clone();
        if linked.is_valid() {
            span.add_link(linked);
        }
    }

    fn extract(headers: Option<&async_nats::HeaderMap>) -> Option<opentelemetry::Context> {
        let headers = headers?;
        Some(opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&HeaderExtractor(headers))
        }))
    }
}
