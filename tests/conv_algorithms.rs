//! Every convolution algorithm against the f64 naive reference, forward and both backward passes, on
//! awkward geometry: channel counts {1, 3, 4, 13, 16, 17}, odd and non-square maps, every kernel kind of
//! the Inception family, stride 2, asymmetric, explicit and TF SAME padding, dilation.

mod common;

use common::{max_rel_error, random4};
use incept::Padding;
use incept::microkernel::Isa;
use incept::ndarray::{Array1, Array4};
use incept::ops::conv::{Conv2d, ConvAlgo};

/// Relative tolerance against the f64 reference. f32 GEMM accumulates at most a few hundred products
/// here; its rounding error grows like sqrt(K) * 2^-24 relative, ~1e-6, so 2e-5 leaves margin without
/// hiding a wrong index (which shows up as an O(1) error).
const TOLERANCE: f64 = 2e-5;

fn cases() -> Vec<(Conv2d, [usize; 4])> {
    let mut cases = Vec::new();
    let kernels = [[1, 1], [3, 3], [5, 5], [7, 7], [1, 7], [7, 1], [1, 3], [3, 1]];
    let channels = [(1, 4), (3, 16), (4, 13), (13, 17), (16, 3), (17, 1)];
    let maps = [[9, 7], [6, 11], [12, 12], [5, 8]];
    for (i, &kernel) in kernels.iter().enumerate() {
        for (j, &(cin, cout)) in channels.iter().enumerate() {
            let [h, w] = maps[(i + j) % maps.len()];
            let same = [kernel[0] / 2, kernel[1] / 2];
            let paddings = [
                Padding::Valid,
                Padding::symmetric(same[0], same[1]),
                Padding::Same,
                Padding::explicit(same[0], 0, 0, same[1] + (kernel[1] > 1) as usize),
            ];
            for (k, &padding) in paddings.iter().enumerate() {
                let stride = match (i + j + k) % 3 {
                    0 => [1, 1],
                    1 => [2, 2],
                    _ => [1, 2],
                };
                let conv = Conv2d::new(cin, cout, kernel).with_stride(stride).with_padding(padding);
                if conv.output_shape([1, cin, h, w]).is_ok() {
                    cases.push((conv, [1 + (i + k) % 3, cin, h, w]));
                }
            }
        }
    }
    // Dilation, and 1x1 at stride 1 unpadded (the Gemm1x1 case) with a batch that splits across threads.
    cases.push((
        Conv2d::new(3, 5, [3, 3])
            .with_dilation([2, 2])
            .with_padding(Padding::symmetric(2, 2)),
        [2, 3, 9, 7],
    ));
    cases.push((
        Conv2d::new(4, 6, [1, 3]).with_dilation([1, 3]).with_stride([2, 1]),
        [3, 4, 7, 10],
    ));
    for &(cin, cout) in &channels {
        cases.push((Conv2d::new(cin, cout, [1, 1]), [5, cin, 7, 3]));
    }
    // Small maps with batches big enough that images are grouped several to a GEMM and the groups
    // split across threads (weight-gradient partials), with a short last group.
    cases.push((
        Conv2d::new(4, 6, [3, 3]).with_padding(Padding::symmetric(1, 1)),
        [20, 4, 6, 5],
    ));
    cases.push((Conv2d::new(5, 3, [1, 1]), [41, 5, 4, 4]));
    cases.push((
        Conv2d::new(3, 4, [5, 5]).with_padding(Padding::symmetric(2, 2)),
        [9, 3, 3, 3],
    ));
    // Factorized 1xk / kx1: grouped small maps split across threads, asymmetric padding, and maps large
    // enough (17x17 > 256 pixels) that a kx1 output is written in place.
    cases.push((
        Conv2d::new(4, 6, [1, 3]).with_padding(Padding::symmetric(0, 1)),
        [20, 4, 6, 5],
    ));
    cases.push((
        Conv2d::new(5, 3, [7, 1]).with_padding(Padding::explicit(3, 2, 0, 0)),
        [9, 5, 8, 3],
    ));
    cases.push((
        Conv2d::new(3, 5, [7, 1]).with_padding(Padding::symmetric(3, 0)),
        [3, 3, 17, 17],
    ));
    cases.push((
        Conv2d::new(3, 5, [1, 7]).with_padding(Padding::symmetric(0, 3)),
        [3, 3, 17, 17],
    ));
    cases
}

