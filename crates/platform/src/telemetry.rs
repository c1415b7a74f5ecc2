//! Logs, traces and metrics.
//!
//! Logs go to stdout: human lines by default, JSON on request, level from
//! `RUST_LOG` (default `info`). Traces and metrics are exported by OTLP
//! (HTTP/protobuf) only when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! the per-signal `…_TRACES_ENDPOINT` / `…_METRICS_ENDPOINT`) is set; unset,
//! no exporter, no layer and no-op instruments: nothing is paid.
//! `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` are honoured.

use crate::config::LogFormat;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
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

/// Installs logging and, when configured, OTLP export of traces and
/// metrics, with W3C trace-context propagation. A second call (tests) keeps
/// the first subscriber.
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
    if otlp_enabled("METRICS") {
        match opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .build()
        {
            Ok(exporter) => {
                let provider = SdkMeterProvider::builder()
                    .with_reader(PeriodicReader::builder(exporter).build())
                    .with_resource(resource(service))
                    .build();
                opentelemetry::global::set_meter_provider(provider.clone());
                telemetry.metrics = Some(provider);
            }
            Err(e) => eprintln!("natter: OTLP metric exporter not started: {e}"),
        }
    }
    let fmt = match format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer().with_writer(writer).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(writer)
            .boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(otel_layer)
        .with(fmt.with_filter(filter))
        .try_init();
    telemetry
}

/// Trace context across NATS: the W3C `traceparent` travels in message
/// headers, so one trace follows a message gateway → message → outbox →
/// JetStream → push → gateway.
pub mod propagation {
    use opentelemetry::propagation::{Extractor, Injector};
    use tracing_opentelemetry::OpenTelemetrySpanExt;

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
        headers().get("traceparent").map(|v| v.as_str().to_owned())
    }

    /// Makes `span` a child of the context in `headers`, if any.
    pub fn adopt(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>) {
        let Some(headers) = headers else { return };
        let cx = opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&HeaderExtractor(headers))
        });
        let _ = span.set_parent(cx);
    }
}
