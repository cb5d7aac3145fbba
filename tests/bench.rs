//! A short `podswitchctl bench` run: every figure is produced and
//! non-zero. Never how fast: speed is for docs/benchmarks.md (needs root;
//! CI has it).

mod common;

use common::{require, TempFile};
use serde_json::Value;

#[test]
fn a_short_bench_produces_every_figure() {
    require(&[
        "ip", "ping", "iperf3", "trafgen", "bridge", "sysctl", "pgrep",
    ]);
    let json = TempFile::new("bench.json");
    let svg = TempFile::new("bench.svg");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_podswitchctl"))
        .args([
            "bench",
            "--seconds",
            "1",
            "--rounds",
            "1",
            "--backends",
            "vxlan",
            "--memory-pods",
            "8",
            "--workers",
            "1,per-cpu",
            "--record",
        ])
        .arg(&json.0)
        .arg("--plot")
        .arg(&svg.0)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    for workers in ["1", "per-cpu"] {
        assert!(
            table.contains(&format!(
                "| cross-node vxlan workers={workers} | tcp-1-stream"
            )),
            "{table}"
        );
    }
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json.0).unwrap()).unwrap();
    let medians = v["medians"].as_array().unwrap();
    // 2 cases x every metric (TCP 1 and 4 streams, TCP's CPU, segments
    // out of order and sent again per GB, 64-byte UDP from one and from
    // two generators, CPU per packet flooding and paced, idle, loaded,
    // busy and flooded latency p50 and p99), for podswitch with one
    // worker and with a worker per CPU, each against the kernel.
    let metrics = podswitch::bench::METRICS;
    assert_eq!(metrics.len(), 17);
    assert_eq!(medians.len(), 2 * 2 * metrics.len(), "{v}");
    for metric in metrics {
        assert_eq!(
            medians
                .iter()
                .filter(|m| m["metric"] == metric.name)
                .count(),
            2 * 2,
            "{}: {v}",
            metric.name
        );
    }
    for m in medians {
        // A count of segments out of order or sent again may be 0; every
        // rate, time and cost is more, but one: the kernel's CPU per
        // packet at a paced rate on one node, where it bridges each frame
        // in the sender's system call for less than the spread of the
        // paced generator's own cost, which the bench takes out (a
        // difference below 0 is reported as 0, with no ratio). podswitch's
        // wake-ups keep its own figure well above that spread.
        let counts = m["unit"] == "segments";
        let may_be_lost_in_the_generator = m["metric"] == "cpu-per-Mpkt-paced"
            && m["case"]
                .as_str()
                .is_some_and(|c| c.starts_with("same-node"));
        for dataplane in ["kernel", "podswitch"] {
            let zero_allowed = counts || (dataplane == "kernel" && may_be_lost_in_the_generator);
            assert!(
                m[dataplane]
                    .as_f64()
                    .is_some_and(|x| x > 0.0 || (zero_allowed && x == 0.0)),
                "{dataplane} {m}"
            );
        }
    }
    // Where the kernel's figure is 0 the table gives no ratio instead of
    // dividing by it; elsewhere a ratio.
    for m in medians {
        let row = format!(
            "| {} | {} (",
            m["case"].as_str().unwrap(),
            m["metric"].as_str().unwrap()
        );
        let line = table
            .lines()
            .find(|l| l.starts_with(&row))
            .unwrap_or_else(|| panic!("no row {row} in {table}"));
        let no_ratio = m["kernel"].as_f64() == Some(0.0);
        assert_eq!(line.ends_with("0) |"), no_ratio, "{line}");
        assert_eq!(
            line.contains("x (better) |") || line.contains("x (worse) |"),
            !no_ratio,
            "{line}"
        );
    }
    // Samples of three dataplanes: the kernel and both podswitch labs.
    let samples = v["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 2 * 3 * metrics.len());
    for dataplane in ["kernel", "podswitch-w1", "podswitch-wcpu"] {
        assert!(
            samples.iter().any(|s| s["dataplane"] == dataplane),
            "{dataplane}"
        );
    }
    assert!(
        v["generator_ceiling_mpps"]
            .as_f64()
            .is_some_and(|x| x > 0.0),
        "{v}"
    );
    assert!(
        v["generator_cpu_us_per_frame"]
            .as_f64()
            .is_some_and(|x| x > 0.0),
        "{v}"
    );
    assert!(table.contains("Generator ceiling"), "{table}");
    // podswitchd's memory with no pod and with 8.
    let memory = &v["memory"];
    assert_eq!(memory["pods"], 8, "{v}");
    let no_pod = memory["rss_kib_no_pod"].as_u64().unwrap();
    let with_pods = memory["rss_kib_with_pods"].as_u64().unwrap();
    assert!(no_pod > 0 && with_pods > 0, "{memory}");
    assert!(memory["per_pod_kib"].as_f64().is_some(), "{memory}");
    assert!(table.contains("KiB per pod"), "{table}");
    // No generator outlives its measurement (trafgen's worker process once
    // went on flooding the lab through the measurements after it).
    let left = std::process::Command::new("pgrep")
        .args(["-x", "trafgen"])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "trafgen still running: {}",
        String::from_utf8_lossy(&left.stdout)
    );
    let chart = std::fs::read_to_string(&svg.0).unwrap();
    assert!(chart.starts_with("<svg") && chart.contains("tcp-1-stream"));
    let netns = common::stdout_of("ip", &["netns", "list"]);
    assert!(
        !netns.contains("lab-bkvxlan") && !netns.contains("lab-bpvxlan"),
        "labs left: {netns}"
    );
}
