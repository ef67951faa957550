//! Every op against PyTorch: outputs and gradients stored by `fixtures/generate.py` (inputs, `dy`, and
//! autograd's gradients of `sum(y * dy)`). No Python is needed to run these.
//!
//! Tolerance: relative L2 error 1e-5. Both sides compute in f32 with different summation orders, which
//! differ by ~1e-7 relative; a wrong padding, divisor, ceil rule or statistic gives errors of 1e-2 or more.

mod common;

use common::fixture::Fixture;
use common::rel_l2;
use incept::Padding;
use incept::ndarray::{Array1, Array2, Array4, ArrayD, Ix1, Ix2, Ix4};
use incept::ops::batchnorm::BatchNorm2d;
use incept::ops::conv::{Conv2d, ConvAlgo};
use incept::ops::linear::Linear;
use incept::ops::loss::SoftmaxCrossEntropy;
use incept::ops::pool::{AvgPool2d, MaxPool2d, global_avg_pool, global_avg_pool_backward};

const TOLERANCE: f64 = 1e-5;

fn d4(a: ArrayD<f32>) -> Array4<f32> {
    a.into_dimensionality::<Ix4>().expect("4-D fixture tensor")
}

fn d2(a: ArrayD<f32>) -> Array2<f32> {
    a.into_dimensionality::<Ix2>().expect("2-D fixture tensor")
}

fn d1(a: ArrayD<f32>) -> Array1<f32> {
    a.into_dimensionality::<Ix1>().expect("1-D fixture tensor")
}

/// Compares named (found, expected) pairs, asserts the tolerance, and returns the worst error.
fn compare(what: &str, pairs: &[(&str, &[f32], &[f32])]) -> f64 {
    let mut worst = 0f64;
    for (name, found, expected) in pairs {
        let err = rel_l2(found, expected);
        assert!(
            err <= TOLERANCE,
            "{what}: {name} differs from PyTorch by {err:.2e} (relative L2) > {TOLERANCE:.0e}"
        );
        worst = worst.max(err);
    }
    worst
}

fn s<D: incept::ndarray::Dimension>(a: &incept::ndarray::Array<f32, D>) -> &[f32] {
    a.as_slice().expect("contiguous")
}

fn padding(f: &Fixture, case: &str) -> Padding {
    let [t, b, l, r]: [usize; 4] = f.usizes(case, "pads").try_into().unwrap();
    if f.text(case, "padding") == "same" {
        Padding::Same
    } else {
        Padding::explicit(t, b, l, r)
    }
}

#[test]
fn conv2d_matches_pytorch_for_every_kernel_kind_and_algorithm() {
    let f = Fixture::open("conv");
    let mut worst = 0f64;
    for case in f.cases() {
        let (x, w, b, y_ref, dy) = (
            d4(f.tensor(&case, "x")),
            d4(f.tensor(&case, "w")),
            d1(f.tensor(&case, "b")),
            d4(f.tensor(&case, "y")),
            d4(f.tensor(&case, "dy")),
        );
        let (dx_ref, dw_ref, db_ref) = (
            d4(f.tensor(&case, "dx")),
            d4(f.tensor(&case, "dw")),
            d1(f.tensor(&case, "db")),
        );
        let conv = Conv2d::new(x.shape()[1], w.shape()[0], f.pair(&case, "kernel"))
            .with_stride(f.pair(&case, "stride"))
            .with_padding(padding(&f, &case));
        let input: [usize; 4] = x.shape().try_into().unwrap();
        let g = conv.geometry(input).unwrap();
        // TF SAME resolves to exactly the pads the generator computed.
        assert_eq!(
            f.usizes(&case, "pads"),
            vec![g.h.pad_lo, g.h.pad_hi, g.w.pad_lo, g.w.pad_hi],
            "{case}"
        );
        let algos = [
            ConvAlgo::Naive,
            ConvAlgo::Im2colGemm,
            ConvAlgo::Auto,
            ConvAlgo::Gemm1x1,
            ConvAlgo::Winograd,
            ConvAlgo::Factorized,
            ConvAlgo::Direct,
        ];
        for algo in algos.into_iter().filter(|a| a.supports(&g)) {
            let conv = conv.clone().with_algo(algo);
            let y = conv.forward(x.view(), w.view(), Some(b.view())).unwrap();
            let dx = conv.backward_input(w.view(), dy.view(), input).unwrap();
            let mut dw = Array4::zeros(conv.weight_shape());
            conv.backward_weight(x.view(), dy.view(), dw.view_mut()).unwrap();
            let mut db = Array1::zeros(conv.out_channels);
            conv.backward_bias(dy.view(), db.view_mut()).unwrap();
            let what = format!("conv {case} {algo:?}");
            worst = worst.max(compare(
                &what,
                &[
                    ("y", s(&y), s(&y_ref)),
                    ("dx", s(&dx), s(&dx_ref)),
                    ("dw", s(&dw), s(&dw_ref)),
                    ("db", s(&db), s(&db_ref)),
                ],
            ));
        }
    }
    eprintln!(
        "conv2d vs PyTorch: worst relative L2 error {worst:.2e} over {} cases",
        f.cases().len()
    );
}

