//! `warren-load report` against the Python it replaced: the summaries in
//! `tests/fixtures/bench` are from a real `scripts/bench --quick` run (the
//! pair from the `--slow-pair` run after it), and each `benchmarks-*.md`
//! there is what `scripts/bench_report.py`'s `render` wrote from them, with
//! the machine of `machine.json`. The comparisons are exact, to the byte.
//!
//! - `benchmarks-quick.md`: the full report, a new file (`--quick`).
//! - `benchmarks-slow-pair.md`: `--slow-pair`; `benchmarks-slow-rate.md`
//!   the same with BENCH_SLOW_RATE set.
//! - `benchmarks-notes.md`: the full report spliced into `notes.md`.
//! - `benchmarks-edge.md`: the summaries changed as `edge-cases.json` says
//!   (figures missing or null, floats where integers were, error counts,
//!   unreadable broker figures, no event-stream runs, no pair), and a
//!   machine without CPU count or memory.

use std::path::{Path, PathBuf};
use std::process::Command;

use loadgen::load::report::{self, Machine, Options, Summaries};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bench")
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(fixtures().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn machine() -> Machine {
    serde_json::from_str(&fixture("machine.json")).expect("machine.json")
}

/// A directory of this test's own, empty.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("warren-report-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Line by line, so that a failure shows where.
fn assert_same(got: &str, golden: &str, name: &str) {
    for (n, (g, w)) in got.split('\n').zip(golden.split('\n')).enumerate() {
        assert_eq!(g, w, "{name}, line {}", n + 1);
    }
    assert_eq!(got, golden, "{name}: the same lines, but not the same text");
}

fn options(args: &str, slow_pair: bool, slow_rate_set: bool) -> Options {
    Options { args: args.to_owned(), slow_pair, slow_rate_set }
}

#[test]
fn renders_the_full_report_as_the_python_did() {
    let summaries = Summaries::read(&fixtures(), false).expect("summaries");
    let section = report::render(&summaries, &machine(), &options("--quick", false, false)).expect("render");
    assert_same(&report::splice(None, &section), &fixture("benchmarks-quick.md"), "benchmarks-quick.md");
}

#[test]
fn renders_the_slow_pair_alone() {
    let summaries = Summaries::read(&fixtures(), true).expect("summaries");
    let machine = Machine { started: "2026-12-05T15:06:25Z".to_owned(), ..machine() };
    let pair = report::render(&summaries, &machine, &options("--quick --slow-pair", true, false)).expect("render");
    assert_same(&pair, &fixture("benchmarks-slow-pair.md"), "benchmarks-slow-pair.md");
    let set = report::render(&summaries, &machine, &options("--slow-pair", true, true)).expect("render");
    assert_same(&set, &fixture("benchmarks-slow-rate.md"), "benchmarks-slow-rate.md");
}

#[test]
fn splices_into_the_notes_and_writes() {
    let dir = scratch("splice");
    let out = dir.join("benchmarks.md");
    std::fs::copy(fixtures().join("notes.md"), &out).expect("copy");
    let summaries = Summaries::read(&fixtures(), false).expect("summaries");
    let section = report::render(&summaries, &machine(), &options("", false, false)).expect("render");
    report::write(&out, &section, false).expect("write");
    let written = std::fs::read_to_string(&out).expect("read");
    assert_same(&written, &fixture("benchmarks-notes.md"), "benchmarks-notes.md");
    // Again: the notes stay as they are, the section is replaced.
    report::write(&out, &section, false).expect("write");
    assert_eq!(std::fs::read_to_string(&out).expect("read"), written);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn renders_missing_and_odd_figures_as_the_python_did() {
    let mut summaries = Summaries::read(&fixtures(), false).expect("summaries");
    let edits: Vec<Vec<Value>> = serde_json::from_str(&fixture("edge-cases.json")).expect("edge-cases.json");
    for edit in edits {
        let name = edit[0].as_str().expect("name");
        let Some(pointer) = edit.get(1).and_then(Value::as_str) else {
            summaries.0.remove(name).expect("a summary to remove");
            continue;
        };
        let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
        let summary = summaries.0.get_mut(name).expect("a summary");
        let parent = summary.pointer_mut(parent).unwrap_or_else(|| panic!("{name}: no {parent}"));
        match (parent, edit.get(2)) {
            (Value::Object(map), Some(value)) => {
                map.insert(key.to_owned(), value.clone());
            }
            (Value::Object(map), None) => {
                map.remove(key).unwrap_or_else(|| panic!("{name}: no {pointer}"));
            }
            (Value::Array(items), Some(value)) => items[key.parse::<usize>().expect("an index")] = value.clone(),
            (other, _) => panic!("{name}: {pointer} in {other}"),
        }
    }
    let machine = Machine { nproc: None, memory_gib: None, ..machine() };
    let section = report::render(&summaries, &machine, &options("--quick  extra\targs", false, false)).expect("render");
    assert_same(&report::splice(None, &section), &fixture("benchmarks-edge.md"), "benchmarks-edge.md");
}

#[test]
fn a_missing_summary_is_an_error() {
    let dir = scratch("missing");
    let err = Summaries::read(&dir, false).expect_err("no summaries");
    assert!(format!("{err:#}").contains("fanout.json"), "{err:#}");
    let err = Summaries::read(&dir, true).expect_err("no pair");
    assert!(format!("{err:#}").contains("fanout-steady.json"), "{err:#}");
    let _ = std::fs::remove_dir_all(dir);
}

/// The binary, as `scripts/bench` runs it (with the fixed machine).
#[test]
fn the_binary_writes_the_report() {
    let dir = scratch("binary");
    let run = |out: &Path, extra: &[&str]| {
        let status = Command::new(env!("CARGO_BIN_EXE_warren-load"))
            .arg("report")
            .arg("--dir")
            .arg(fixtures())
            .arg("--out")
            .arg(out)
            .arg("--machine")
            .arg(fixtures().join("machine.json"))
            .args(extra)
            .env_remove("LOAD_REPORT_SLOW_RATE")
            .env_remove("LOAD_REPORT_SLOW_PAIR")
            .env_remove("LOAD_REPORT_STARTED")
            .status()
            .expect("warren-load runs");
        assert!(status.success(), "{status}");
        std::fs::read_to_string(out).expect("the report")
    };
    let quick = run(&dir.join("quick.md"), &["--bench-args", "--quick"]);
    assert_same(&quick, &fixture("benchmarks-quick.md"), "benchmarks-quick.md");
    let pair = run(
        &dir.join("pair.md"),
        &["--bench-args=--slow-pair", "--slow-pair", "--slow-rate", "600", "--started", "2026-12-05T15:06:25Z"],
    );
    assert_same(&pair, &fixture("benchmarks-slow-rate.md"), "benchmarks-slow-rate.md");
    let _ = std::fs::remove_dir_all(dir);
}
