//! Export then import: every model of the zoo comes back from its ONNX file as a graph that computes
//! the same bits as the native one (same layers, same plan), and the file is a well-formed ONNX model
//! by the parts a reader checks (one input with a symbolic batch, initializers under PyTorch's names).
//! That ONNX Runtime gives the same logits is checked by `fixtures/generate_onnx.py` (`onnx_export`).

mod common;

use std::collections::HashMap;
use std::path::Path;

use incept::graph::{Executor, Mode};
use incept::models::{self, Model};
use incept::tensor::Images;

/// Each model at a size that keeps the test quick but exercises every block (the 299 models' reduction
/// blocks need 75 at least).
const MODELS: &[(&str, usize)] = &[
    ("googlenet-d2l", 96),
    ("googlenet-bn", 96),
    ("inception-v2", 96),
    ("inception-tf-cifar", 32),
    ("inception-v3", 107),
    ("googlenet", 64),
    ("inception-v4", 107),
    ("inception-resnet-v2", 107),
];

fn logits(model: Model, x: &[f32], n: usize) -> Vec<f32> {
    let per_image = x.len() / n;
    let mut exec = Executor::new(model, n).unwrap();
    exec.forward(Images::dense(x, n, per_image), Mode::Eval).unwrap();
    exec.output_vec()
}

#[test]
fn every_model_comes_back_from_onnx_with_the_same_bits() {
    for &(name, size) in MODELS {
        let mut config = models::default_config(name).unwrap();
        config.size = [size, size];
        // Export writes the eval path; auxiliary heads read its nodes and so change their plan.
        config.aux_heads = false;
        let graph = models::build(name, config).unwrap();
        let params = common::hashed_params(&graph);
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
        let x: Vec<f32> = (0..n * graph.input_shape().iter().product::<usize>())
            .map(|i| ((i * 37) % 101) as f32 / 101.0 - 0.5)
            .collect();
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
