//! Convolution forward and backward on real googlenet-d2l layer shapes (batch 128, 1×96×96 input),
//! reported as FLOP/s: criterion's "elem/s" here counts floating-point operations (2 per multiply-add).
//! Backward is the input gradient plus the weight gradient (twice the forward's work); the bias
//! gradient is included in the time but not in the count.
//!
//! `cargo bench --bench conv`; compare with `../shared/peers/bench_torch.py layers` run the same day.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use incept::Padding;
use incept::ndarray::{Array1, Array4};
use incept::ops::conv::Conv2d;

struct Layer {
    name: &'static str,
    conv: Conv2d,
    input: [usize; 4],
}

fn layers() -> Vec<Layer> {
    let pad = |p| Padding::symmetric(p, p);
    vec![
        Layer {
            name: "b1 7x7/2 1->64 @96",
            conv: Conv2d::new(1, 64, [7, 7]).with_stride([2, 2]).with_padding(pad(3)),
            input: [128, 1, 96, 96],
        },
        Layer {
            name: "b2 3x3 64->192 @24",
            conv: Conv2d::new(64, 192, [3, 3]).with_padding(pad(1)),
            input: [128, 64, 24, 24],
        },
        Layer {
            name: "b3 3x3 96->128 @12",
            conv: Conv2d::new(96, 128, [3, 3]).with_padding(pad(1)),
            input: [128, 96, 12, 12],
        },
        Layer {
            name: "b3 5x5 16->32 @12",
            conv: Conv2d::new(16, 32, [5, 5]).with_padding(pad(2)),
            input: [128, 16, 12, 12],
        },
        Layer {
            name: "b4 1x1 480->192 @6",
            conv: Conv2d::new(480, 192, [1, 1]),
            input: [128, 480, 6, 6],
        },
    ]
}

fn random(shape: [usize; 4], seed: u64) -> Array4<f32> {
    let mut rng = fastrand::Rng::with_seed(seed);
    Array4::from_shape_simple_fn(shape, || rng.f32() - 0.5)
}

fn conv_layers(c: &mut Criterion) {
    for layer in layers() {
        let conv = &layer.conv;
        let g = conv.geometry(layer.input).expect("bench geometry is valid");
        let x = random(layer.input, 1);
        let w = random(conv.weight_shape(), 2);
        let b = Array1::<f32>::zeros(conv.out_channels);
        let dy = random(g.output_shape(), 3);
        let mut dw = Array4::zeros(conv.weight_shape());
        let mut db = Array1::zeros(conv.out_channels);

        let mut group = c.benchmark_group(format!("conv {} b{}", layer.name, layer.input[0]));
        group.sample_size(10);
        group.throughput(Throughput::Elements(g.forward_flops()));
        group.bench_function(BenchmarkId::new("forward", "auto"), |bench| {
            bench.iter(|| conv.forward(x.view(), w.view(), Some(b.view())).unwrap())
        });
        group.throughput(Throughput::Elements(2 * g.forward_flops()));
        group.bench_function(BenchmarkId::new("backward", "auto"), |bench| {
            bench.iter(|| {
                let dx = conv.backward_input(w.view(), dy.view(), layer.input).unwrap();
                conv.backward_weight(x.view(), dy.view(), dw.view_mut()).unwrap();
                conv.backward_bias(dy.view(), db.view_mut()).unwrap();
                dx
            })
        });
        group.finish();
    }
}

criterion_group!(benches, conv_layers);
criterion_main!(benches);
