//! Progress for logs: with stdout not a terminal (here, a pipe), `incept train` prints a plain line after
//! its first step and then every `--progress-every` seconds, with the step out of the whole run's, the
//! epoch, the running loss, accuracy and img/s, and the whole run's time left; `--quiet` prints none.

mod common;

use std::process::Command;

use common::TempDir;

const SLICE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/fashion-mnist-slice");

fn train(out: &std::path::Path, extra: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_incept"))
        .args([
            "train", "--data", SLICE, "--resize", "32", "--batch", "16", "--steps", "40",
        ])
        .args(["--out", out.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn piped_output_gets_plain_progress_lines_with_the_runs_time_left() {
    let dir = TempDir::new("progress_lines");
    let stdout = train(&dir.join("a"), &["--progress-every", "1"]);
    let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with("step ")).collect();
    assert!(!lines.is_empty(), "no progress line in:\n{stdout}");
    assert!(
        lines[0].starts_with("step 1/40 (epoch 1/5, batch 1/32): loss "),
        "the first step's line: {}",
        lines[0]
    );
    for line in &lines {
        assert!(line.contains("img/s, run ") && line.ends_with(" left"), "{line}");
        assert!(!line.contains('\u{1b}'), "no terminal escapes in a log: {line:?}");
    }
    let quiet = train(&dir.join("b"), &["--quiet"]);
    assert!(!quiet.lines().any(|l| l.starts_with("step ")), "{quiet}");
}