#[test]
fn every_algorithm_matches_the_naive_reference() {
    let mut worst = [0f64; 3];
    let mut checked = 0;
    for (case, (conv, input)) in cases().into_iter().enumerate() {
        let naive = conv.clone().with_algo(ConvAlgo::Naive);
        let x = random4(input, case as u64);
        let w = random4(conv.weight_shape(), 1000 + case as u64);
        let b = Array1::from_iter((0..conv.out_channels).map(|i| i as f32 * 0.1 - 0.3));
        let y_ref = naive.forward(x.view(), w.view(), Some(b.view())).unwrap();
        let dy = random4(*y_ref.shape().first_chunk::<4>().unwrap(), 2000 + case as u64);
        let dx_ref = naive.backward_input(w.view(), dy.view(), input).unwrap();
        let mut dw_ref = Array4::zeros(conv.weight_shape());
        naive.backward_weight(x.view(), dy.view(), dw_ref.view_mut()).unwrap();

        let g = conv.geometry(input).unwrap();
        let algos = [
            ConvAlgo::Auto,
            ConvAlgo::Im2colGemm,
            ConvAlgo::Gemm1x1,
            ConvAlgo::Winograd,
            ConvAlgo::Factorized,
            ConvAlgo::Direct,
        ];
        // The direct path once per instruction set this CPU has (the others run on the best one).
        let isas = Isa::ALL.into_iter().filter(|isa| isa.available());
        let runs = algos.into_iter().filter(|a| a.supports(&g)).flat_map(|algo| {
            let isas: Vec<Isa> = match algo {
                ConvAlgo::Direct => isas.clone().collect(),
                _ => vec![Isa::best()],
            };
            isas.into_iter().map(move |isa| (algo, isa))
        });
        for (algo, isa) in runs {
            Isa::set_limit(Some(isa));
            let fast = conv.clone().with_algo(algo);
            let what = format!("{algo:?} ({isa:?}) on {}", conv.geometry(input).unwrap());
            let y = fast.forward(x.view(), w.view(), Some(b.view())).unwrap();
            let dx = fast.backward_input(w.view(), dy.view(), input).unwrap();
            // Pre-filled with ones: backward_weight must add, not overwrite.
            let mut dw = Array4::ones(conv.weight_shape());
            fast.backward_weight(x.view(), dy.view(), dw.view_mut()).unwrap();
            let dw = dw - 1.0;
            let errors = [
                max_rel_error(y.as_slice().unwrap(), y_ref.as_slice().unwrap(), 1e-3),
                max_rel_error(dx.as_slice().unwrap(), dx_ref.as_slice().unwrap(), 1e-3),
                max_rel_error(dw.as_slice().unwrap(), dw_ref.as_slice().unwrap(), 1e-3),
            ];
            for (slot, (err, pass)) in errors
                .iter()
                .zip(["forward", "input gradient", "weight gradient"])
                .enumerate()
            {
                assert!(*err <= TOLERANCE, "{pass} error {err:.2e} > {TOLERANCE:.0e}: {what}");
                worst[slot] = worst[slot].max(*err);
            }
            checked += 1;
        }
        Isa::set_limit(None);
    }
    eprintln!(
        "conv algorithms vs naive over {checked} (case, algorithm) pairs: worst relative error forward {:.2e}, input gradient {:.2e}, weight gradient {:.2e}",
        worst[0], worst[1], worst[2]
    );
}

#[test]
fn bias_gradient_is_the_sum_over_batch_and_pixels() {
    let conv = Conv2d::new(2, 3, [3, 3]);
    let dy = random4([2, 3, 4, 5], 9);
    let mut db = Array1::from_elem(3, 1.0f32);
    conv.backward_bias(dy.view(), db.view_mut()).unwrap();
    for c in 0..3 {
        let expected: f32 = 1.0 + dy.slice(incept::ndarray::s![.., c, .., ..]).sum();
        assert!((db[c] - expected).abs() < 1e-5, "channel {c}: {} vs {expected}", db[c]);
    }
}

#[test]
fn non_contiguous_inputs_give_the_same_answer() {
    let conv = Conv2d::new(3, 4, [3, 3]).with_padding(Padding::symmetric(1, 1));
    let x = random4([2, 3, 6, 5], 1);
    let w = random4(conv.weight_shape(), 2);
    // The same values, stored transposed (NHWC in memory) and viewed back as NCHW.
    let x_nhwc = x.view().permuted_axes([0, 2, 3, 1]).as_standard_layout().into_owned();
    let x_strided = x_nhwc.view().permuted_axes([0, 3, 1, 2]);
    assert!(x_strided.as_slice().is_none());
    let a = conv.forward(x.view(), w.view(), None).unwrap();
    let b = conv.forward(x_strided, w.view(), None).unwrap();
    assert_eq!(a, b);
}

#[test]
fn shape_errors_name_the_op_and_both_shapes() {
    let conv = Conv2d::new(3, 4, [3, 3]);
    let x = Array4::<f32>::zeros([1, 2, 8, 8]);
    let w = Array4::<f32>::zeros(conv.weight_shape());
    let err = conv.forward(x.view(), w.view(), None).unwrap_err().to_string();
    assert!(
        err.contains("conv2d input") && err.contains("[n, 3, h, w]") && err.contains("[1, 2, 8, 8]"),
        "{err}"
    );

    let x = Array4::<f32>::zeros([1, 3, 8, 8]);
    let bad_w = Array4::<f32>::zeros([4, 3, 5, 5]);
    let err = conv.forward(x.view(), bad_w.view(), None).unwrap_err().to_string();
    assert!(
        err.contains("conv2d weight") && err.contains("[4, 3, 3, 3]") && err.contains("[4, 3, 5, 5]"),
        "{err}"
    );

    let small = Array4::<f32>::zeros([1, 3, 2, 8]);
    let err = conv.forward(small.view(), w.view(), None).unwrap_err().to_string();
    assert!(err.contains("kernel span"), "{err}");

    let bad_dy = Array4::<f32>::zeros([1, 4, 5, 5]);
    let err = conv
        .backward_input(w.view(), bad_dy.view(), [1, 3, 8, 8])
        .unwrap_err()
        .to_string();
    assert!(err.contains("[1, 4, 6, 6]") && err.contains("[1, 4, 5, 5]"), "{err}");

    let forced = Conv2d::new(3, 4, [3, 3]).with_algo(ConvAlgo::Gemm1x1);
    let err = forced.forward(x.view(), w.view(), None).unwrap_err().to_string();
    assert!(err.contains("Gemm1x1"), "{err}");
}
