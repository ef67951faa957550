//! Central-difference gradient checks of every hand-written backward: input and every parameter.
//!
//! Each check differentiates the scalar `L = sum(y * r)` (f64 sum, fixed random `r`), whose gradient with
//! respect to `y` is `r`, so the op's backward is fed `dy = r` and compared with `(L(v+h) - L(v-h)) / 2h`.
//!
//! Tolerances, relative to the largest analytic gradient magnitude:
//! - Ops linear in the perturbed variable (conv, linear, pools with a fixed argmax, concat, add, dropout,
//!   flatten): central differences have no truncation error there, so the only error is f32 rounding of
//!   the few outputs the perturbed element touches, each about `2^-24 * |y| / (2h)`; with `h = 1e-2`,
//!   |y| up to ~10 and tens of touched outputs adding at random that bounds the error near 1e-4.
//!   `LINEAR_TOL = 5e-4` sits above that bound (errors seen: at most ~1e-5) and three orders of magnitude
//!   below the O(1) errors that a wrong index, a missing term or a transposed weight produce.
//! - Smooth nonlinear ops (batch norm, softmax cross-entropy) add an `O(h^2)` truncation term, ~1e-4 on
//!   unit-scale inputs with `h = 1e-2`, so `SMOOTH_TOL = 1e-3`.
//! - Max pooling and ReLU are checked on well-separated inputs (see `common::well_separated`) with `h`
//!   below half the gap, so no perturbation crosses a kink.

mod common;

use common::{grad_check, project, random, random4, well_separated};
use incept::Padding;
use incept::ndarray::{Array1, Array2, Array4, Ix1, Ix2};
use incept::ops::activation::{Dropout, relu, relu_backward};
use incept::ops::batchnorm::BatchNorm2d;
use incept::ops::conv::{Conv2d, ConvAlgo};
use incept::ops::linear::Linear;
use incept::ops::loss::SoftmaxCrossEntropy;
use incept::ops::pool::{
    AvgPool2d, MaxPool2d, adaptive_avg_pool, adaptive_avg_pool_backward, global_avg_pool, global_avg_pool_backward,
};
use incept::ops::shape::{add_scaled, add_scaled_backward, concat_channels, flatten, flatten_backward, split_channels};

const LINEAR_TOL: f64 = 5e-4;
const SMOOTH_TOL: f64 = 1e-3;
const H: f32 = 1e-2;
const PROBES: usize = 64;

fn slice<D: incept::ndarray::Dimension>(a: &incept::ndarray::Array<f32, D>) -> &[f32] {
    a.as_slice().expect("test arrays are contiguous")
}

fn report(name: &str, errors: &[(&str, f64)], tol: f64) {
    for (what, err) in errors {
        assert!(*err <= tol, "{name}: {what} gradient error {err:.2e} > {tol:.0e}");
    }
    let list: Vec<String> = errors.iter().map(|(w, e)| format!("{w} {e:.1e}")).collect();
    eprintln!("{name}: {}", list.join(", "));
}

