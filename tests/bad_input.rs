//! Bad input gets a clear error naming what was expected and what was found, never a panic: corrupt and
//! truncated IDX files, NPY files of the wrong dtype or shape, safetensors files with missing,
//! unexpected or misshaped tensors (all listed in one error), wrong input shapes, and a NaN loss (which
//! stops training with the step named and the last good checkpoint kept).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::TempDir;
use incept::data::{idx, npy};
use incept::graph::{Executor, GraphBuilder, Mode};
use incept::io::checkpoint::{TensorFile, save};
use incept::models::{self, Model, ModelConfig};
use incept::ndarray::{Array1, Array3, Array4};
use incept::ops::conv::{Conv2d, ConvAlgo};
use incept::tensor::Images;
use incept::train::{self, OptimizerKind, TrainConfig};
use incept::{Error, Result};
use ndarray_npy::WriteNpyExt;

fn slice(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/fashion-mnist-slice")
        .join(file)
}

fn message<T: std::fmt::Debug>(r: Result<T>) -> String {
    r.expect_err("bad input must be an error").to_string()
}

#[test]
fn truncated_or_corrupt_idx_files_are_reported() {
    let dir = TempDir::new("bad-idx");
    let labels = slice("train-labels-idx1-ubyte.gz");
    // A gzip stream cut in half.
    let gz = std::fs::read(slice("train-images-idx3-ubyte.gz")).unwrap();
    std::fs::write(dir.join("cut.gz"), &gz[..gz.len() / 2]).unwrap();
    let m = message(idx::read_pair(&dir.join("cut.gz"), &labels, 10));
    assert!(m.contains("cut.gz") && m.contains("corrupt or truncated gzip"), "{m}");
    // A raw file whose header promises more pixels than it has.
    let mut raw = vec![0, 0, 8, 3, 0, 0, 2, 0, 0, 0, 0, 28, 0, 0, 0, 28];
    raw.extend(std::iter::repeat_n(7u8, 100));
    std::fs::write(dir.join("short"), &raw).unwrap();
    let m = message(idx::read_pair(&dir.join("short"), &labels, 10));
    assert!(m.contains("401408 data bytes") && m.contains("found 100"), "{m}");
    // The wrong magic number (a labels file given as images).
    let m = message(idx::read_pair(&labels, &labels, 10));
    assert!(
        m.contains("IDX magic 0x00000803") && m.contains("found 0x00000801"),
        "{m}"
    );
    // A header cut short.
    std::fs::write(dir.join("tiny"), [0u8, 0, 8]).unwrap();
    let m = message(idx::read_pair(&dir.join("tiny"), &labels, 10));
    assert!(m.contains("IDX header of 16 bytes") && m.contains("3 bytes"), "{m}");
    // Labels that do not match the images in number.
    let m = message(idx::read_pair(
        &slice("train-images-idx3-ubyte.gz"),
        &slice("t10k-labels-idx1-ubyte.gz"),
        10,
    ));
    assert!(m.contains("512 labels") && m.contains("found 256"), "{m}");
    // A directory without the files.
    let m = message(idx::read_dir(&dir));
    assert!(m.contains("train-images-idx3-ubyte") && m.contains("not found"), "{m}");
}

#[test]
fn npy_files_of_the_wrong_dtype_or_shape_are_reported() {
    let dir = TempDir::new("bad-npy");
    let good_labels = dir.join("y.npy");
    Array1::from_vec(vec![1i64, 2])
        .write_npy(std::fs::File::create(&good_labels).unwrap())
        .unwrap();
    let f64_images = dir.join("x64.npy");
    Array4::<f64>::zeros([2, 1, 4, 4])
        .write_npy(std::fs::File::create(&f64_images).unwrap())
        .unwrap();
    let m = message(npy::read_pair(&f64_images, &good_labels, 10));
    assert!(m.contains("x64.npy") && m.contains("float32"), "{m}");
    let flat = dir.join("x3d.npy");
    Array3::<f32>::zeros([2, 4, 4])
        .write_npy(std::fs::File::create(&flat).unwrap())
        .unwrap();
    let m = message(npy::read_pair(&flat, &good_labels, 10));
    assert!(m.contains("x3d.npy") && m.contains("[n, c, h, w]"), "{m}");
    let good_images = dir.join("x.npy");
    Array4::<f32>::zeros([2, 1, 4, 4])
        .write_npy(std::fs::File::create(&good_images).unwrap())
        .unwrap();
    let f32_labels = dir.join("yf.npy");
    Array1::from_vec(vec![1.0f32, 2.0])
        .write_npy(std::fs::File::create(&f32_labels).unwrap())
        .unwrap();
    let m = message(npy::read_pair(&good_images, &f32_labels, 10));
    assert!(m.contains("yf.npy") && m.contains("int64"), "{m}");
    let bad_labels = dir.join("y11.npy");
    Array1::from_vec(vec![1i64, 11])
        .write_npy(std::fs::File::create(&bad_labels).unwrap())
        .unwrap();
    let m = message(npy::read_pair(&good_images, &bad_labels, 10));
    assert!(
        m.contains("labels in 0..10") && m.contains("found 11 at index 1"),
        "{m}"
    );
    std::fs::write(dir.join("junk.npy"), b"not a numpy file").unwrap();
    let m = message(npy::read_pair(&dir.join("junk.npy"), &good_labels, 10));
    assert!(m.contains("junk.npy"), "{m}");
}

