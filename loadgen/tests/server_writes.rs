//! `--server-metrics` against an in-process herald, which does not count its writes yet:
//! the write figures are left out and the run goes on. (The scrape and the parser are
//! tested against a canned endpoint in `src/metrics.rs`.)

mod common;

use common::{broadcast_config, cli, short_timing, with_herald};
use loadgen::report::{problems, to_json};
use serde_json::Value;

#[test]
fn a_server_without_the_write_metric_leaves_the_figures_out() {
    with_herald(|url| {
        let mut timing = short_timing(0.5);
        timing.server_metrics = true;
        let run = loadgen::run::run(broadcast_config(&url, 20, 100.0, 0), timing).unwrap();
        assert_eq!(problems(&run), Vec::<String>::new());
        assert_eq!(run.server_writes, None);
        assert_eq!(to_json(&run)["server"], Value::Null);

        let pid = std::process::id().to_string();
        let (code, json) = cli(&url, &["--server-metrics", "--server-pid", &pid]);
        assert_eq!((code, &json["ok"]), (Some(0), &true.into()), "{json}");
        let server = json["server"].as_object().expect("--server-pid's figures");
        assert!(server.contains_key("cpu_ns_per_delivery"), "{json}");
        assert!(!server.contains_key("writes_per_delivery"), "{json}");
        assert!(!server.contains_key("frames_per_write"), "{json}");
    });
}
