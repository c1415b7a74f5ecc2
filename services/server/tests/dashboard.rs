//! Every metric the Grafana dashboard queries is one natter emits.

use natter_platform::metrics::{NAMES, prometheus_name};
use std::collections::BTreeSet;

fn queried_metrics() -> BTreeSet<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/dashboards/natter.json"
    );
    let text = std::fs::read_to_string(path).expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut names = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("natter_") {
                    let base = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| word.strip_suffix(s))
                        .unwrap_or(word);
                    names.insert(base.to_owned());
                }
            }
        }
    }
    names
}

#[test]
fn every_dashboard_metric_is_an_emitted_instrument() {
    let emitted: BTreeSet<String> = NAMES.iter().map(|n| prometheus_name(n)).collect();
    let queried = queried_metrics();
    assert!(!queried.is_empty());
    let unknown: Vec<&String> = queried.difference(&emitted).collect();
    assert!(
        unknown.is_empty(),
        "dashboard queries unknown metrics: {unknown:?}"
    );
}

#[test]
fn the_dashboard_covers_every_instrument() {
    let emitted: BTreeSet<String> = NAMES.iter().map(|n| prometheus_name(n)).collect();
    let queried = queried_metrics();
    let missing: Vec<&String> = emitted.difference(&queried).collect();
    assert!(
        missing.is_empty(),
        "instruments without a panel: {missing:?}"
    );
}
