//! Export then import: every model of the zoo comes back from its ONNX file as a graph that computes
//! the same bits as the native one (same layers, same plan), and the file is a well-formed ONNX model
//! by the parts a reader checks (one input with a symbolic batch, initializers under PyTorch's names).
//! That ONNX Runtime gives the same logits is checked by `fixtures/generate_onnx.py` (`onnx_export`).

mod common;

use std::collections::HashMap;
use std::path::Path;

use incept::graph::{Executor, Mode};
use incept::models::Model;
use incept::onnx::proto::ModelProto;
use incept::tensor::Images;
use prost::Message;

fn logits(model: Model, x: &[f32], n: usize) -> Vec<f32> {
    let per_image = x.len() / n;
    let mut exec = Executor::new(model, n).unwrap();
    exec.forward(Images::dense(x, n, per_image), Mode::Eval).unwrap();
    exec.output_vec()
}

#[test]
fn every_model_comes_back_from_onnx_with_the_same_bits() {
    for &(name, size) in common::ONNX_MODELS {
        let Model { graph, params } = common::onnx_model(name, size);
        let metadata = HashMap::from([("model".to_string(), name.to_string())]);
        let bytes = incept::onnx::export(&graph, &params, &metadata, incept::onnx::DEFAULT_OPSET).unwrap();
        let imported = incept::onnx::import(&bytes, Path::new("round-trip.onnx"), None).unwrap();
        assert_eq!(imported.metadata, metadata, "{name}: metadata_props");
        assert_eq!(imported.graph.input_shape(), graph.input_shape(), "{name}: input");
        // Every parameter the eval output reads comes back under its name with its values.
        for (spec, values) in imported.graph.params.iter().zip(&imported.params) {
            let p = graph
                .params
                .iter()
                .position(|q| q.name == spec.name)
                .unwrap_or_else(|| panic!("{name}: {}", spec.name));
            assert_eq!(spec.shape, graph.params[p].shape, "{name}: {}", spec.name);
            assert_eq!(values, &params[p], "{name}: {}", spec.name);
        }
        let n = 2;
        let x = common::onnx_input(n, graph.input_shape().iter().product());
        let native = logits(
            Model {
                graph: graph.clone(),
                params,
            },
            &x,
            n,
        );
        let back = logits(
            Model {
                graph: imported.graph.clone(),
                params: imported.params.clone(),
            },
            &x,
            n,
        );
        assert_eq!(back, native, "{name}: logits after export and import");
        // The same nodes, ReLUs fused as before: as many as the native graph's eval path.
        let eval_nodes = graph.main_path().iter().filter(|&&on| on).count();
        assert_eq!(imported.graph.nodes.len(), eval_nodes, "{name}: nodes");
    }
}

/// ONNX Runtime ran the files `examples/export_zoo.rs` writes (`fixtures/generate_onnx.py`, after
/// `onnx.checker` passed each): its logits are incept's, to 1e-5 of the largest.
#[test]
fn onnx_runtime_gives_incepts_logits_on_every_exported_model() {
    let f = common::fixture::Fixture::open("onnx_export");
    for &(name, _) in common::ONNX_MODELS {
        assert!(f.metadata(name).contains("full_check passed"), "{name}: onnx.checker");
    }
    for &(name, size) in common::ONNX_MODELS {
        let model = common::onnx_model(name, size);
        let bytes = incept::onnx::export(
            &model.graph,
            &model.params,
            &metadata(name),
            incept::onnx::DEFAULT_OPSET,
        )
        .unwrap();
        assert_ran(&f, name, &bytes);
        let n = 2;
        let x = common::onnx_input(n, model.graph.input_shape().iter().product());
        let ours = logits(model, &x, n);
        let ort: Vec<f32> = f.tensor(name, "ort").iter().copied().collect();
        let largest = ort.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = ours.iter().zip(&ort).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) / largest;
        eprintln!("{name}: ONNX Runtime within {worst:.2e} of the largest logit");
        assert!(
            worst <= 1e-5,
            "{name}: ONNX Runtime's logits differ by {worst:.3e} of the largest"
        );
    }
}

