//! Convolution forward and backward on every distinct convolution shape of googlenet-d2l (batch 128,
//! 1×96×96 input), with every algorithm that can run it, reported as FLOP/s: criterion's "elem/s" here
//! counts floating-point operations (2 per multiply-add). Backward is the input gradient plus the
//! weight gradient (twice the forward's work); the bias gradient is in the time, not in the count.
//! Buffers are allocated once, outside the timed loop, as the executor does.
//!
//! `cargo bench --bench conv` (all), `cargo bench --bench conv -- "3x3"` (a subset); compare with
//! `../shared/peers/bench_torch.py layers` run the same day.

use std::collections::BTreeSet;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use incept::graph::Layer;
use incept::models;
use incept::ops::conv::{self, Conv2d, ConvAlgo, ConvGeometry};
use incept::tensor::{Images, ImagesMut};

const BATCH: usize = 128;

/// Every distinct (convolution, input shape) of a model, in network order, with a readable name.
fn model_convs(model: &str) -> Vec<(String, Conv2d, ConvGeometry)> {
    let graph = models::build(model, models::default_config(model).expect("known model")).expect("model builds");
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for node in &graph.nodes {
        let Layer::Conv { conv, .. } = &node.layer else {
            continue;
        };
        let [c, h, w] = graph.nodes[node.inputs[0]].shape;
        let g = conv.geometry([BATCH, c, h, w]).expect("model geometry is valid");
        if !seen.insert(format!("{g}")) {
            continue;
        }
        let [kh, kw] = conv.kernel;
        let name = format!(
            "{model} {} {kh}x{kw}/{} {}->{} @{h}",
            node.name, conv.stride[0], conv.in_channels, conv.out_channels
        );
        out.push((name, conv.clone(), g));
    }
    out
}

fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.f32() - 0.5).collect()
}

fn conv_layers(c: &mut Criterion) {
    for (name, conv, g) in model_convs("googlenet-d2l") {
        let (in_len, out_len) = (g.input_image_len(), g.output_image_len());
        let x = values(BATCH * in_len, 1);
        let w = values(conv.weight_shape().iter().product(), 2);
        let b = vec![0.0; conv.out_channels];
        let dy = values(BATCH * out_len, 3);
        let mut y = vec![0.0; BATCH * out_len];
        let mut dx = vec![0.0; BATCH * in_len];
        let mut dw = vec![0.0; w.len()];
        let mut db = vec![0.0; b.len()];

        let mut group = c.benchmark_group(format!("conv {name} b{BATCH}"));
        group.sample_size(10);
        let algos = [ConvAlgo::Gemm1x1, ConvAlgo::Winograd, ConvAlgo::Im2colGemm];
        for algo in algos.into_iter().filter(|a| a.supports(&g)) {
            let label = format!("{algo:?}");
            group.throughput(Throughput::Elements(g.forward_flops()));
            group.bench_function(BenchmarkId::new("forward", &label), |bench| {
                bench.iter(|| {
                    let mut y = ImagesMut::dense(&mut y, BATCH, out_len);
                    conv::forward_images(&g, algo, Images::dense(&x, BATCH, in_len), &w, Some(&b), &mut y);
                })
            });
            group.throughput(Throughput::Elements(2 * g.forward_flops()));
            group.bench_function(BenchmarkId::new("backward", &label), |bench| {
                bench.iter(|| {
                    let dy = Images::dense(&dy, BATCH, out_len);
                    let mut dx = ImagesMut::dense(&mut dx, BATCH, in_len);
                    conv::backward_input_images(&g, algo, &w, dy, &mut dx);
                    conv::backward_weight_images(&g, algo, Images::dense(&x, BATCH, in_len), dy, &mut dw);
                    conv::bias_grad(dy, g.out_channels, g.output_pixels(), &mut db);
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, conv_layers);
criterion_main!(benches);
