//! Inference in bf16 stays as close to float64 as PyTorch's bf16 does: the four library models with the
//! hashed weights and input of `fixtures/generate_tensor_input.py` (10-class heads; inception-v3, -v4 and
//! inception-resnet-v2 at 299×299), run with `--precision bf16` through the library's classifier and
//! through `incept predict`, their logits no further from PyTorch's float64 logits than twice PyTorch's
//! `torch.autocast` bf16 logits are (`fixtures/generate_bf16_logits.py`).

mod common;

use std::process::Command;

use common::TempDir;
use common::fixture::Fixture;
use incept::classifier::Classifier;
use incept::graph::Precision;
use incept::ndarray::{Array2, Array4};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};

/// Our distance from float64 over PyTorch bf16's, at most.
const TIMES_PYTORCH: f64 = 2.0;

/// `generate_tensor_input.py`'s input: 2 images at `size` with values 4u - 2.
fn input(size: usize) -> Array4<f32> {
    let shape = [2, 3, size, size];
    let values = common::splitmix_uniform(7777, shape.iter().product())
        .map(|u| (4.0 * u - 2.0) as f32)
        .collect();
    Array4::from_shape_vec(shape, values).unwrap()
}

fn check(model: &str, size: usize) {
    let f = Fixture::open("tensor_input");
    let bf = Fixture::open("bf16_logits");
    let key = format!("{model}/10");
    let dir = TempDir::new(&format!("bf16-{model}"));
    let weights = dir.join("w.safetensors");
    common::write_state_dict(&f, &key, &weights);
    let reference = f.named_f64(&format!("{key}/logits64"));
    let torch = common::relative_to_largest(bf.named(&format!("{key}/logits_bf16")).as_slice().unwrap(), &reference);
    let x = input(size);

    let mut classifier = Classifier::from_safetensors(None, &weights).unwrap();
    let f32_error = common::relative_to_largest(
        classifier.forward_tensor(x.view()).unwrap().as_slice().unwrap(),
        &reference,
    );
    classifier.set_precision(Precision::Bf16).unwrap();
    assert_eq!(classifier.precision(), Some(Precision::Bf16));
    let logits = classifier.forward_tensor(x.view()).unwrap();
    let error = common::relative_to_largest(logits.as_slice().unwrap(), &reference);
    eprintln!(
        "{key}: incept bf16 {error:.2e}, PyTorch bf16 {torch:.2e}, incept float32 {f32_error:.2e} (relative to float64)"
    );
    assert!(
        error <= TIMES_PYTORCH * torch,
        "{key}: bf16 logits {error:.2e} from float64, more than {TIMES_PYTORCH} times PyTorch bf16's {torch:.2e}"
    );

    // The command: the same logits, and it says it ran in bf16.
    let (xp, yp) = (dir.join("x.npy"), dir.join("y.npy"));
    x.write_npy(std::fs::File::create(&xp).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_incept"))
        .args(["predict", "--precision", "bf16", "--weights", weights.to_str().unwrap()])
        .args(["--input", xp.to_str().unwrap(), "--output", yp.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("convolutions in bf16"), "{stderr}");
    let predicted = Array2::<f32>::read_npy(std::fs::File::open(&yp).unwrap()).unwrap();
    assert_eq!(
        predicted, logits,
        "{key}: incept predict --precision bf16 against the library"
    );
}

#[test]
fn googlenet_in_bf16() {
    check("googlenet", 224);
}

#[test]
fn inception_v3_in_bf16() {
    check("inception-v3", 299);
}

#[test]
fn inception_v4_in_bf16() {
    check("inception-v4", 299);
}

#[test]
fn inception_resnet_v2_in_bf16() {
    check("inception-resnet-v2", 299);
}
