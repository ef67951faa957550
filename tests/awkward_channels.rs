//! Regression test for channel counts that are not multiples of 8 or 16 (1, 3, 7, 13, 182, 191) in every
//! layer kind the batch-norm models have, in training mode, against float64 PyTorch
//! (`Awkward` in `fixtures/generate_family.py`): the loss, every value of every parameter gradient, and
//! the running statistics after the batch.
//!
//! The network: conv 3×3 3→13 + BN + ReLU on 9×9 maps; `InceptionBN(13, 7, 182, 13, 1, 3, 191)` (a 1-channel
//! 1×1 and a 5×5 conv with 1 input channel, a 182-channel reduce, a max-pool branch into 191 channels);
//! max pool 3×3/2 to 4×4; `InceptionBN(214, 1, 13, 191, 3, 7, 182)`; max pool 2×2/2 to 2×2 maps (where
//! small-map GEMMs group the images); `InceptionBN(381, 191, 3, 13, 7, 1, 182)`; global average pool and
//! a linear layer. Batch of 4, a batch PyTorch itself finds well conditioned (see `common/parity.rs`).

mod common;

use common::fixture::Fixture;
use common::parity::{self, Limits, values};
use common::{assert_state_dict_names, hashed_params};
use incept::geometry::Padding;
use incept::graph::{Executor, Graph, GraphBuilder, Mode};
use incept::microkernel::Isa;
use incept::models::{Model, inception_bn_block};
use incept::ops::conv::{Conv2d, ConvAlgo};
use incept::ops::pool::MaxPool2d;
use incept::tensor::Images;

/// `Awkward` with PyTorch's names (`net.0.0.weight`, `net.1.branch1x1.0.weight`, ..., `net.8.bias`).
fn awkward() -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("input", [3, 9, 9]).unwrap();
    let stem = Conv2d::new(3, 13, [3, 3]).with_padding(Padding::symmetric(1, 1));
    let x = b.conv("net.0.0", x, stem, true, false).unwrap();
    let x = b.batch_norm("net.0.1", x, 1e-3, true).unwrap();
    let x = inception_bn_block(&mut b, "net.1", x, (7, (182, 13), (1, 3), 191)).unwrap();
    let x = b.max_pool("net.2", x, MaxPool2d::new([3, 3], [2, 2])).unwrap();
    let x = inception_bn_block(&mut b, "net.3", x, (1, (13, 191), (3, 7), 182)).unwrap();
    let x = b.max_pool("net.4", x, MaxPool2d::new([2, 2], [2, 2])).unwrap();
    let x = inception_bn_block(&mut b, "net.5", x, (191, (3, 13), (7, 1), 182)).unwrap();
    let x = b.global_avg_pool("net.6", x).unwrap();
    let x = b.flatten("net.7", x).unwrap();
    let x = b.linear("net.8", x, 10, true).unwrap();
    b.build(x).unwrap()
}

fn model(f: &Fixture) -> Model {
    let graph = awkward();
    assert_state_dict_names(&graph, f, "awkward");
    let params = hashed_params(&graph);
    Model { graph, params }
}

#[test]
fn awkward_channel_counts_train_as_float64_pytorch() {
    let f = Fixture::open("awkward");
    assert!(
        parity::conditioned(&f),
        "the awkward fixture's batch must be well conditioned"
    );
    let compared = parity::training_batch_matches("awkward", &f, model(&f), Limits::Float32(1e-4));
    let worst = compared
        .iter()
        .max_by(|a, b| (a.err / a.limit).total_cmp(&(b.err / b.limit)))
        .unwrap();
    let largest = compared
        .iter()
        .filter(|c| !c.name.contains("running") && c.limit < 10.0)
        .max_by(|a, b| a.err.total_cmp(&b.err))
        .unwrap();
    eprintln!(
        "awkward channels, one training batch vs PyTorch float64: {} tensors (every value), worst {} at {:.2e} (limit {:.1e}); largest gradient error {} {:.2e}",
        compared.len(),
        worst.name,
        worst.err,
        worst.limit,
        largest.name,
        largest.err
    );
}

/// Every convolution algorithm, forced on each layer it can run, gives PyTorch's gradients too (the
/// factorized 1×k / k×1 path has no layer here; inception-v3's tests and the conv tests cover it).
#[test]
fn awkward_channel_counts_train_as_pytorch_with_every_conv_algorithm() {
    let f = Fixture::open("awkward");
    let algos = [
        ConvAlgo::Naive,
        ConvAlgo::Im2colGemm,
        ConvAlgo::Gemm1x1,
        ConvAlgo::Winograd,
        ConvAlgo::Direct,
    ];
    for algo in algos {
        let mut m = model(&f);
        let shapes: Vec<[usize; 3]> = m.graph.nodes.iter().map(|n| n.shape).collect();
        let mut forced = 0;
        for node in &mut m.graph.nodes {
            let [c, h, w] = node.inputs.first().map_or([0; 3], |&i| shapes[i]);
            if let incept::graph::Layer::Conv { conv, .. } = &mut node.layer {
                if algo.supports(&conv.geometry([4, c, h, w]).unwrap()) {
                    conv.algo = algo;
                    forced += 1;
                }
            }
        }
        assert!(forced > 0, "{algo:?} runs none of the layers");
        // The microkernel's paths on every instruction set this CPU has; the GEMM paths on the best.
        let isas: Vec<Isa> = match algo {
            ConvAlgo::Direct => Isa::ALL.into_iter().filter(|isa| isa.available()).collect(),
            _ => vec![Isa::best()],
        };
        for isa in isas {
            parity::training_batch_matches_on(
                &format!("awkward ({algo:?} on {forced} layers, {isa:?})"),
                &f,
                m.clone(),
                Limits::Float32(1e-4),
                isa,
            );
        }
    }
}

/// Eval mode with the generator's calibrated running statistics: the logits match float64 PyTorch.
#[test]
fn awkward_channel_counts_evaluate_as_float64_pytorch() {
    let f = Fixture::open("awkward");
    let mut m = model(&f);
    for (spec, value) in m.graph.params.iter().zip(&mut m.params) {
        if !spec.trainable {
            *value = values(&f, &format!("calibrated/{}", spec.name));
        }
    }
    let len = 3 * 9 * 9;
    let x = values(&f, "x");
    let mut exec = Executor::new(m, 2).unwrap();
    exec.forward(Images::dense(&x, 2, len), Mode::Eval).unwrap();
    let err = common::rel_l2(&exec.output_vec(), &values(&f, "logits"));
    let limit = 1e-5f64.max(3.0 * values(&f, "logits_f32_error")[0] as f64);
    assert!(err <= limit, "awkward eval logits: {err:.2e} > {limit:.1e}");
}
