//! Every output path is checked before the work that fills it: `train --out`, `--save`, `--step-log` and
//! `predict --output` that cannot be written end at once with exit code 1 and one line naming the flag,
//! the path and what is wrong, and nothing is written (before, `train --out FILE` trained a whole epoch
//! and then failed with "File exists").

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::TempDir;

const SLICE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/fashion-mnist-slice");

/// `incept args` failed at once, with one line holding every one of `expected`.
fn refused(args: &[&str], expected: &[&str]) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_incept")).args(args).output().unwrap();
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: one line, found: {err}");
    for e in expected {
        assert!(err.contains(e), "{args:?}: expected {e:?} in: {err}");
    }
    assert!(out.stdout.is_empty(), "{args:?}: nothing before the refusal");
    // A training step on the slice takes longer than this; the refusal needs none.
    assert!(took < Duration::from_secs(5), "{args:?} took {took:?}");
}

/// A short training run on the slice with `extra` flags.
fn train(extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "train", "--data", SLICE, "--resize", "32", "--batch", "16", "--steps", "2", "--quiet",
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[test]
fn train_refuses_outputs_it_cannot_write_before_the_first_step() {
    let dir = TempDir::new("outputs-train");
    let file = dir.join("a-file");
    std::fs::write(&file, "keep me").unwrap();
    let file_str = file.to_str().unwrap();
    let out = dir.join("run");
    let out_str = out.to_str().unwrap();

    // --out names an existing file.
    refused(
        &strs(&train(&["--out", file_str])),
        &["--out", file_str, "exists and is a file"],
    );
    // --out where nothing can be created.
    refused(
        &strs(&train(&["--out", "/proc/incept-run"])),
        &["--out", "/proc/incept-run", "cannot create files in /proc"],
    );
    // --save names a directory; or sits under a file.
    let save_dir = dir.display().to_string();
    refused(
        &strs(&train(&["--out", out_str, "--save", &save_dir])),
        &["--save", &save_dir, "is a directory"],
    );
    let under_file = format!("{file_str}/ck.safetensors");
    refused(
        &strs(&train(&["--out", out_str, "--save", &under_file])),
        &["--save", &under_file, "a-file is a file"],
    );
    // --step-log names a directory; or sits under a file.
    refused(
        &strs(&train(&["--out", out_str, "--step-log", &save_dir])),
        &["--step-log", &save_dir, "is a directory"],
    );
    let log_under_file = format!("{file_str}/steps.jsonl");
    refused(
        &strs(&train(&["--out", out_str, "--step-log", &log_under_file])),
        &["--step-log", &log_under_file, "a-file is a file"],
    );
    // The run's metrics file, where a directory stands in its way.
    std::fs::create_dir_all(out.join("metrics.jsonl")).unwrap();
    refused(
        &strs(&train(&["--out", out_str])),
        &["--out", "metrics.jsonl", "is a directory"],
    );
    std::fs::remove_dir_all(&out).unwrap();

    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    assert!(!out.exists(), "nothing written by a refused run");
    // The same flags with paths that can be written: the run goes through.
    let log = dir.join("new/steps.jsonl");
    let ok = Command::new(env!("CARGO_BIN_EXE_incept"))
        .args(strs(&train(&["--out", out_str, "--step-log", log.to_str().unwrap()])))
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(out.join("checkpoint.safetensors").exists() && log.exists());
}

#[test]
fn predict_refuses_an_output_it_cannot_write_before_the_forward_pass() {
    let dir = TempDir::new("outputs-predict");
    let graph = incept::models::build(
        "googlenet-d2l",
        incept::models::default_config("googlenet-d2l").unwrap(),
    )
    .unwrap();
    let model = incept::models::Model::init(graph, 0);
    let weights = dir.join("w.safetensors");
    incept::io::checkpoint::save(&weights, &model.graph, &model.params, None, &Default::default()).unwrap();
    let x = dir.join("x.npy");
    common::write_npy_f32(&x, &[1, 1, 96, 96], &[0.5; 96 * 96]);
    let predict = |output: &str| {
        vec![
            "predict".to_string(),
            "--weights".into(),
            weights.display().to_string(),
            "--input".into(),
            x.display().to_string(),
            "--output".into(),
            output.to_string(),
        ]
    };
    let as_dir = dir.display().to_string();
    refused(&strs(&predict(&as_dir)), &["--output", &as_dir, "is a directory"]);
    refused(
        &strs(&predict("/proc/incept-logits.npy")),
        &["--output", "/proc/incept-logits.npy", "cannot create files in /proc"],
    );
    let y = dir.join("y.npy");
    let ok = Command::new(env!("CARGO_BIN_EXE_incept"))
        .args(strs(&predict(y.to_str().unwrap())))
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(Path::new(&y).exists());
}