#[test]
fn pools_match_pytorch_with_ceil_mode_padding_and_divisor_rules() {
    let f = Fixture::open("pool");
    let mut worst = [0f64; 3];
    for case in f.cases() {
        let (x, y_ref, dy, dx_ref) = (
            d4(f.tensor(&case, "x")),
            d4(f.tensor(&case, "y")),
            d4(f.tensor(&case, "dy")),
            d4(f.tensor(&case, "dx")),
        );
        let input: [usize; 4] = x.shape().try_into().unwrap();
        let (kernel, stride, ceil) = (
            f.pair(&case, "kernel"),
            f.pair(&case, "stride"),
            f.flag(&case, "ceil_mode"),
        );
        let (slot, y, dx) = match f.text(&case, "kind").as_str() {
            "max" => {
                let pool = MaxPool2d::new(kernel, stride)
                    .with_padding(padding(&f, &case))
                    .with_ceil_mode(ceil);
                let (y, cache) = pool.forward(x.view()).unwrap();
                (0, y, pool.backward(&cache, dy.view()).unwrap())
            }
            "avg" => {
                let pool = AvgPool2d::new(kernel, stride)
                    .with_padding(padding(&f, &case))
                    .with_ceil_mode(ceil)
                    .with_count_include_pad(f.flag(&case, "count_include_pad"));
                (
                    1,
                    pool.forward(x.view()).unwrap(),
                    pool.backward(dy.view(), input).unwrap(),
                )
            }
            _ => (
                2,
                global_avg_pool(x.view()).unwrap(),
                global_avg_pool_backward(dy.view(), input).unwrap(),
            ),
        };
        assert_eq!(y.shape(), y_ref.shape(), "pool {case}: output shape");
        let err = compare(
            &format!("pool {case}"),
            &[("y", s(&y), s(&y_ref)), ("dx", s(&dx), s(&dx_ref))],
        );
        worst[slot] = worst[slot].max(err);
    }
    eprintln!(
        "pools vs PyTorch: worst relative L2 error max {:.2e}, avg {:.2e}, global avg {:.2e}",
        worst[0], worst[1], worst[2]
    );
}

