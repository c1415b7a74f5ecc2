//! Test logs, as zero-to-production gates them: silent unless `TEST_LOG`
//! is set, so a plain `cargo test` shows test results, not every service's
//! log lines. `TEST_LOG=1 cargo test one_test` prints them to stdout
//! (`RUST_LOG` still picks the level).

/// Installs the process's subscriber (the first call wins). It is
/// installed even when silent: the trace-context propagator and any OTLP
/// exporter a test asks for come with it.
pub fn init() {
    let format = natter_platform::config::LogFormat::Pretty;
    let _ = if std::env::var_os("TEST_LOG").is_some() {
        natter_platform::telemetry::init_with_writer(format, "natter-test", std::io::stdout)
    } else {
        natter_platform::telemetry::init_with_writer(format, "natter-test", std::io::sink)
    };
}
