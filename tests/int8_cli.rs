//! int8 end to end on the committed Fashion-MNIST slice: `incept quantize` writes an int8 checkpoint
//! whose network is the one the library builds from the same weights and calibration images (the same
//! logits bit for bit after the round trip through the file); `incept eval` prints its accuracy,
//! `incept predict` its logits, `incept bench --precision int8` times it; and mistakes are refused with
//! a message naming the file or flag.

mod common;

use std::path::Path;

use common::TempDir;
use common::cli::{SLICE, fails_with, incept, ok, trained_on_slice};
use incept::classifier::Classifier;
use incept::data::idx;
use incept::data::transforms::Normalization;
use incept::graph::Executor;
use incept::int8::{CalibrationMethod, Int8Checkpoint, QuantizedNetwork, Ranges};
use incept::io::checkpoint::TensorFile;
use incept::models::{self, Model};
use incept::train::{loss_and_accuracy, network_inputs};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};

const CALIBRATION: usize = 48;

#[test]
fn quantize_eval_and_predict_run_the_network_the_library_builds() {
    let dir = TempDir::new("int8_cli");
    let weights = trained_on_slice(&dir, 6);
    let int8 = dir.join("int8.safetensors");
    let int8_arg = int8.to_str().unwrap();
    let calibration = CALIBRATION.to_string();
    let printed = ok(incept(&[
        "quantize",
        "--weights",
        &weights,
        "--out",
        int8_arg,
        "--data",
        SLICE,
        "--calibration-images",
        &calibration,
    ]));
    assert!(
        printed.contains("float32: test loss") && printed.contains("int8:    test loss"),
        "{printed}"
    );

    // The library's network from the same float weights and the same evenly spaced training images.
    let file = TensorFile::read(Path::new(&weights)).unwrap();
    let normalization = Normalization::from_metadata(&file.metadata["normalization"]).unwrap();
    let config = models::ModelConfig {
        size: [32, 32],
        ..models::config_from_weights("googlenet-d2l", &file).unwrap()
    };
    let graph = models::build("googlenet-d2l", config).unwrap();
    let params = file.params_for(&graph, Path::new(&weights)).unwrap();
    let (train, test) = idx::read_dir(Path::new(SLICE)).unwrap();
    let shape = [1, 32, 32];
    let mut images = vec![0.0; CALIBRATION * 1024];
    for (i, dst) in images.chunks_exact_mut(1024).enumerate() {
        let at = i * train.len() / CALIBRATION;
        network_inputs(&train, at..at + 1, shape, Some(&normalization), dst);
    }
    let mut exec = Executor::new(
        Model {
            graph: graph.clone(),
            params: params.clone(),
        },
        16,
    )
    .unwrap();
    // The default calibration.
    let ranges = Ranges::measure(&mut exec, &images, CalibrationMethod::Percentile(99.999)).unwrap();
    let built = QuantizedNetwork::new(&graph, &params, &ranges).unwrap();
    let loaded = Int8Checkpoint::read(&int8).unwrap();
    assert_eq!(loaded.model, "googlenet-d2l");
    assert_eq!(loaded.metadata["calibration"], "percentile-99.999");
    assert_eq!(loaded.metadata["calibration_images"], calibration);

    let mut x = vec![0.0; test.len() * 1024];
    network_inputs(&test, 0..test.len(), shape, Some(&normalization), &mut x);
    let expected = built.forward(&x).unwrap();
    assert_eq!(
        loaded.network.forward(&x).unwrap(),
        expected,
        "the file holds the network it was built as"
    );

    // eval prints the accuracy of those logits.
    let (_, acc) = loss_and_accuracy(&expected, 10, &test.labels).unwrap();
    let eval = ok(incept(&["eval", "--weights", int8_arg, "--data", SLICE]));
    assert!(
        eval.contains(&format!("test acc {acc:.4}")) && eval.contains("int8 convolutions"),
        "{eval}"
    );

    // predict writes the logits of a tensor given as is; the library's classifier gives them too.
    let tensor = dir.join("x.npy");
    let batch = incept::ndarray::Array4::from_shape_vec([4, 1, 32, 32], x[..4 * 1024].to_vec()).unwrap();
    batch.write_npy(std::fs::File::create(&tensor).unwrap()).unwrap();
    let logits_path = dir.join("logits.npy");
    ok(incept(&[
        "predict",
        "--weights",
        int8_arg,
        "--input",
        tensor.to_str().unwrap(),
        "--output",
        logits_path.to_str().unwrap(),
    ]));
    let logits = incept::ndarray::Array2::<f32>::read_npy(std::fs::File::open(&logits_path).unwrap()).unwrap();
    assert_eq!(logits.as_slice().unwrap(), &expected[..40]);
    let mut classifier = Classifier::from_safetensors(None, &int8).unwrap();
    assert!(classifier.int8_kernel().is_some() && classifier.precision().is_none());
    assert_eq!(
        classifier.forward_tensor(batch.view()).unwrap().as_slice().unwrap(),
        &expected[..40]
    );
    let mut adam = classifier.adam();
    let err = classifier
        .train_step_tensor(batch.view(), &[0, 1, 2, 3], &mut adam, 1e-3)
        .unwrap_err()
        .to_string();
    assert!(err.contains("inference only"), "{err}");

    // Mistakes.
    fails_with(
        incept(&["eval", "--weights", int8_arg, "--data", SLICE, "--precision", "bf16"]),
        &["int8 checkpoint", "bf16"],
    );
    fails_with(
        incept(&["eval", "--weights", &weights, "--data", SLICE, "--precision", "int8"]),
        &["holds float weights", "incept quantize"],
    );
    fails_with(
        incept(&[
            "quantize",
            "--weights",
            int8_arg,
            "--out",
            dir.join("again.safetensors").to_str().unwrap(),
            "--data",
            SLICE,
        ]),
        &["int8.safetensors", "F32"],
    );
    fails_with(
        incept(&[
            "quantize",
            "--weights",
            &weights,
            "--out",
            "/proc/int8.safetensors",
            "--data",
            SLICE,
        ]),
        &["--out", "/proc/int8.safetensors"],
    );
    fails_with(
        incept(&[
            "quantize",
            "--weights",
            &weights,
            "--out",
            int8_arg,
            "--data",
            SLICE,
            "--calibration",
            "percentile-40",
        ]),
        &["percentile-40", "minmax"],
    );
    let out = dir.join("train-int8");
    fails_with(
        incept(&[
            "train",
            "--data",
            SLICE,
            "--precision",
            "int8",
            "--steps",
            "1",
            "--out",
            out.to_str().unwrap(),
        ]),
        &["int8", "incept quantize"],
    );
}

