//! Running the `incept` binary from a test: its output, success, and refusals.

use std::process::{Command, Output};

/// Runs `incept` with `args`.
pub fn incept(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_incept")).args(args).output().unwrap()
}

/// The stdout of a command that must have succeeded (its stderr in the failure message).
pub fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Asserts the command failed, without a panic, with a message containing every one of `expected`.
pub fn fails_with(out: Output, expected: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected a failure: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for e in expected {
        assert!(err.contains(e), "expected {e:?} in: {err}");
    }
}

/// The committed Fashion-MNIST slice (512 training and 256 test images).
pub const SLICE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/fashion-mnist-slice");

/// googlenet-d2l trained `steps` steps on the slice at 32×32, normalized (so what reads the checkpoint
/// must apply the recorded statistics too), into `dir/run`; the checkpoint's path.
pub fn trained_on_slice(dir: &std::path::Path, steps: usize) -> String {
    let out = dir.join("run");
    let steps = steps.to_string();
    ok(incept(&[
        "train",
        "--data",
        SLICE,
        "--resize",
        "32",
        "--normalize",
        "--steps",
        &steps,
        "--batch",
        "16",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]));
    out.join("checkpoint.safetensors").display().to_string()
}
