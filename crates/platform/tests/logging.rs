//! The real `telemetry::init`, in a process of its own (the subscriber is
//! global): what the log filter turns away costs nothing, including the
//! `log` records of dependencies such as tungstenite, which logs every
//! frame at trace level.

use natter_platform::config::LogFormat;
use natter_platform::telemetry;
use tracing_subscriber::filter::LevelFilter;

#[test]
fn below_the_filtered_level_neither_tracing_nor_log_records_are_built() {
    assert!(
        std::env::var_os("RUST_LOG").is_none(),
        "run without RUST_LOG: the test checks the default level"
    );
    let _telemetry = telemetry::init_with_writer(LogFormat::Json, "logging-test", std::io::sink);
    assert_eq!(LevelFilter::current(), LevelFilter::INFO);
    assert_eq!(log::max_level(), log::LevelFilter::Info);
    assert!(!log::log_enabled!(target: "tungstenite::protocol", log::Level::Trace));
    assert!(!tracing::enabled!(tracing::Level::DEBUG));
}
