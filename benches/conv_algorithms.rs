//! Convolution forward and backward on every distinct convolution shape of googlenet-d2l (batch 128,
//! 1×96×96 input) and on one layer of each kernel kind of inception-v3 (batch 32, the chapter's timing
//! batch; the full list follows the model), with every algorithm that can run it, reported as FLOP/s: criterion's "elem/s" here
//! counts floating-point operations (2 per multiply-add). Backward is the input gradient plus the
//! weight gradient (twice the forward's work); the bias gradient is in the time, not in the count.
//! Buffers are allocated once, outside the timed loop, as the executor does.
//!
//! The direct convolution on the blocked layout (`DirectBlocked`, forward only so far) is timed beside
//! the others on the same layers.
//!
//! `cargo bench --bench conv_algorithms` (all), `cargo bench --bench conv_algorithms -- "3x3"` (a subset); compare with
//! `../shared/peers/bench_torch.py layers` run the same day.

use std::collections::BTreeSet;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use incept::Padding;
use incept::blocked::{self, Halo};
use incept::graph::Layer;
use incept::microkernel::Isa;
use incept::models;
use incept::ops::conv::direct::{self, PackedConv};
use incept::ops::conv::{self, Conv2d, ConvAlgo, ConvGeometry};
use incept::tensor::{Images, ImagesMut};
use incept::workspace::Workspace;

const BATCH: usize = 128;
const V3_BATCH: usize = 32;