fn check_conv(conv: &Conv2d, input: [usize; 4], seed: u64) -> [(&'static str, f64); 3] {
    let mut x = random4(input, seed);
    let mut w = random4(conv.weight_shape(), seed + 1);
    let mut b = random(Ix1(conv.out_channels), seed + 2);
    let r = random4(conv.output_shape(input).unwrap(), seed + 3);
    let dx = conv.backward_input(w.view(), r.view(), input).unwrap();
    let mut dw = Array4::zeros(conv.weight_shape());
    conv.backward_weight(x.view(), r.view(), dw.view_mut()).unwrap();
    let mut db = Array1::zeros(conv.out_channels);
    conv.backward_bias(r.view(), db.view_mut()).unwrap();

    let (w0, b0, x0) = (w.clone(), b.clone(), x.clone());
    let y_of = |x: &Array4<f32>, w: &Array4<f32>, b: &Array1<f32>| {
        project(
            slice(&conv.forward(x.view(), w.view(), Some(b.view())).unwrap()),
            slice(&r),
        )
    };
    let ex = grad_check(x.as_slice_mut().unwrap(), slice(&dx), H, PROBES, |v| {
        y_of(&Array4::from_shape_vec(input, v.to_vec()).unwrap(), &w0, &b0)
    });
    let ew = grad_check(w.as_slice_mut().unwrap(), slice(&dw), H, PROBES, |v| {
        y_of(
            &x0,
            &Array4::from_shape_vec(conv.weight_shape(), v.to_vec()).unwrap(),
            &b0,
        )
    });
    let eb = grad_check(b.as_slice_mut().unwrap(), slice(&db), H, PROBES, |v| {
        y_of(&x0, &w0, &Array1::from_vec(v.to_vec()))
    });
    [("input", ex), ("weight", ew), ("bias", eb)]
}

#[test]
fn grad_conv2d_every_kernel_kind_and_algorithm() {
    let cases = [
        (
            Conv2d::new(3, 4, [3, 3]).with_padding(Padding::symmetric(1, 1)),
            [2, 3, 7, 6],
        ),
        (
            Conv2d::new(2, 3, [5, 5])
                .with_stride([2, 2])
                .with_padding(Padding::explicit(2, 1, 0, 2)),
            [2, 2, 9, 8],
        ),
        (
            Conv2d::new(1, 4, [7, 7])
                .with_stride([2, 2])
                .with_padding(Padding::symmetric(3, 3)),
            [2, 1, 11, 10],
        ),
        (
            Conv2d::new(4, 3, [1, 7]).with_padding(Padding::symmetric(0, 3)),
            [1, 4, 5, 9],
        ),
        (
            Conv2d::new(4, 3, [7, 1]).with_padding(Padding::symmetric(3, 0)),
            [1, 4, 9, 5],
        ),
        (Conv2d::new(3, 5, [1, 3]).with_padding(Padding::Same), [2, 3, 4, 7]),
        (Conv2d::new(3, 5, [3, 1]).with_padding(Padding::Same), [2, 3, 7, 4]),
        (
            Conv2d::new(3, 4, [3, 3])
                .with_stride([2, 2])
                .with_padding(Padding::Same),
            [2, 3, 8, 8],
        ),
        (Conv2d::new(5, 6, [1, 1]), [3, 5, 4, 5]),
        (
            Conv2d::new(2, 2, [3, 3])
                .with_dilation([2, 2])
                .with_padding(Padding::symmetric(2, 2)),
            [1, 2, 7, 7],
        ),
    ];
    for (i, (conv, input)) in cases.iter().enumerate() {
        let g = conv.geometry(*input).unwrap();
        let algos = [
            ConvAlgo::Naive,
            ConvAlgo::Im2colGemm,
            ConvAlgo::Gemm1x1,
            ConvAlgo::Winograd,
            ConvAlgo::Factorized,
            ConvAlgo::Direct,
        ];
        for algo in algos.into_iter().filter(|a| a.supports(&g)) {
            let conv = conv.clone().with_algo(algo);
            let name = format!("conv2d {algo:?} {}", conv.geometry(*input).unwrap());
            report(&name, &check_conv(&conv, *input, 10 * i as u64), LINEAR_TOL);
        }
    }
}

#[test]
fn grad_max_pool2d() {
    let cases = [
        (
            MaxPool2d::new([3, 3], [2, 2]).with_padding(Padding::symmetric(1, 1)),
            [2, 3, 9, 8],
        ),
        (MaxPool2d::new([3, 3], [2, 2]).with_ceil_mode(true), [1, 2, 10, 7]),
        (
            MaxPool2d::new([3, 3], [1, 1]).with_padding(Padding::symmetric(1, 1)),
            [2, 2, 5, 6],
        ),
        (MaxPool2d::new([2, 2], [2, 2]), [1, 3, 6, 8]),
        (MaxPool2d::new([3, 3], [2, 2]).with_padding(Padding::Same), [1, 2, 8, 7]),
    ];
    for (i, (pool, input)) in cases.iter().enumerate() {
        let len = input.iter().product();
        let mut x = Array4::from_shape_vec(*input, well_separated(len, i as u64)).unwrap();
        // Gap between neighbouring values is 2 / len; stay below half of it.
        let h = 0.4 / len as f32;
        let (y, cache) = pool.forward(x.view()).unwrap();
        let r = random4(*y.shape().first_chunk().unwrap(), 50 + i as u64);
        let dx = pool.backward(&cache, r.view()).unwrap();
        let err = grad_check(x.as_slice_mut().unwrap(), slice(&dx), h, 10_000, |v| {
            let x = Array4::from_shape_vec(*input, v.to_vec()).unwrap();
            project(slice(&pool.forward(x.view()).unwrap().0), slice(&r))
        });
        report(
            &format!("max_pool2d {pool:?} on {input:?}"),
            &[("input", err)],
            LINEAR_TOL,
        );
    }
}

#[test]
fn grad_avg_pool2d_and_global_average() {
    let cases = [
        (
            AvgPool2d::new([3, 3], [2, 2]).with_padding(Padding::symmetric(1, 1)),
            [2, 3, 9, 8],
        ),
        (
            AvgPool2d::new([3, 3], [2, 2])
                .with_padding(Padding::symmetric(1, 1))
                .with_count_include_pad(false),
            [1, 2, 9, 8],
        ),
        (
            AvgPool2d::new([3, 3], [2, 2])
                .with_ceil_mode(true)
                .with_padding(Padding::symmetric(1, 1)),
            [1, 2, 10, 7],
        ),
        (
            AvgPool2d::new([3, 3], [2, 2])
                .with_padding(Padding::Same)
                .with_count_include_pad(false),
            [1, 2, 8, 7],
        ),
        (AvgPool2d::new([2, 2], [2, 2]), [2, 2, 6, 6]),
    ];
    for (i, (pool, input)) in cases.iter().enumerate() {
        let mut x = random4(*input, i as u64);
        let y = pool.forward(x.view()).unwrap();
        let r = random4(*y.shape().first_chunk().unwrap(), 60 + i as u64);
        let dx = pool.backward(r.view(), *input).unwrap();
        let err = grad_check(x.as_slice_mut().unwrap(), slice(&dx), H, 10_000, |v| {
            let x = Array4::from_shape_vec(*input, v.to_vec()).unwrap();
            project(slice(&pool.forward(x.view()).unwrap()), slice(&r))
        });
        report(
            &format!("avg_pool2d {pool:?} on {input:?}"),
            &[("input", err)],
            LINEAR_TOL,
        );
    }
    let input = [2, 3, 5, 4];
    let mut x = random4(input, 70);
    let r = random4([2, 3, 1, 1], 71);
    let dx = global_avg_pool_backward(r.view(), input).unwrap();
    let err = grad_check(x.as_slice_mut().unwrap(), slice(&dx), H, 10_000, |v| {
        let x = Array4::from_shape_vec(input, v.to_vec()).unwrap();
        project(slice(&global_avg_pool(x.view()).unwrap()), slice(&r))
    });
    report("global_avg_pool", &[("input", err)], LINEAR_TOL);
    // Adaptive pooling with overlapping, uneven bins (14 -> 4 as torchvision GoogLeNet's auxiliary heads).
    for (input, output) in [([2, 3, 14, 14], [4, 4]), ([1, 2, 5, 7], [3, 2])] {
        let mut x = random4(input, 72);
        let r = random4([input[0], input[1], output[0], output[1]], 73);
        let dx = adaptive_avg_pool_backward(r.view(), input).unwrap();
        let err = grad_check(x.as_slice_mut().unwrap(), slice(&dx), H, 10_000, |v| {
            let x = Array4::from_shape_vec(input, v.to_vec()).unwrap();
            project(slice(&adaptive_avg_pool(x.view(), output).unwrap()), slice(&r))
        });
        report(
            &format!("adaptive_avg_pool {input:?} -> {output:?}"),
            &[("input", err)],
            LINEAR_TOL,
        );
    }
}

#[test]
fn grad_batch_norm_train_and_eval() {
    let input = [3, 4, 5, 3];
    let bn = BatchNorm2d::new(4).with_eps(1e-3);
    let mut x = random4(input, 80);
    let mut gamma = random(Ix1(4), 81) + 1.5;
    let mut beta = random(Ix1(4), 82);
    let running_mean = random(Ix1(4), 83) * 0.5;
    let running_var = random(Ix1(4), 84).mapv(|v| v.abs() + 0.5);
    let r = random4(input, 85);
    for train in [true, false] {
        let forward = |x: &Array4<f32>, gamma: &Array1<f32>, beta: &Array1<f32>| {
            let (mut rm, mut rv) = (running_mean.clone(), running_var.clone());
            if train {
                bn.forward_train(x.view(), gamma.view(), beta.view(), rm.view_mut(), rv.view_mut())
                    .unwrap()
            } else {
                bn.forward_eval(x.view(), gamma.view(), beta.view(), rm.view(), rv.view())
                    .unwrap()
            }
        };
        let (_, cache) = forward(&x, &gamma, &beta);
        let dx = bn.backward_input(x.view(), r.view(), gamma.view(), &cache).unwrap();
        let grads = bn.param_grads(x.view(), r.view(), &cache).unwrap();
        let (x0, g0, b0) = (x.clone(), gamma.clone(), beta.clone());
        let ex = grad_check(x.as_slice_mut().unwrap(), slice(&dx), H, 10_000, |v| {
            project(
                slice(&forward(&Array4::from_shape_vec(input, v.to_vec()).unwrap(), &g0, &b0).0),
                slice(&r),
            )
        });
        let eg = grad_check(gamma.as_slice_mut().unwrap(), slice(&grads.dgamma), H, 100, |v| {
            project(slice(&forward(&x0, &Array1::from_vec(v.to_vec()), &b0).0), slice(&r))
        });
        let eb = grad_check(beta.as_slice_mut().unwrap(), slice(&grads.dbeta), H, 100, |v| {
            project(slice(&forward(&x0, &g0, &Array1::from_vec(v.to_vec())).0), slice(&r))
        });
        let mode = if train { "train" } else { "eval" };
        report(
            &format!("batch_norm2d {mode}"),
            &[("input", ex), ("gamma", eg), ("beta", eb)],
            SMOOTH_TOL,
        );
    }
}

#[test]
fn grad_relu_and_dropout() {
    let shape = [2, 3, 4, 5];
    let len = shape.iter().product();
    let mut x = Array4::from_shape_vec(shape, well_separated(len, 90)).unwrap();
    let r = random4(shape, 91);
    let y = relu(x.view());
    let dx = relu_backward(y.view(), r.view()).unwrap();
    let err = grad_check(x.as_slice_mut().unwrap(), slice(&dx), 0.4 / len as f32, 10_000, |v| {
        project(
            slice(&relu(Array4::from_shape_vec(shape, v.to_vec()).unwrap().view())),
            slice(&r),
        )
    });
    report("relu", &[("input", err)], LINEAR_TOL);

    let dropout = Dropout::new(0.3).unwrap();
    let mut x = random4(shape, 92);
    let (_, mask) = dropout.forward_train(x.view(), 7);
    let dx = dropout.backward(&mask, r.view()).unwrap();
    let err = grad_check(x.as_slice_mut().unwrap(), slice(&dx), H, 10_000, |v| {
        let x = Array4::from_shape_vec(shape, v.to_vec()).unwrap();
        project(slice(&dropout.forward_train(x.view(), 7).0), slice(&r))
    });
    report("dropout p=0.3", &[("input", err)], LINEAR_TOL);
}

#[test]
fn grad_linear() {
    let layer = Linear::new(7, 5);
    let mut x = random(Ix2(4, 7), 100);
    let mut w = random(Ix2(5, 7), 101);
    let mut b = random(Ix1(5), 102);
    let r = random(Ix2(4, 5), 103);
    let dx = layer.backward_input(w.view(), r.view()).unwrap();
    let mut dw = Array2::zeros([5, 7]);
    layer.backward_weight(x.view(), r.view(), dw.view_mut()).unwrap();
    let mut db = Array1::zeros(5);
    layer.backward_bias(r.view(), db.view_mut()).unwrap();
    let (x0, w0, b0) = (x.clone(), w.clone(), b.clone());
    let f = |x: &Array2<f32>, w: &Array2<f32>, b: &Array1<f32>| {
        project(
            slice(&layer.forward(x.view(), w.view(), Some(b.view())).unwrap()),
            slice(&r),
        )
    };
    let ex = grad_check(x.as_slice_mut().unwrap(), slice(&dx), H, 1000, |v| {
        f(&Array2::from_shape_vec([4, 7], v.to_vec()).unwrap(), &w0, &b0)
    });
    let ew = grad_check(w.as_slice_mut().unwrap(), slice(&dw), H, 1000, |v| {
        f(&x0, &Array2::from_shape_vec([5, 7], v.to_vec()).unwrap(), &b0)
    });
    let eb = grad_check(b.as_slice_mut().unwrap(), slice(&db), H, 1000, |v| {
        f(&x0, &w0, &Array1::from_vec(v.to_vec()))
    });
    report("linear", &[("input", ex), ("weight", ew), ("bias", eb)], LINEAR_TOL);
}

#[test]
fn grad_flatten_concat_and_scaled_add() {
    let shape = [2, 3, 2, 3];
    let mut x = random4(shape, 110);
    let r = random(Ix2(2, 18), 111);
    let dx = flatten_backward(r.view(), shape).unwrap();
    let err = grad_check(x.as_slice_mut().unwrap(), slice(&dx), H, 1000, |v| {
        project(
            slice(&flatten(Array4::from_shape_vec(shape, v.to_vec()).unwrap().view())),
            slice(&r),
        )
    });
    report("flatten", &[("input", err)], LINEAR_TOL);

    let (mut a, b) = (random4([2, 2, 3, 3], 112), random4([2, 3, 3, 3], 113));
    let r = random4([2, 5, 3, 3], 114);
    let parts = split_channels(r.view(), &[2, 3]).unwrap();
    let b0 = b.clone();
    let err = grad_check(a.as_slice_mut().unwrap(), slice(&parts[0]), H, 1000, |v| {
        let a = Array4::from_shape_vec([2, 2, 3, 3], v.to_vec()).unwrap();
        project(slice(&concat_channels(&[a.view(), b0.view()]).unwrap()), slice(&r))
    });
    let a0 = a.clone();
    let mut b = b;
    let err_b = grad_check(b.as_slice_mut().unwrap(), slice(&parts[1]), H, 1000, |v| {
        let b = Array4::from_shape_vec([2, 3, 3, 3], v.to_vec()).unwrap();
        project(slice(&concat_channels(&[a0.view(), b.view()]).unwrap()), slice(&r))
    });
    report("concat", &[("first part", err), ("second part", err_b)], LINEAR_TOL);

    let (mut residual, mut branch) = (random4(shape, 115), random4(shape, 116));
    let r = random4(shape, 117);
    let (d_res, d_branch) = add_scaled_backward(r.view(), 0.17);
    let br0 = branch.clone();
    let e1 = grad_check(residual.as_slice_mut().unwrap(), slice(&d_res), H, 1000, |v| {
        let res = Array4::from_shape_vec(shape, v.to_vec()).unwrap();
        project(slice(&add_scaled(res.view(), br0.view(), 0.17).unwrap()), slice(&r))
    });
    let res0 = residual.clone();
    let e2 = grad_check(branch.as_slice_mut().unwrap(), slice(&d_branch), H, 1000, |v| {
        let br = Array4::from_shape_vec(shape, v.to_vec()).unwrap();
        project(slice(&add_scaled(res0.view(), br.view(), 0.17).unwrap()), slice(&r))
    });
    report("add scale 0.17", &[("residual", e1), ("branch", e2)], LINEAR_TOL);
}

#[test]
fn grad_softmax_cross_entropy_with_and_without_smoothing() {
    let labels = [3, 0, 4, 4, 1];
    for smoothing in [0.0, 0.1] {
        let loss = SoftmaxCrossEntropy::new(smoothing).unwrap();
        let mut logits = random(Ix2(5, 6), 120) * 3.0;
        let (_, cache) = loss.forward(logits.view(), &labels).unwrap();
        let grad = loss.backward(&cache);
        let err = grad_check(logits.as_slice_mut().unwrap(), slice(&grad), H, 1000, |v| {
            let z = Array2::from_shape_vec([5, 6], v.to_vec()).unwrap();
            loss.forward(z.view(), &labels).unwrap().0 as f64
        });
        report(
            &format!("softmax cross-entropy smoothing {smoothing}"),
            &[("logits", err)],
            SMOOTH_TOL,
        );
    }
}