#[test]
fn weight_files_list_every_missing_unexpected_and_misshaped_tensor_at_once() {
    let dir = TempDir::new("bad-weights");
    let graph = models::build("googlenet-d2l", models::default_config("googlenet-d2l").unwrap()).unwrap();
    let model = Model::init(graph.clone(), 0);
    // Write the weights under their names, minus `6.bias`, with `0.0.weight` misshaped and one extra.
    use safetensors::{Dtype, tensor::TensorView};
    let misshaped = vec![0f32; 64 * 3 * 7 * 7];
    let extra = vec![0f32; 3];
    let mut entries: Vec<(String, Vec<usize>, &[f32])> = graph
        .params
        .iter()
        .zip(&model.params)
        .filter(|(spec, _)| spec.name != "6.bias" && spec.name != "0.0.weight")
        .map(|(spec, v)| (spec.name.clone(), spec.shape.clone(), v.as_slice()))
        .collect();
    entries.push(("0.0.weight".into(), vec![64, 3, 7, 7], &misshaped));
    entries.push(("aux.fc.weight".into(), vec![3], &extra));
    let views: Vec<(String, TensorView)> = entries
        .iter()
        .map(|(n, s, v)| {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            (n.clone(), bytes, s.clone())
        })
        .collect::<Vec<_>>()
        .leak()
        .iter()
        .map(|(n, b, s)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).unwrap()))
        .collect();
    let path = dir.join("bad.safetensors");
    safetensors::serialize_to_file(views, None, &path).unwrap();
    let file = TensorFile::read(&path).unwrap();
    let m = message(file.params_for(&graph, &path));
    assert!(m.contains("missing 6.bias [10]"), "{m}");
    assert!(m.contains("unexpected aux.fc.weight"), "{m}");
    assert!(
        m.contains("misshaped 0.0.weight: expected [64, 1, 7, 7], found [64, 3, 7, 7]"),
        "{m}"
    );
    assert!(m.contains("(1 missing, 1 misshaped, 1 unexpected)"), "{m}");
    // Another model's weights: hundreds of mismatches, summed up in counts and ten names, not kilobytes.
    let bn = models::build("googlenet-bn", models::default_config("googlenet-bn").unwrap()).unwrap();
    let m = message(file.params_for(&bn, &path));
    assert!(m.contains(" missing, ") && m.contains(" more"), "{m}");
    assert!(m.len() < 1500, "{} characters: {m}", m.len());
    // Not a safetensors file at all, and a truncated one.
    std::fs::write(
        dir.join("junk.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}",
    )
    .unwrap();
    let m = message(TensorFile::read(&dir.join("junk.safetensors")));
    assert!(
        m.contains("junk.safetensors") && m.contains("corrupt or truncated"),
        "{m}"
    );
    let whole = std::fs::read(&path).unwrap();
    std::fs::write(dir.join("cut.safetensors"), &whole[..whole.len() - 1000]).unwrap();
    let m = message(TensorFile::read(&dir.join("cut.safetensors")));
    assert!(
        m.contains("cut.safetensors") && m.contains("corrupt or truncated"),
        "{m}"
    );
}

