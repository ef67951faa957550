//! Help that explains: every flag of every subcommand has a help line, `--model` names the models, and
//! `incept models` prints one row per model of the model table.

use std::process::Command;

fn incept(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_incept")).args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn every_flag_has_a_help_line_and_the_models_are_listed() {
    for command in ["train", "eval", "predict", "summary", "bench"] {
        let help = incept(&[command, "--help"]);
        let lines: Vec<&str> = help.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let flag = line.trim_start();
            if !(line.starts_with("  ") && flag.starts_with("--")) || flag.starts_with("--help") {
                continue;
            }
            // clap's long help puts the description on the next line; a flag without one is followed by
            // a blank line or only its default.
            let next = lines.get(i + 1).map_or("", |l| l.trim());
            assert!(
                !next.is_empty() && !next.starts_with('['),
                "incept {command}: {flag} has no help line"
            );
        }
    }
    let train = incept(&["train", "--help"]);
    let table = incept(&["models"]);
    for m in incept::models::MODELS {
        assert!(train.contains(m.name), "train --help does not name {}", m.name);
        assert!(
            table.lines().any(|l| l.starts_with(&format!("{} ", m.name))),
            "incept models has no row for {}",
            m.name
        );
    }
    assert_eq!(table.lines().count(), 1 + incept::models::MODELS.len(), "{table}");
}

/// A reader that stops early (`incept ... | head`) ends incept quietly, as it ends other Unix tools,
/// instead of a panic at the next print.
#[test]
fn a_closed_pipe_ends_the_command_without_a_panic() {
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_incept"))
        .args(["summary", "--model", "inception-resnet-v2", "--algos"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end before incept has printed anything.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.status.success(), "a write to a closed pipe cannot succeed");
}
