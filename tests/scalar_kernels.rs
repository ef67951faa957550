//! The baseline (non-SIMD) build of every runtime-dispatched kernel, against the same references the
//! SIMD build is checked against elsewhere. Every test in this binary forces the baseline path, so the
//! process-wide switch is never seen half-set.

mod common;

use common::{max_rel_error, random4};
use incept::kernels;
use incept::ops::conv::{Conv2d, ConvAlgo};
use incept::{Padding, ndarray::Array4};

#[test]
fn winograd_on_the_baseline_path_matches_the_naive_reference() {
    kernels::set_scalar_only(true);
    assert_eq!(kernels::instruction_set(), "baseline (forced)");
    for (case, (cin, cout, h, w, pad)) in [(3, 5, 9, 7, 1), (16, 8, 12, 12, 1), (4, 17, 6, 11, 0), (2, 3, 5, 8, 2)]
        .into_iter()
        .enumerate()
    {
        let conv = Conv2d::new(cin, cout, [3, 3]).with_padding(Padding::symmetric(pad, pad));
        let input = [2, cin, h, w];
        let x = random4(input, case as u64);
        let wt = random4(conv.weight_shape(), 100 + case as u64);
        let naive = conv.clone().with_algo(ConvAlgo::Naive);
        let fast = conv.clone().with_algo(ConvAlgo::Winograd);
        let y_ref = naive.forward(x.view(), wt.view(), None).unwrap();
        let y = fast.forward(x.view(), wt.view(), None).unwrap();
        let dy = random4(*y_ref.shape().first_chunk::<4>().unwrap(), 200 + case as u64);
        let dx_ref = naive.backward_input(wt.view(), dy.view(), input).unwrap();
        let dx = fast.backward_input(wt.view(), dy.view(), input).unwrap();
        let errors = [
            max_rel_error(y.as_slice().unwrap(), y_ref.as_slice().unwrap(), 1e-3),
            max_rel_error(dx.as_slice().unwrap(), dx_ref.as_slice().unwrap(), 1e-3),
        ];
        assert!(errors.iter().all(|&e| e <= 2e-5), "case {case}: errors {errors:?}");
    }
}

#[test]
fn max_pool_on_the_baseline_path_matches_a_plain_loop() {
    kernels::set_scalar_only(true);
    let x = random4([2, 3, 13, 11], 5);
    let pool = incept::ops::pool::MaxPool2d::new([3, 3], [2, 2]).with_padding(Padding::symmetric(1, 1));
    let (y_scalar, _) = pool.forward(x.view()).unwrap();
    // A plain-loop maximum over each window, padding as minus infinity.
    let mut y_ref = Array4::<f32>::from_elem(y_scalar.raw_dim(), f32::NEG_INFINITY);
    for ((n, c, oy, ox), out) in y_ref.indexed_iter_mut() {
        for ky in 0..3 {
            for kx in 0..3 {
                let (iy, ix) = ((oy * 2 + ky) as isize - 1, (ox * 2 + kx) as isize - 1);
                if (0..13).contains(&iy) && (0..11).contains(&ix) {
                    *out = out.max(x[[n, c, iy as usize, ix as usize]]);
                }
            }
        }
    }
    assert_eq!(y_scalar, y_ref);
}

#[test]
fn elementwise_kernels_on_the_baseline_path_match_plain_loops() {
    kernels::set_scalar_only(true);
    let x: Vec<f32> = (0..37).map(|i| (i % 7) as f32 - 3.0).collect();
    let y: Vec<f32> = (0..37).map(|i| (i % 5) as f32 - 2.0).collect();
    let mut r = x.clone();
    kernels::relu_in_place(&mut r);
    assert_eq!(r, x.iter().map(|v| v.max(0.0)).collect::<Vec<_>>());
    let mut d = x.clone();
    kernels::relu_mask(&mut d, &y);
    let masked: Vec<f32> = x.iter().zip(&y).map(|(&g, &y)| if y > 0.0 { g } else { 0.0 }).collect();
    assert_eq!(d, masked);
    let mut acc = y.clone();
    kernels::relu_backward_add(&mut acc, &x, &y);
    assert_eq!(acc, y.iter().zip(&masked).map(|(a, m)| a + m).collect::<Vec<_>>());
}

#[test]
fn batch_norm_cross_entropy_and_adam_on_the_baseline_path_match_their_references() {
    kernels::set_scalar_only(true);
    common::checks::batch_norm_matches_plain_loops();
    common::checks::cross_entropy_matches_the_definition();
    common::checks::optimizers_match_pytorch();
}
