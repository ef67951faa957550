//! The input size follows the data and the checkpoint, never a silent default: `train --data-npy` trains
//! at the images' size, a checkpoint records model, channels, size and normalization, and `eval`,
//! `predict` and `--resume` use them and refuse a contradicting flag naming both values. Numeric flags are
//! checked where they are parsed.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::TempDir;
use incept::io::checkpoint::{TensorFile, save};
use incept::models::{self, Model};
use incept::ndarray::{Array1, Array4};
use ndarray_npy::WriteNpyExt;

fn incept(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_incept")).args(args).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the command failed with a message containing every one of `expected`, and did not panic.
fn fails_with(out: &Output, expected: &[&str]) {
    let err = stderr(out);
    assert!(!out.status.success(), "expected a failure, got success: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for e in expected {
        assert!(err.contains(e), "expected {e:?} in: {err}");
    }
}

/// `n` random images `[n, 3, size, size]` and labels, as .npy files in `dir`.
fn npy_data(dir: &Path, n: usize, size: usize) -> (String, String) {
    let mut rng = fastrand::Rng::with_seed(5);
    let x = Array4::from_shape_fn([n, 3, size, size], |_| rng.f32());
    let y = Array1::from_shape_fn(n, |i| (i % 10) as i64);
    let (xp, yp) = (dir.join("x.npy"), dir.join("y.npy"));
    x.write_npy(std::fs::File::create(&xp).unwrap()).unwrap();
    y.write_npy(std::fs::File::create(&yp).unwrap()).unwrap();
    (xp.display().to_string(), yp.display().to_string())
}

/// Trains inception-tf-cifar for two steps on 32×32 .npy images (no --resize) into `dir/ck.safetensors`.
fn train_tf_cifar(dir: &Path, x: &str, y: &str) -> String {
    let ck = dir.join("ck.safetensors").display().to_string();
    let out = incept(&[
        "train",
        "--model",
        "inception-tf-cifar",
        "--data-npy",
        x,
        y,
        "--batch",
        "4",
        "--epochs",
        "1",
        "--quiet",
        "--save",
        &ck,
        "--out",
        &dir.display().to_string(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout.contains("32x32"), "trains at the images' own 32x32: {stdout}");
    ck
}

#[test]
fn npy_images_train_at_their_own_size_and_the_checkpoint_sets_evals_size() {
    let dir = TempDir::new("size-from-data");
    let (x, y) = npy_data(&dir, 8, 32);
    let ck = train_tf_cifar(&dir, &x, &y);
    let meta = TensorFile::read_metadata(Path::new(&ck)).unwrap();
    assert_eq!(
        (meta["model"].as_str(), meta["height"].as_str(), meta["width"].as_str()),
        ("inception-tf-cifar", "32", "32")
    );
    assert_eq!(meta["in_channels"], "3");
    // eval needs neither --model nor a size: both come from the checkpoint.
    let out = incept(&["eval", "--weights", &ck, "--data-npy", &x, &y]);
    assert!(out.status.success(), "{}", stderr(&out));
    // A contradicting flag is refused, naming both values.
    fails_with(
        &incept(&["eval", "--weights", &ck, "--data-npy", &x, &y, "--resize", "96"]),
        &["32x32", "96x96"],
    );
    fails_with(
        &incept(&[
            "eval",
            "--weights",
            &ck,
            "--model",
            "googlenet-bn",
            "--data-npy",
            &x,
            &y,
        ]),
        &["inception-tf-cifar", "googlenet-bn"],
    );
    // predict refuses images of another size than the checkpoint's, naming both.
    let dir64 = TempDir::new("size-64");
    let (x64, _) = npy_data(&dir64, 2, 64);
    let logits = dir.join("logits.npy").display().to_string();
    fails_with(
        &incept(&["predict", "--weights", &ck, "--input", &x64, "--output", &logits]),
        &["32x32", "64x64"],
    );
    let out = incept(&["predict", "--weights", &ck, "--input", &x, "--output", &logits]);
    assert!(out.status.success(), "{}", stderr(&out));
    // --resume takes the size from the checkpoint, and refuses another.
    let dir_name = dir.display().to_string();
    let resume = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--resume",
            &ck,
            "--data-npy",
            &x,
            &y,
            "--batch",
            "4",
            "--epochs",
            "2",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        incept(&args)
    };
    fails_with(&resume(&["--resize", "64", "--out", &dir_name]), &["32x32", "64x64"]);
    let out = resume(&["--save", &ck, "--out", &dir_name]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("inception-tf-cifar"));
}

#[test]
fn an_input_too_small_for_the_network_names_the_layer_where_the_map_empties() {
    let dir = TempDir::new("too-small");
    // PyTorch weights carry no size, so predict follows the images: googlenet-bn at 64x64 reaches its
    // 2x2 average pool with a 1x1 map (PyTorch: "Output size is too small").
    let graph = models::build("googlenet-bn", models::default_config("googlenet-bn").unwrap()).unwrap();
    let model = Model::init(graph, 0);
    let w = dir.join("w.safetensors");
    save(&w, &model.graph, &model.params, None, &Default::default()).unwrap();
    let (x, _) = npy_data(&dir, 1, 64);
    let logits = dir.join("y.npy").display().to_string();
    fails_with(
        &incept(&[
            "predict",
            "--model",
            "googlenet-bn",
            "--weights",
            &w.display().to_string(),
            "--input",
            &x,
            "--output",
            &logits,
        ]),
        &["node 4.2", "avg_pool2d"],
    );
}

#[test]
fn numeric_flags_are_checked_where_they_are_parsed() {
    let dir = TempDir::new("flags");
    let (x, y) = npy_data(&dir, 4, 32);
    let run_dir = dir.join("run").display().to_string();
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--model",
            "inception-tf-cifar",
            "--data-npy",
            &x,
            &y,
            "--quiet",
            "--steps",
            "1",
            "--out",
            &run_dir,
        ];
        args.extend_from_slice(extra);
        incept(&args)
    };
    fails_with(
        &train(&["--label-smoothing", "1.5"]),
        &["label smoothing", "[0, 1)", "1.5"],
    );
    fails_with(&train(&["--label-smoothing=-0.1"]), &["label smoothing", "-0.1"]);
    fails_with(&train(&["--train-limit", "0"]), &["--train-limit must be at least 1"]);
    fails_with(&train(&["--resize", "0"]), &["--resize must be at least 1"]);
    fails_with(
        &incept(&["--threads", "0", "summary"]),
        &["--threads must be at least 1"],
    );
    fails_with(
        &incept(&["bench", "--model", "inception-tf-cifar", "--batch", "2", "--steps", "0"]),
        &["--steps must be at least 1"],
    );
    let ck = train_tf_cifar(&dir, &x, &y);
    fails_with(
        &incept(&["eval", "--weights", &ck, "--data-npy", &x, &y, "--test-limit", "0"]),
        &["--test-limit must be at least 1"],
    );
    fails_with(
        &incept(&["eval", "--weights", &ck, "--data-npy", &x, &y, "--batch", "0"]),
        &["--batch must be at least 1"],
    );
}

