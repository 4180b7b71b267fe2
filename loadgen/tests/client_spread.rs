//! Against an in-process herald: every receiver's median latency reaches the report, in
//! one process and merged over several.

mod common;

use common::{broadcast_config, cli, short_timing, with_herald};
use loadgen::report::{problems, to_json};
use serde_json::Value;

/// Checks a report's `client_p50_ms`: `receivers` medians, in order.
fn assert_client_p50(json: &Value, receivers: u64) {
    let c = &json["client_p50_ms"];
    assert_eq!(c["count"], receivers, "{c}");
    let q = |k: &str| c[k].as_f64().unwrap_or_else(|| panic!("{k} in {c}"));
    assert!(q("min") > 0.0, "{c}");
    assert!(q("min") <= q("p10") && q("p10") <= q("p50"), "{c}");
    assert!(q("p50") <= q("p90") && q("p90") <= q("max"), "{c}");
    let spread = &json["client_p50_spread"];
    assert!(spread["p90_p10"].as_f64().unwrap() >= 1.0, "{spread}");
    assert!(spread["max_min"].as_f64().unwrap() >= 1.0, "{spread}");
}

#[test]
fn every_receiver_has_a_median() {
    with_herald(|url| {
        let run =
            loadgen::run::run(broadcast_config(&url, 100, 200.0, 0), short_timing(1.0)).unwrap();
        assert_eq!(problems(&run), Vec::<String>::new());
        let s = &run.stats;
        assert_eq!(s.client_p50.len(), 100, "one median per receiver");
        // Each median is one of the run's latencies, to the compact histogram's 1/16.
        assert!(s.client_p50.min() as f64 >= s.latency.min() as f64 * 15.0 / 16.0);
        assert!(s.client_p50.max() as f64 <= s.latency.max() as f64 * 17.0 / 16.0);
        assert_client_p50(&to_json(&run), 100);

        // Over two processes, the parent merges the shards' medians.
        let (code, json) = cli(&url, &["--procs", "2"]);
        assert_eq!(code, Some(0), "{json}");
        assert_client_p50(&json, 4);
    });
}
