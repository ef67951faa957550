//! The models and input the ONNX tests and `examples/export_zoo.rs` share.

use super::hashed_params;

/// The models the ONNX tests export and import, each at a size that keeps them quick but runs every
/// block (the 299 models' reduction blocks need 75 at least); `examples/export_zoo.rs` writes the same
/// files for `fixtures/generate_onnx.py`.
pub const ONNX_MODELS: &[(&str, usize)] = &[
    ("googlenet-d2l", 96),
    ("googlenet-bn", 96),
    ("inception-v2", 96),
    ("inception-tf-cifar", 32),
    ("inception-v3", 107),
    ("googlenet", 64),
    ("inception-v4", 107),
    ("inception-resnet-v2", 107),
];

/// The ONNX fixtures' input, `n` images of `per_image` values that both sides compute.
pub fn onnx_input(n: usize, per_image: usize) -> Vec<f32> {
    (0..n * per_image)
        .map(|i| ((i * 37) % 101) as f32 / 101.0 - 0.5)
        .collect()
}

/// Model `name` at `size` as the ONNX tests build it: 10 classes, no auxiliary heads (export writes the
/// eval path; auxiliary heads read its nodes and so change their plan), hashed weights.
pub fn onnx_model(name: &str, size: usize) -> incept::models::Model {
    let mut config = incept::models::default_config(name).unwrap();
    config.size = [size, size];
    config.aux_heads = false;
    let graph = incept::models::build(name, config).unwrap();
    let params = hashed_params(&graph);
    incept::models::Model { graph, params }
}

/// [`onnx_model`] quantized to int8: MinMax ranges measured on `onnx_input(4, ..)`.
pub fn onnx_int8_model(name: &str, size: usize) -> incept::int8::QuantizedNetwork {
    use incept::int8::{CalibrationMethod, QuantizedNetwork, Ranges};
    let model = onnx_model(name, size);
    let images = onnx_input(4, model.graph.input_shape().iter().product());
    let mut exec = incept::graph::Executor::new(model.clone(), 4).unwrap();
    let ranges = Ranges::measure(&mut exec, &images, CalibrationMethod::MinMax).unwrap();
    QuantizedNetwork::new(&model.graph, &model.params, &ranges).unwrap()
}