#[test]
fn a_damaged_int8_checkpoint_is_refused_naming_the_tensor() {
    let dir = TempDir::new("int8_damaged");
    let weights = trained_on_slice(&dir, 6);
    let int8 = dir.join("int8.safetensors");
    ok(incept(&[
        "quantize",
        "--weights",
        &weights,
        "--out",
        int8.to_str().unwrap(),
        "--data",
        SLICE,
        "--calibration-images",
        "8",
        "--test-limit",
        "0",
    ]));
    // Rewrite the file with one activation scale removed.
    let bytes = std::fs::read(&int8).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let dropped = file
        .names()
        .into_iter()
        .find(|n| n.ends_with(".activation_scale"))
        .unwrap()
        .to_string();
    let kept: Vec<(String, safetensors::tensor::TensorView<'_>)> =
        file.tensors().into_iter().filter(|(n, _)| *n != dropped).collect();
    let damaged = dir.join("damaged.safetensors");
    safetensors::serialize_to_file(kept, header.metadata().clone(), &damaged).unwrap();
    fails_with(
        incept(&["eval", "--weights", damaged.to_str().unwrap(), "--data", SLICE]),
        &[&dropped, "damaged.safetensors"],
    );
}

#[test]
fn bench_times_int8_on_random_weights() {
    let out = ok(incept(&[
        "bench",
        "--model",
        "googlenet-d2l",
        "--precision",
        "int8",
        "--batch",
        "2",
        "--warmup",
        "0",
        "--steps",
        "1",
        "--json",
    ]));
    let record: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(record["precision"], "int8");
    assert!(
        record["img_per_s"].as_f64().unwrap() > 0.0 && record["int8_isa"].is_string(),
        "{record}"
    );
}

#[test]
fn a_torchvision_state_dict_is_refused_before_any_work() {
    let f = common::fixture::Fixture::open("tensor_input");
    let dir = TempDir::new("int8_torchvision");
    let weights = dir.join("googlenet.safetensors");
    common::write_state_dict(&f, "googlenet/10", &weights);
    fails_with(
        incept(&[
            "quantize",
            "--weights",
            weights.to_str().unwrap(),
            "--out",
            dir.join("q.safetensors").to_str().unwrap(),
            "--data",
            SLICE,
        ]),
        &["googlenet.safetensors", "ImageNet preprocessing"],
    );
}