fn metadata(name: &str) -> HashMap<String, String> {
    HashMap::from([("model".to_string(), name.to_string())])
}

/// Today's export writes the file ONNX Runtime ran, so the logits it gave still speak for it: the same
/// graph, and every initializer's bytes by their CRC-32 and length (the fixture stores those, not the
/// weights).
fn assert_ran(f: &common::fixture::Fixture, name: &str, bytes: &[u8]) {
    let digested = |bytes: &[u8], digest: bool| {
        let mut m = ModelProto::decode(bytes).unwrap();
        if digest {
            for init in &mut m.graph.as_mut().unwrap().initializer {
                let raw = init.raw_data.take().unwrap_or_default();
                let mut crc = flate2::Crc::new();
                crc.update(&raw);
                init.raw_data = Some([&crc.sum().to_le_bytes()[..], &(raw.len() as u64).to_le_bytes()].concat());
            }
        }
        m.producer_version = None;
        m
    };
    let ran = digested(&f.bytes(&format!("{name}/graph")).0, false);
    assert!(
        digested(bytes, true) == ran,
        "{name}: export no longer writes the graph ONNX Runtime ran"
    );
}

/// The int8 networks written as QDQ: ONNX Runtime ran every convolution of each as its integer
/// QLinearConv (the fixture script checked its optimized graph), and gave incept's int8 logits:
/// - to 1e-5 (relative L2) on five of the eight (measured: 4e-7 to 1.2e-6): the same bytes throughout;
/// - on googlenet-bn, inception-v4 and inception-resnet-v2, within ORT's own spread: its distance
///   between running the same file with its integer kernels and op by op in float as the standard
///   defines QDQ (measured: 0.68, 0.74 and 0.97 of it). A byte that rounds the other way in one layer
///   moves these random deep nets' logits by about that much; which layer it is (the byte average pools
///   these three have, inception-resnet-v2's residual sums, which ORT runs in float) is not traced yet.
#[test]
fn onnx_runtime_runs_incepts_int8_exports_in_int8_with_incepts_answers() {
    let f = common::fixture::Fixture::open("onnx_export");
    let spread = ["googlenet-bn", "inception-v4", "inception-resnet-v2"];
    for &(name, size) in common::ONNX_MODELS {
        let case = format!("{name}-int8");
        let meta: serde_json::Value = serde_json::from_str(f.metadata(&case)).unwrap();
        assert_eq!(
            meta["qlinear_convolutions"], meta["convolutions"],
            "{case}: ORT ran a float convolution"
        );
        let network = common::onnx_int8_model(name, size);
        let bytes = incept::onnx::export_int8(&network, &metadata(name), incept::onnx::DEFAULT_OPSET).unwrap();
        assert_ran(&f, &case, &bytes);
        let n = 2;
        let model = common::onnx_model(name, size);
        let x = common::onnx_input(n, model.graph.input_shape().iter().product());
        let int8 = network.forward(&x).unwrap();
        let float = logits(model, &x, n);
        let ort: Vec<f32> = f.tensor(&case, "ort").iter().copied().collect();
        let (to_ort, to_float) = (common::rel_l2(&ort, &int8), common::rel_l2(&int8, &float));
        eprintln!("{case}: ONNX Runtime int8 {to_ort:.2e} from incept int8, which is {to_float:.2e} from float32");
        let emulated: Vec<f32> = f.tensor(&case, "ort_emulated").iter().copied().collect();
        let bar = if spread.contains(&name) {
            common::rel_l2(&ort, &emulated)
        } else {
            1e-5
        };
        assert!(
            to_ort <= bar,
            "{case}: ORT's int8 logits are {to_ort:.3e} from incept's (bar {bar:.1e}); int8 is {to_float:.3e} from float32"
        );
    }
}
