//! `--server-metrics`: against an in-process herald, which counts its writes
//! (`herald_frames_per_write`), the run reports writes per delivery; against a server
//! without that metric the figures are left out and the run goes on. (The scrape and
//! the parser are tested against a canned endpoint in `src/metrics.rs`.)

mod common;

use common::{broadcast_config, cli, short_timing, start, with_herald};
use loadgen::report::{problems, to_json};
use serde_json::Value;

#[test]
fn herald_reports_its_writes_per_delivery() {
    with_herald(|url| {
        let mut timing = short_timing(0.5);
        timing.server_metrics = true;
        // 100 messages a second to 20 clients: each message leaves in a write of its
        // own to each client, so about one write per delivery.
        let run = loadgen::run::run(broadcast_config(&url, 20, 100.0, 0), timing).unwrap();
        assert_eq!(problems(&run), Vec::<String>::new());
        let w = run.server_writes.expect("herald counts its writes");
        assert!(w.writes > 0.0 && w.frames >= w.writes, "{w:?}");
        let json = to_json(&run);
        let per_delivery = json["server"]["writes_per_delivery"]
            .as_f64()
            .expect("writes per delivery");
        assert!(
            per_delivery > 0.5 && per_delivery <= 1.05,
            "{per_delivery} writes per delivery at a gentle rate: {json}"
        );
        assert!(json["server"]["frames_per_write"].as_f64().unwrap() >= 1.0);

        let pid = std::process::id().to_string();
        let (code, json) = cli(&url, &["--server-metrics", "--server-pid", &pid]);
        assert_eq!((code, &json["ok"]), (Some(0), &true.into()), "{json}");
        let server = json["server"].as_object().expect("--server-pid's figures");
        assert!(server.contains_key("cpu_ns_per_delivery"), "{json}");
        assert!(server.contains_key("writes_per_delivery"), "{json}");
    });
}

#[test]
fn a_server_without_the_write_metric_leaves_the_figures_out() {
    let server = start(20, 64, |_, _, _| None);
    let mut timing = short_timing(0.5);
    timing.server_metrics = true;
    let run = loadgen::run::run(broadcast_config(&server.url(), 20, 100.0, 0), timing).unwrap();
    assert_eq!(problems(&run), Vec::<String>::new());
    assert_eq!(run.server_writes, None);
    assert_eq!(to_json(&run)["server"], Value::Null);
}
