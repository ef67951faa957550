//! A tensor is the model's input: `incept predict --input X.npy` and [`Classifier::forward_tensor`] feed
//! it to the network as given, as PyTorch's `model(x)` does, whatever the weights are; only image files
//! get preprocessing (`fixtures/generate_tensor_input.py`).
//!
//! Each of the four library models (torchvision's googlenet and inception_v3, timm's inception_v4 and
//! inception_resnet_v2) as a state_dict with hashed weights, once with a 10-class head (torchvision's
//! `transform_input` off, as its constructor leaves it) and once with a 1000-class head (on, as with its
//! ImageNet weights): the logits of a tensor in [-2, 2) against PyTorch's float64 `model(x)`, held to 4
//! times PyTorch float32's own distance from it (the issue asked for 10; measured 0.7 to 1.6 times, as in
//! `tests/pretrained_weights.rs`, which holds the same models on a photo to 4 times).

mod common;

use std::path::Path;
use std::process::Command;

use common::TempDir;
use common::fixture::Fixture;
use incept::classifier::{Classifier, TransformInputRule};
use incept::ndarray::{Array2, Array4};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};

/// Our distance from float64 over PyTorch float32's, at most.
const TIMES_PYTORCH: f64 = 4.0;
/// The splitmix stream of the input (`INPUT_STREAM` in the generator).
const INPUT_STREAM: usize = 7777;

/// The generator's input: 2 images at `size` with values 4u - 2.
fn input(size: usize) -> Array4<f32> {
    let shape = [2, 3, size, size];
    let values = common::splitmix_uniform(INPUT_STREAM, shape.iter().product())
        .map(|u| (4.0 * u - 2.0) as f32)
        .collect();
    Array4::from_shape_vec(shape, values).unwrap()
}

/// `incept predict --weights W --input X --output Y` with `extra` flags, which must succeed: the logits
/// it wrote and its stderr.
fn predict(weights: &Path, x: &Path, y: &Path, extra: &[&str]) -> (Array2<f32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_incept"))
        .arg("predict")
        .args(["--weights", weights.to_str().unwrap()])
        .args(["--input", x.to_str().unwrap(), "--output", y.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    (
        Array2::<f32>::read_npy(std::fs::File::open(y).unwrap()).unwrap(),
        stderr,
    )
}

/// Checks `model` with a `classes`-class head through the library and through `incept predict`.
fn check(model: &str, size: usize, classes: usize, torchvision: bool) {
    let f = Fixture::open("tensor_input");
    let key = format!("{model}/{classes}");
    let dir = TempDir::new(&format!("tensor-{model}-{classes}"));
    let weights = dir.join("w.safetensors");
    common::write_state_dict(&f, &key, &weights);
    let reference = f.named_f64(&format!("{key}/logits64"));
    let floor = common::relative_to_largest(f.named(&format!("{key}/logits32")).as_slice().unwrap(), &reference);
    let bar = TIMES_PYTORCH * floor;
    let x = input(size);

    // The library: the tensor as given; transform_input by torchvision's rule.
    let mut classifier = Classifier::from_safetensors(None, &weights).unwrap();
    assert_eq!(classifier.transform_input(), torchvision && classes == 1000, "{key}");
    let rule = classifier.transform_input_rule();
    let expected_rule = match torchvision {
        true => TransformInputRule::AssumedFromHead,
        false => TransformInputRule::NotPartOfModel,
    };
    assert_eq!(rule, expected_rule, "{key}");
    let logits = classifier.forward_tensor(x.view()).unwrap();
    let error = common::relative_to_largest(logits.as_slice().unwrap(), &reference);
    eprintln!("{key}: library {error:.2e}, PyTorch float32 {floor:.2e} (relative to float64)");
    assert!(
        error <= bar,
        "{key}: library logits {error:.2e} from float64 (PyTorch float32: {floor:.2e})"
    );

    // The command line: the same tensor through a .npy, with the preprocessing named on stderr.
    let (x_path, y_path) = (dir.join("x.npy"), dir.join("y.npy"));
    x.write_npy(std::fs::File::create(&x_path).unwrap()).unwrap();
    let (y, stderr) = predict(&weights, &x_path, &y_path, &[]);
    assert!(
        stderr.contains("preprocessing of") && stderr.contains("goes to the network as given"),
        "{key}: {stderr}"
    );
    // The assumption is printed, with the way to change it, exactly when it is made.
    let assumed = format!(
        "transform_input {}: assumed",
        if classes == 1000 { "on" } else { "off" }
    );
    assert_eq!(stderr.contains(&assumed), torchvision, "{key}: {stderr}");
    if torchvision {
        assert!(stderr.contains("--transform-input"), "{key}: {stderr}");
    }
    assert_eq!(y.shape(), &[2, classes]);
    let error = common::relative_to_largest(y.as_slice().unwrap(), &reference);
    assert!(
        error <= bar,
        "{key}: predict logits {error:.2e} from float64 (PyTorch float32: {floor:.2e})"
    );
}

#[test]
fn torchvision_googlenet_10_classes() {
    check("googlenet", 224, 10, true);
}

#[test]
fn torchvision_googlenet_1000_classes() {
    check("googlenet", 224, 1000, true);
}

#[test]
fn torchvision_inception_v3_10_classes() {
    check("inception-v3", 299, 10, true);
}

#[test]
fn torchvision_inception_v3_1000_classes() {
    check("inception-v3", 299, 1000, true);
}

#[test]
fn timm_inception_v4_10_classes() {
    check("inception-v4", 299, 10, false);
}

#[test]
fn timm_inception_v4_1000_classes() {
    check("inception-v4", 299, 1000, false);
}

#[test]
fn timm_inception_resnet_v2_10_classes() {
    check("inception-resnet-v2", 299, 10, false);
}

#[test]
fn timm_inception_resnet_v2_1000_classes() {
    check("inception-resnet-v2", 299, 1000, false);
}

/// `--transform-input` overrides the assumption (and nothing is printed as assumed), and
/// `--normalize-input` treats the tensor as [0, 1] images: the library's normalization first, named
/// on stderr, giving the image route's logits.
#[test]
fn flags_change_what_the_tensor_gets() {
    let f = Fixture::open("tensor_input");
    let dir = TempDir::new("tensor-flags");
    let weights = dir.join("w.safetensors");
    common::write_state_dict(&f, "googlenet/10", &weights);
    let x = input(224).mapv(|v| (v + 2.0) / 4.0); // in [0, 1)
    let x_path = dir.join("x.npy");
    x.write_npy(std::fs::File::create(&x_path).unwrap()).unwrap();
    let y_path = dir.join("y.npy");
    let mut classifier = Classifier::from_safetensors(None, &weights).unwrap();

    let (y, stderr) = predict(&weights, &x_path, &y_path, &["--transform-input", "true"]);
    assert!(!stderr.contains("assumed"), "{stderr}");
    assert!(
        stderr.contains("transform_input (part of the model) runs first"),
        "{stderr}"
    );
    classifier.set_transform_input(true).unwrap();
    assert_eq!(y, classifier.forward_tensor(x.view()).unwrap());

    let (y, stderr) = predict(
        &weights,
        &x_path,
        &y_path,
        &["--transform-input", "false", "--normalize-input"],
    );
    assert!(
        stderr.contains("--normalize-input") && stderr.contains("0.485"),
        "{stderr}"
    );
    classifier.set_transform_input(false).unwrap();
    let images = classifier.forward_images(x.view()).unwrap();
    assert_eq!(y, images);
    assert_ne!(images, classifier.forward_tensor(x.view()).unwrap());
}