#[test]
fn wrong_input_shapes_name_the_node_or_the_input() {
    let graph = models::build("googlenet-d2l", models::default_config("googlenet-d2l").unwrap()).unwrap();
    let model = Model::init(graph, 0);
    let mut exec = Executor::new(model.clone(), 2).unwrap();
    let x = vec![0f32; 2 * 3 * 96 * 96];
    let m = message(exec.forward(Images::dense(&x, 2, 3 * 96 * 96), Mode::Eval));
    assert!(
        m.contains("graph input") && m.contains("9216 values per image") && m.contains("27648"),
        "{m}"
    );
    let x = vec![0f32; 3 * 96 * 96];
    let m = message(exec.forward(Images::dense(&x, 3, 96 * 96), Mode::Eval));
    assert!(m.contains("a batch of 1 to 2 images") && m.contains("3 images"), "{m}");
    // Graph-building errors name the node: a channel mismatch and a map smaller than the kernel.
    let mut b = GraphBuilder::new();
    let x = b.input("input", [1, 8, 8]).unwrap();
    let m = message(b.conv("stem", x, Conv2d::new(3, 8, [3, 3]), true, true));
    assert!(
        m.contains("node stem") && m.contains("[n, 3, h, w]") && m.contains("[1, 1, 8, 8]"),
        "{m}"
    );
    let m = message(b.conv("big", x, Conv2d::new(1, 8, [9, 9]), true, true));
    assert!(m.contains("node big") && m.contains("kernel span"), "{m}");
    // An algorithm forced on a layer it cannot run is refused when the executor plans the graph.
    let y = b
        .conv(
            "forced",
            x,
            Conv2d::new(1, 4, [3, 3]).with_algo(ConvAlgo::Gemm1x1),
            true,
            true,
        )
        .unwrap();
    let graph = b.build(y).unwrap();
    let m = message(Executor::new(Model::init(graph, 0), 1).map(|_| ()));
    assert!(
        m.contains("node forced") && m.contains("Gemm1x1 needs a 1x1 kernel"),
        "{m}"
    );
    // Labels out of range.
    let x = vec![0f32; 96 * 96];
    exec.forward(Images::dense(&x, 1, 96 * 96), Mode::Eval).unwrap();
    let m = message(exec.loss(&[12]));
    assert!(m.contains("label 12") && m.contains("0..10"), "{m}");
}

#[test]
fn a_nan_loss_stops_training_naming_the_step_and_keeps_the_last_good_checkpoint() {
    let dir = TempDir::new("bad-nan");
    let (train_set, test_set) = idx::read_dir(&slice("")).unwrap();
    let (train_set, test_set) = (train_set.truncate(4), test_set.truncate(4));
    let mut cfg = TrainConfig {
        config: ModelConfig {
            in_channels: 1,
            size: [32, 32],
            classes: 10,
            aux_heads: false,
        },
        epochs: 1,
        batch: 2,
        optimizer: OptimizerKind::Sgd {
            momentum: 0.0,
            nesterov: false,
        },
        shuffle: false,
        save: Some(dir.join("ck.safetensors")),
        ..TrainConfig::default()
    };
    train::train(&cfg, train_set.clone(), &test_set, |_| {}).unwrap();
    let good = std::fs::read(dir.join("ck.safetensors")).unwrap();
    // A learning rate that sends the weights to infinity after one step: step 2's loss is not finite.
    cfg.lr = 1e30;
    let err = train::train(&cfg, train_set, &test_set, |_| {}).unwrap_err();
    assert!(matches!(err, Error::NonFiniteLoss { step: 2, .. }), "{err}");
    assert!(err.to_string().contains("step 2"), "{err}");
    assert_eq!(
        std::fs::read(dir.join("ck.safetensors")).unwrap(),
        good,
        "the last good checkpoint must be kept"
    );
}

