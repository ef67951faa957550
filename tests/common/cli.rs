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