#[test]
fn batch_norm_matches_pytorch_in_train_and_eval_mode() {
    let f = Fixture::open("batchnorm");
    let mut worst = 0f64;
    for case in f.cases() {
        let x = d4(f.tensor(&case, "x"));
        let (gamma, beta) = (d1(f.tensor(&case, "gamma")), d1(f.tensor(&case, "beta")));
        let (mut rm, mut rv) = (
            d1(f.tensor(&case, "running_mean_in")),
            d1(f.tensor(&case, "running_var_in")),
        );
        let bn = BatchNorm2d::new(x.shape()[1])
            .with_eps(f.f32(&case, "eps"))
            .with_momentum(f.f32(&case, "momentum"));
        let (y, cache) = if f.flag(&case, "train") {
            bn.forward_train(x.view(), gamma.view(), beta.view(), rm.view_mut(), rv.view_mut())
                .unwrap()
        } else {
            bn.forward_eval(x.view(), gamma.view(), beta.view(), rm.view(), rv.view())
                .unwrap()
        };
        let dy = d4(f.tensor(&case, "dy"));
        let dx = bn.backward_input(x.view(), dy.view(), gamma.view(), &cache).unwrap();
        let grads = bn.param_grads(x.view(), dy.view(), &cache).unwrap();
        let expected: Vec<ArrayD<f32>> = ["y", "running_mean_out", "running_var_out", "dx", "dgamma", "dbeta"]
            .iter()
            .map(|n| f.tensor(&case, n))
            .collect();
        let e = |i: usize| expected[i].as_slice().unwrap();
        worst = worst.max(compare(
            &format!("batch norm {case}"),
            &[
                ("y", s(&y), e(0)),
                ("running_mean", s(&rm), e(1)),
                ("running_var", s(&rv), e(2)),
                ("dx", s(&dx), e(3)),
                ("dgamma", s(&grads.dgamma), e(4)),
                ("dbeta", s(&grads.dbeta), e(5)),
            ],
        ));
    }
    eprintln!("batch norm vs PyTorch: worst relative L2 error {worst:.2e}");
}

#[test]
fn linear_and_cross_entropy_match_pytorch() {
    let f = Fixture::open("dense");
    let (x, w, b, dy) = (
        d2(f.tensor("linear", "x")),
        d2(f.tensor("linear", "w")),
        d1(f.tensor("linear", "b")),
        d2(f.tensor("linear", "dy")),
    );
    let layer = Linear::new(x.shape()[1], w.shape()[0]);
    let y = layer.forward(x.view(), w.view(), Some(b.view())).unwrap();
    let dx = layer.backward_input(w.view(), dy.view()).unwrap();
    let mut dw = Array2::zeros(w.raw_dim());
    layer.backward_weight(x.view(), dy.view(), dw.view_mut()).unwrap();
    let mut db = Array1::zeros(b.len());
    layer.backward_bias(dy.view(), db.view_mut()).unwrap();
    let refs: Vec<ArrayD<f32>> = ["y", "dx", "dw", "db"].iter().map(|n| f.tensor("linear", n)).collect();
    let linear = compare(
        "linear",
        &[
            ("y", s(&y), refs[0].as_slice().unwrap()),
            ("dx", s(&dx), refs[1].as_slice().unwrap()),
            ("dw", s(&dw), refs[2].as_slice().unwrap()),
            ("db", s(&db), refs[3].as_slice().unwrap()),
        ],
    );
    let mut ce = 0f64;
    for case in f.cases().into_iter().filter(|c| c.starts_with("cross_entropy")) {
        let logits = d2(f.tensor(&case, "logits"));
        let labels: Vec<usize> = f.tensor(&case, "labels").iter().map(|&l| l as usize).collect();
        let loss = SoftmaxCrossEntropy::new(f.f32(&case, "label_smoothing")).unwrap();
        let (value, cache) = loss.forward(logits.view(), &labels).unwrap();
        let grad = loss.backward(&cache);
        let (loss_ref, grad_ref) = (f.tensor(&case, "loss"), f.tensor(&case, "dlogits"));
        ce = ce.max(compare(
            &case,
            &[
                ("loss", &[value], loss_ref.as_slice().unwrap()),
                ("dlogits", s(&grad), grad_ref.as_slice().unwrap()),
            ],
        ));
    }
    eprintln!("vs PyTorch: linear worst relative L2 error {linear:.2e}, cross-entropy {ce:.2e}");
}