#[test]
fn a_nan_loss_before_any_checkpoint_says_none_was_written() {
    let dir = TempDir::new("nan-first");
    let (x, y) = npy_data(&dir, 8, 32);
    // A learning rate that sends the weights to infinity: step 2's loss is not finite, before the
    // epoch's end, so nothing was saved.
    let out = incept(&[
        "train",
        "--model",
        "inception-tf-cifar",
        "--data-npy",
        &x,
        &y,
        "--batch",
        "4",
        "--optimizer",
        "sgd",
        "--lr",
        "1e30",
        "--quiet",
        "--out",
        &dir.display().to_string(),
    ]);
    fails_with(&out, &["step 2", "no checkpoint was written"]);
    assert!(!dir.join("checkpoint.safetensors").exists());
}

#[test]
fn a_resume_checkpoint_with_a_broken_header_is_named() {
    let dir = TempDir::new("resume-corrupt");
    let (x, y) = npy_data(&dir, 4, 32);
    let ck = train_tf_cifar(&dir, &x, &y);
    let bytes = std::fs::read(&ck).unwrap();
    for (name, cut, expected) in [
        ("short.safetensors", 3, "fewer than the 8 of its header length"),
        ("cut.safetensors", 20, "its header claims"),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let path = path.display().to_string();
        let run_dir = dir.join("run").display().to_string();
        fails_with(
            &incept(&[
                "train",
                "--resume",
                &path,
                "--data-npy",
                &x,
                &y,
                "--batch",
                "4",
                "--quiet",
                "--out",
                &run_dir,
            ]),
            &[&path, expected],
        );
    }
}
