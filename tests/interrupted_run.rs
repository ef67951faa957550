//! No lost work: a training run stopped by Ctrl-C (SIGINT) finishes its step, writes its checkpoint and
//! says how to continue; one killed outright (SIGKILL) leaves the checkpoint `--checkpoint-every` wrote
//! last; resumed from either, it ends with the weights of a run never stopped, bit for bit. A fresh run
//! refuses an `--out` that holds a previous run unless told `--overwrite`.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::TempDir;
use incept::io::checkpoint::TensorFile;

const SLICE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/fashion-mnist-slice");
/// Steps of every run here: past the first epoch's 32 (512 images, batch 16), so resuming crosses the
/// epoch boundary and its evaluation.
const STEPS: &str = "40";

/// `incept train` on the committed slice at 32×32 into `out`, with `extra` flags (`--steps` among them).
fn train(out: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_incept"));
    cmd.args(["train", "--data", SLICE, "--resize", "32", "--batch", "16", "--quiet"])
        .args(["--out", out.to_str().unwrap()])
        .args(extra);
    cmd
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Waits until `log` (one line per step) has at least `steps` lines; panics after two minutes.
fn wait_for_steps(child: &mut Child, log: &Path, steps: usize) {
    let started = Instant::now();
    loop {
        let done = std::fs::read_to_string(log).map(|t| t.lines().count()).unwrap_or(0);
        if done >= steps {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before step {steps}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no step {steps} after two minutes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name}");
}

/// Asserts the two checkpoints hold the same tensors, bit for bit, after the same number of steps.
fn same_weights(a: &Path, b: &Path) {
    let (a, b) = (TensorFile::read(a).unwrap(), TensorFile::read(b).unwrap());
    assert_eq!(a.metadata["global_step"], b.metadata["global_step"]);
    assert_eq!(a.tensors.len(), b.tensors.len());
    for (name, (shape, values)) in &a.tensors {
        let (other_shape, other) = &b.tensors[name];
        assert_eq!(shape, other_shape, "{name}");
        let differ = values
            .iter()
            .zip(other)
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .count();
        assert_eq!(differ, 0, "{name}: {differ} values differ from the uninterrupted run");
    }
}

#[test]
fn interrupted_and_killed_runs_resume_to_the_uninterrupted_weights() {
    let dir = TempDir::new("interrupted_run");
    let straight = dir.join("straight");
    ok(train(&straight, &["--steps", STEPS]).output().unwrap());

    // Ctrl-C after a few steps: the run finishes the step, writes the checkpoint and exits with 130.
    let stopped = dir.join("stopped");
    let log = dir.join("stopped-steps.jsonl");
    let mut child = train(&stopped, &["--steps", STEPS, "--step-log", log.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_steps(&mut child, &log, 3);
    signal(&child, "INT");
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(130),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("interrupted after step") && stdout.contains("--resume"),
        "{stdout}"
    );
    let checkpoint = stopped.join("checkpoint.safetensors");
    let at: u64 = TensorFile::read(&checkpoint).unwrap().metadata["global_step"]
        .parse()
        .unwrap();
    assert!((3..40).contains(&at), "stopped at step {at}");
    ok(
        train(&stopped, &["--steps", STEPS, "--resume", checkpoint.to_str().unwrap()])
            .output()
            .unwrap(),
    );
    same_weights(&straight.join("checkpoint.safetensors"), &checkpoint);

    // SIGKILL, which nothing can catch: the checkpoint written every 5 steps is what is left.
    let killed = dir.join("killed");
    let log = dir.join("killed-steps.jsonl");
    let mut child = train(
        &killed,
        &[
            "--steps",
            STEPS,
            "--checkpoint-every",
            "5",
            "--step-log",
            log.to_str().unwrap(),
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    wait_for_steps(&mut child, &log, 7);
    signal(&child, "KILL");
    child.wait().unwrap();
    let checkpoint = killed.join("checkpoint.safetensors");
    let at: u64 = TensorFile::read(&checkpoint).unwrap().metadata["global_step"]
        .parse()
        .unwrap();
    assert!(at >= 5 && at % 5 == 0, "the periodic checkpoint holds step {at}");
    ok(
        train(&killed, &["--steps", STEPS, "--resume", checkpoint.to_str().unwrap()])
            .output()
            .unwrap(),
    );
    same_weights(&straight.join("checkpoint.safetensors"), &checkpoint);
}

#[test]
fn a_fresh_run_refuses_an_out_directory_with_a_previous_run() {
    let dir = TempDir::new("previous_run");
    let out = dir.join("runs");
    let few = ["--steps", "2"];
    ok(train(&out, &few).output().unwrap());
    let again = train(&out, &few).output().unwrap();
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success(),
        "a second run into the same --out must be refused"
    );
    assert!(
        err.contains("a previous run is there") && err.contains("--resume") && err.contains("--overwrite"),
        "{err}"
    );
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    ok(train(&out, &["--steps", "2", "--overwrite"]).output().unwrap());
    let replaced = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(
        replaced.lines().count(),
        metrics.lines().count(),
        "--overwrite starts the metrics afresh"
    );
}
