//! `reap bench` end to end on one small function: the table, the JSON with its keys
//! and positive figures, the CSV files and the plots. No timing is asserted. Needs
//! /dev/kvm, userfaultfd and the workspace's release binaries.

use reap_test_support as common;

use common::{bin_dir, reap, stderr, stdout, temp_dir};
use serde_json::Value;

fn positive(v: &Value, what: &str) -> f64 {
    let x = v
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!(x > 0.0, "{what} = {x}");
    x
}

#[test]
fn bench_of_one_function_writes_table_json_csv_and_plots() {
    let out = temp_dir("bench");
    let bin = bin_dir();
    let result = reap(
        &[
            "bench",
            "--functions",
            "helloworld",
            "--iterations",
            "1",
            "--warmup",
            "0",
            "--sweep-levels",
            "1,2",
            "--disk-mib",
            "8",
            "--bin-dir",
            bin.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        b"",
    );
    assert!(result.status.success(), "reap bench: {}", stderr(&result));
    let table = stdout(&result);
    assert!(table.contains("helloworld"), "{table}");
    assert!(
        table.contains("geometric mean speedup file → reap"),
        "{table}"
    );
    assert!(table.contains("Concurrency sweep (helloworld)"), "{table}");

    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    positive(
        &json["geomean_speedup_file_to_reap"],
        "geomean_speedup_file_to_reap",
    );
    for key in ["git_revision", "date", "host", "kernel"] {
        assert!(json["environment"].get(key).is_some(), "environment.{key}");
    }
    assert!(
        !json["environment"]["kernel"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
    );
    positive(&json["disk"]["seq_read_mb_s"], "disk.seq_read_mb_s");
    positive(
        &json["disk"]["rand_4k_read_us"]["median"],
        "disk.rand_4k_read_us",
    );

    let functions = json["functions"].as_array().unwrap();
    assert_eq!(functions.len(), 1);
    let f = &functions[0];
    assert_eq!(f["name"], "helloworld");
    assert_eq!(f["request"], "{}");
    // One measured cold start per mode, one warm invocation.
    let cold = f["cold"].as_array().unwrap();
    let mut modes: Vec<&str> = cold.iter().map(|s| s["mode"].as_str().unwrap()).collect();
    modes.sort_unstable();
    assert_eq!(modes, ["file", "lazy", "reap"]);
    for s in cold {
        positive(&s["latency_us"], "latency_us");
        positive(&s["invoke_us"], "invoke_us");
    }
    assert_eq!(f["warm"].as_array().unwrap().len(), 1);
    positive(&f["warm"][0]["latency_us"], "warm latency_us");
    positive(&f["ws"]["pages"], "ws.pages");
    positive(&f["ws"]["pct_guest_memory"], "ws.pct_guest_memory");
    positive(&f["recording"]["lazy_faults"], "recording lazy faults");
    let s = &f["summary"];
    for mode in ["file", "lazy", "reap"] {
        positive(&s[mode]["latency_ms"]["median"], mode);
        positive(&s[mode]["latency_ms"]["p90"], mode);
    }
    positive(&s["reap"]["prefetched_pages"], "reap prefetched pages");
    positive(&s["lazy"]["lazy_faults"], "lazy-mode faults");
    positive(&s["warm_ms"]["median"], "warm median");
    positive(&s["speedup_file_to_reap"], "speedup_file_to_reap");
    positive(&s["reap_over_warm"], "reap_over_warm");
    positive(&s["floor"]["floor_ms"], "floor_ms");

    let sweep = &json["sweep"];
    assert_eq!(sweep["function"], "helloworld");
    let levels = sweep["levels"].as_array().unwrap();
    assert_eq!(
        levels
            .iter()
            .map(|l| l["concurrency"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2]
    );
    for l in levels {
        positive(&l["file_ms"]["median"], "sweep file");
        positive(&l["reap_ms"]["median"], "sweep reap");
    }
    assert_eq!(levels[1]["reap_ms"]["n"], 2);

    for name in [
        "summary.csv",
        "samples.csv",
        "sweep.csv",
        "results.md",
        "cold_starts.png",
        "cold_starts.svg",
        "sweep.png",
        "sweep.svg",
    ] {
        let len = std::fs::metadata(out.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .len();
        assert!(len > 0, "{name} is empty");
    }
    let summary = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    assert_eq!(summary.lines().count(), 2);
    assert!(summary.lines().nth(1).unwrap().starts_with("helloworld,"));
    assert!(
        !out.join("snapshots").exists(),
        "the snapshots are removed after the run"
    );
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn bench_of_a_missing_function_fails_with_a_clear_error() {
    let out = temp_dir("bench-missing");
    let result = reap(
        &[
            "bench",
            "--functions",
            "no_such_function",
            "--bin-dir",
            bin_dir().to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        b"",
    );
    assert!(!result.status.success());
    let err = stderr(&result);
    assert!(
        err.contains("no_such_function") && err.contains("not found"),
        "{err}"
    );
    std::fs::remove_dir_all(&out).unwrap();
}