/// One inception-v3 (torchvision) layer: name, in, out, map size, kernel, stride, pads `[h, w]`.
struct V3Layer(&'static str, usize, usize, usize, [usize; 2], usize, [usize; 2]);

/// One layer of each kernel kind of inception-v3.
const V3_LAYERS: [V3Layer; 8] = [
    V3Layer("Mixed_6b.branch7x7_2 1x7", 128, 128, 17, [1, 7], 1, [0, 3]),
    V3Layer("Mixed_6b.branch7x7_3 7x1", 128, 192, 17, [7, 1], 1, [3, 0]),
    V3Layer("Mixed_7b.branch3x3_2a 1x3", 384, 384, 8, [1, 3], 1, [0, 1]),
    V3Layer("Mixed_7b.branch3x3_2b 3x1", 384, 384, 8, [3, 1], 1, [1, 0]),
    V3Layer("Mixed_5b.branch3x3dbl_2 3x3", 64, 96, 35, [3, 3], 1, [1, 1]),
    V3Layer("Mixed_5b.branch5x5_2 5x5", 48, 64, 35, [5, 5], 1, [2, 2]),
    V3Layer("Mixed_6a.branch3x3 3x3/2", 288, 384, 35, [3, 3], 2, [0, 0]),
    V3Layer("Mixed_7b.branch1x1 1x1", 1280, 320, 8, [1, 1], 1, [0, 0]),
];

fn v3_convs() -> Vec<(String, Conv2d, ConvGeometry)> {
    V3_LAYERS
        .iter()
        .map(|&V3Layer(name, cin, cout, size, kernel, stride, [ph, pw])| {
            let conv = Conv2d::new(cin, cout, kernel)
                .with_stride([stride, stride])
                .with_padding(Padding::symmetric(ph, pw));
            let g = conv
                .geometry([V3_BATCH, cin, size, size])
                .expect("v3 geometry is valid");
            (format!("inception-v3 {name} {cin}->{cout} @{size}"), conv, g)
        })
        .collect()
}

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

/// A 1×1 convolution that is one square 1024³ GEMM: the ceiling the GEMM-based layers work under.
fn gemm_ceiling() -> (String, Conv2d, ConvGeometry) {
    let conv = Conv2d::new(1024, 1024, [1, 1]);
    let g = conv.geometry([1, 1024, 32, 32]).expect("valid geometry");
    ("gemm ceiling 1x1 1024->1024 @32 (one 1024^3 GEMM)".into(), conv, g)
}

fn conv_layers(c: &mut Criterion) {
    let layers = model_convs("googlenet-d2l").into_iter().chain(v3_convs());
    for (name, conv, g) in layers.chain([gemm_ceiling()]) {
        let batch = g.batch;
        let (in_len, out_len) = (g.input_image_len(), g.output_image_len());
        let x = values(batch * in_len, 1);
        let w = values(conv.weight_shape().iter().product(), 2);
        let b = vec![0.0; conv.out_channels];
        let dy = values(batch * out_len, 3);
        let mut y = vec![0.0; batch * out_len];
        let mut dx = vec![0.0; batch * in_len];
        let mut dw = vec![0.0; w.len()];
        let mut db = vec![0.0; b.len()];

        let mut group = c.benchmark_group(format!("conv {name} b{batch}"));
        group.sample_size(10);
        let algos = [
            ConvAlgo::Gemm1x1,
            ConvAlgo::Winograd,
            ConvAlgo::Factorized,
            ConvAlgo::Im2colGemm,
        ];
        for algo in algos.into_iter().filter(|a| a.supports(&g)) {
            let label = format!("{algo:?}");
            // Sized up front, as an executor sizes its own: no timed call grows it.
            let mut ws = Workspace::with_size(conv::workspace(&g, algo));
            group.throughput(Throughput::Elements(g.forward_flops()));
            group.bench_function(BenchmarkId::new("forward", &label), |bench| {
                bench.iter(|| {
                    let mut y = ImagesMut::dense(&mut y, batch, out_len);
                    conv::forward_images(
                        &g,
                        algo,
                        Images::dense(&x, batch, in_len),
                        &w,
                        Some(&b),
                        &mut y,
                        &mut ws,
                    );
                })
            });
            group.throughput(Throughput::Elements(2 * g.forward_flops()));
            group.bench_function(BenchmarkId::new("backward", &label), |bench| {
                bench.iter(|| {
                    let dy = Images::dense(&dy, batch, out_len);
                    let mut dx = ImagesMut::dense(&mut dx, batch, in_len);
                    conv::backward_input_images(&g, algo, &w, dy, &mut dx, &mut ws);
                    conv::backward_weight_images(&g, algo, Images::dense(&x, batch, in_len), dy, &mut dw, &mut ws);
                    conv::bias_grad(dy, g.out_channels, g.output_pixels(), &mut db);
                })
            });
        }
        // The compute core's direct convolution on the blocked layout (forward only so far): its input
        // already blocked with the halo, as the engine will keep activations, weights packed once.
        let packed = PackedConv::new(&g, &w, Some(&b));
        let halo = direct::halo(&g);
        let xb = blocked::batch_from_nchw(&x, g.in_channels, [g.h.input, g.w.input], halo);
        let mut yb = vec![0.0; batch * blocked::image_len(g.out_channels, [g.h.output, g.w.output], Halo::default())];
        group.throughput(Throughput::Elements(g.forward_flops()));
        let label = format!("DirectBlocked {:?}", Isa::best());
        group.bench_function(BenchmarkId::new("forward", &label), |bench| {
            bench.iter(|| direct::forward_blocked(&packed, &xb, &mut yb, false, false, Isa::best()))
        });
        // Its weight gradient: the pixels as the reduction, into the packed layout.
        let dyb_plain = blocked::batch_from_nchw(&dy, g.out_channels, [g.h.output, g.w.output], Halo::default());
        let mut dw_packed = vec![0.0; packed.packed_weights().len()];
        group.bench_function(BenchmarkId::new("weight gradient", &label), |bench| {
            bench.iter(|| packed.add_weight_grad_blocked(&xb, &dyb_plain, &mut dw_packed, Isa::best()))
        });
        // Its input gradient (stride 1): the same kernel over dy with flipped, transposed weights.
        if let Some(back) = PackedConv::input_grad(&g, &w) {
            let bg = *back.geometry();
            let dy_halo = direct::halo(&bg);
            let dyb = blocked::batch_from_nchw(&dy, bg.in_channels, [bg.h.input, bg.w.input], dy_halo);
            let mut dxb = vec![0.0; batch * blocked::image_len(g.in_channels, [g.h.input, g.w.input], Halo::default())];
            group.bench_function(BenchmarkId::new("input gradient", &label), |bench| {
                bench.iter(|| direct::forward_blocked(&back, &dyb, &mut dxb, true, false, Isa::best()))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, conv_layers);
criterion_main!(benches);