#[test]
fn the_command_line_reports_bad_input_without_panicking() {
    let dir = TempDir::new("bad-cli");
    let run = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_incept")).args(args).output().unwrap();
    // An --out that can be written (the working directory may not be: a read-only checkout), so the
    // data is what is wrong.
    let run_dir = dir.join("run");
    let out = run(&[
        "train",
        "--data",
        "/nonexistent/fashion",
        "--quiet",
        "--out",
        run_dir.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("/nonexistent/fashion") && err.contains("--data DIR"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // predict with images of the wrong channel count for the weights.
    let graph = models::build("googlenet-d2l", models::default_config("googlenet-d2l").unwrap()).unwrap();
    let model = Model::init(graph, 0);
    save(
        &dir.join("w.safetensors"),
        &model.graph,
        &model.params,
        None,
        &Default::default(),
    )
    .unwrap();
    Array4::<f32>::zeros([1, 3, 96, 96])
        .write_npy(std::fs::File::create(dir.join("x.npy")).unwrap())
        .unwrap();
    let (w, x, y) = (dir.join("w.safetensors"), dir.join("x.npy"), dir.join("y.npy"));
    let out = run(&[
        "predict",
        "--weights",
        w.to_str().unwrap(),
        "--input",
        x.to_str().unwrap(),
        "--output",
        y.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("1 channel(s)") && err.contains("found 3"),
        "{err}"
    );
    let out = run(&["summary", "--input", "1x96x96"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("NxCxHxW"), "{err}");
    let slice_dir = format!("{}/fixtures/fashion-mnist-slice", env!("CARGO_MANIFEST_DIR"));
    for (flag, value, expected) in [
        ("--rmsprop-alpha", "1.5", "RMSProp's alpha must be in [0, 1], found 1.5"),
        ("--rmsprop-eps", "-1", "RMSProp's eps must be at least 0, found -1"),
        ("--lr", "NaN", "learning rate must be finite and at least 0, found NaN"),
    ] {
        let out = run(&[
            "train",
            "--optimizer",
            "rmsprop",
            &format!("{flag}={value}"),
            "--data",
            &slice_dir,
            "--quiet",
            "--out",
            dir.join("bad-run").to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(expected), "{flag} {value}: {err}");
    }
    let out = run(&["train", "--model", "resnet-50", "--out", run_dir.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown model") && err.contains("googlenet-d2l"),
        "{err}"
    );
}

/// Started by `mpirun` (its environment) but built without the `mpi` feature, `incept train` would
/// train alone in every rank, all writing the same files: it refuses, saying how to build it.
#[cfg(not(feature = "mpi"))]
#[test]
fn a_build_without_mpi_refuses_to_run_as_a_rank() {
    let dir = TempDir::new("no-mpi");
    let out = Command::new(env!("CARGO_BIN_EXE_incept"))
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .args([
            "train",
            "--steps",
            "1",
            "--quiet",
            "--out",
            dir.join("run").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--features mpi"), "{err}");
    assert!(!dir.join("run").exists(), "nothing written");
}

/// Settings that cannot run are refused before the run starts: one line on stderr, nothing on stdout
/// (not even the run's header), exit code 1, nothing written. Among them a checkpoint to resume that a
/// run with another batch size or optimizer wrote, and an `--init` file that is not safetensors.
#[test]
fn refusals_come_before_the_run_starts() {
    let dir = TempDir::new("before-start");
    let slice_dir = format!("{}/fixtures/fashion-mnist-slice", env!("CARGO_MANIFEST_DIR"));
    let train = |out: &str, extra: &[&str]| {
        let mut args = vec!["train", "--data", &slice_dir, "--resize", "32", "--quiet", "--out", out];
        args.extend_from_slice(extra);
        Command::new(env!("CARGO_BIN_EXE_incept")).args(args).output().unwrap()
    };
    let first = dir.join("first");
    let first = first.to_str().unwrap();
    assert!(train(first, &["--steps", "1", "--batch", "16"]).status.success());
    let checkpoint = format!("{first}/checkpoint.safetensors");
    let not_safetensors = dir.join("init.safetensors");
    std::fs::write(&not_safetensors, "hello").unwrap();
    let fresh = dir.join("fresh");
    let fresh = fresh.to_str().unwrap();
    for (extra, expected) in [
        (vec!["--epochs", "0"], "batch and epochs must be at least 1"),
        (vec!["--lr", "NaN"], "learning rate must be finite"),
        (
            vec!["--init", not_safetensors.to_str().unwrap()],
            "a safetensors file, but",
        ),
        (
            vec!["--resume", &checkpoint, "--batch", "32"],
            "was saved with batch 16, this run has 32",
        ),
        (
            vec!["--resume", &checkpoint, "--optimizer", "sgd"],
            "was saved with optimizer adam, this run has sgd",
        ),
    ] {
        let out = train(fresh, &extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {err}");
        assert!(
            err.contains(expected) && err.trim_end().lines().count() == 1,
            "{extra:?}: {err}"
        );
        assert!(
            out.stdout.is_empty(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(!Path::new(fresh).exists(), "{extra:?}: nothing written");
    }
}
