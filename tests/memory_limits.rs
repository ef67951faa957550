//! Sizes that cannot fit are refused before any work, with one line naming what they need, what is
//! available and what to try, and exit code 1: never an allocation abort. Each command runs under an
//! address-space limit of 2 GiB (`ulimit -v`, i.e. `setrlimit(RLIMIT_AS)` in the child only), so the
//! limit, not the machine's memory, is what they are measured against.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::TempDir;
use incept::models::{self, Model};

const SLICE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/fashion-mnist-slice");
/// The child's address-space limit, KiB.
const LIMIT_KIB: u64 = 2 << 20;

/// `incept args` under the address-space limit, with how long it took.
fn limited(args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {LIMIT_KIB} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_incept"))
        .args(args)
        .output()
        .unwrap();
    (out, started.elapsed())
}

/// The command ended at once with exit code 1 and one line on stderr holding every one of `expected`.
fn refused(args: &[&str], expected: &[&str]) -> String {
    let (out, took) = limited(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: one line, found: {err}");
    for e in expected {
        assert!(err.contains(e), "{args:?}: expected {e:?} in: {err}");
    }
    // Well before any real work: the refusal needs the data read and a plan, no step.
    assert!(took < Duration::from_secs(10), "{args:?} took {took:?}");
    err
}

/// googlenet-d2l's weights as a PyTorch state_dict (no recorded size), in `dir`.
fn state_dict(dir: &Path) -> String {
    let graph = models::build("googlenet-d2l", models::default_config("googlenet-d2l").unwrap()).unwrap();
    let model = Model::init(graph, 0);
    let path = dir.join("w.safetensors");
    incept::io::checkpoint::save(&path, &model.graph, &model.params, None, &Default::default()).unwrap();
    path.display().to_string()
}

#[test]
fn train_refuses_a_batch_or_size_beyond_memory_before_any_step() {
    let dir = TempDir::new("memory-train");
    let out = dir.join("run");
    let out = out.to_str().unwrap();
    // Larger than the 512 training images: planned as the one batch of all 512 it is, and still too big.
    let err = refused(
        &["train", "--data", SLICE, "--batch", "1000000000", "--out", out],
        &[
            "batch 1000000000 (one batch of all 512 training images) at 96x96 needs",
            "GiB for activations and gradients",
            "are available (under this process's address-space limit",
            "try --batch ",
        ],
    );
    // The batch it suggests runs under the same limit.
    let k = err.trim_end().rsplit(' ').next().unwrap();
    let (ok, _) = limited(&[
        "train",
        "--data",
        SLICE,
        "--batch",
        k,
        "--steps",
        "1",
        "--test-limit",
        "8",
        "--out",
        out,
        "--quiet",
    ]);
    assert!(
        ok.status.success(),
        "--batch {k}: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    std::fs::remove_dir_all(out).unwrap();
    refused(
        &["train", "--data", SLICE, "--resize", "100000", "--out", out],
        &[
            "batch 128 at 100000x100000 needs",
            "even one image needs",
            "try a smaller --resize",
        ],
    );
    assert!(!Path::new(out).exists(), "nothing written for a refused run");
}

#[test]
fn eval_and_predict_refuse_sizes_beyond_memory() {
    let dir = TempDir::new("memory-eval");
    let weights = state_dict(&dir);
    refused(
        &["eval", "--weights", &weights, "--data", SLICE, "--resize", "500"],
        &["batch 128 at 500x500 needs", "GiB for activations;", "try --batch "],
    );
    // One image of 4000x4000 does not fit; predict says so before reading anything else.
    let x = dir.join("x.npy");
    common::write_npy_f32(&x, &[1, 1, 4000, 4000], &vec![0.5; 4000 * 4000]);
    let y = dir.join("y.npy");
    let (x, y) = (x.to_str().unwrap(), y.to_str().unwrap());
    refused(
        &["predict", "--weights", &weights, "--input", x, "--output", y],
        &["googlenet-d2l at 1x4000x4000 needs", "for the activations of one image"],
    );
    assert!(!Path::new(y).exists());
    // Images of 600x600 fit a few at a time, not 64: predict runs them in smaller batches.
    let x = dir.join("x600.npy");
    common::write_npy_f32(&x, &[3, 1, 600, 600], &vec![0.5; 3 * 600 * 600]);
    let (out, _) = limited(&[
        "predict",
        "--weights",
        &weights,
        "--input",
        x.to_str().unwrap(),
        "--output",
        y,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn bench_refuses_a_batch_beyond_memory() {
    refused(
        &["bench", "--model", "inception-v3", "--batch", "100000000"],
        &[
            "batch 100000000 at 299x299 needs",
            "GiB for activations;",
            "try --batch ",
        ],
    );
    refused(
        &["bench", "--mode", "train", "--batch", "100000"],
        &[
            "batch 100000 at 96x96 needs",
            "GiB for activations and gradients;",
            "try --batch ",
        ],
    );
}
