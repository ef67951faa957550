//! Export then import: every model of the zoo comes back from its ONNX file as a graph that computes
//! the same bits as the native one (same layers, same plan), and the file is a well-formed ONNX model
//! by the parts a reader checks (one input with a symbolic batch, initializers under PyTorch's names).
//! That ONNX Runtime gives the same logits is checked by `fixtures/generate_onnx.py` (`onnx_export`).

mod common;

use std::collections::HashMap;
use std::path::Path;

use incept::graph::{Executor, Mode};
use incept::models::Model;
use incept::tensor::Images;

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
        let eval_nodes = |g: &incept::graph::Graph| {
            let mut needed = vec![false; g.nodes.len()];
            needed[g.output] = true;
            for id in (0..g.nodes.len()).rev() {
                if needed[id] {
                    g.nodes[id].inputs.iter().for_each(|&i| needed[i] = true);
                }
            }
            needed.iter().filter(|&&b| b).count()
        };
        assert_eq!(imported.graph.nodes.len(), eval_nodes(&graph), "{name}: nodes");
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
