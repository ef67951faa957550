//! Property test: random convolution geometry (kernel, stride, dilation, padding per side or SAME,
//! channels, batch, map size), every algorithm against the f64 naive reference, forward and both
//! gradients. proptest shrinks a failure to a minimal geometry and prints it.

mod common;

use common::{max_rel_error, random4};
use incept::Padding;
use incept::ndarray::{Array1, Array4};
use incept::ops::conv::{Conv2d, ConvAlgo};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Case {
    conv: Conv2d,
    input: [usize; 4],
}

fn case() -> impl Strategy<Value = Case> {
    (
        (1usize..5, 1usize..18, 1usize..18),
        (1usize..8, 1usize..8),
        (1usize..4, 1usize..4),
        (1usize..3, 1usize..3),
        (0usize..4, 0usize..4, 0usize..4, 0usize..4, any::<bool>()),
        (1usize..14, 1usize..14),
    )
        .prop_filter_map(
            "kernel span must fit the padded input",
            |((n, cin, cout), (kh, kw), (sh, sw), (dh, dw), (t, b, l, r, same), (h, w))| {
                let padding = if same {
                    Padding::Same
                } else {
                    Padding::explicit(t, b, l, r)
                };
                let conv = Conv2d::new(cin, cout, [kh, kw])
                    .with_stride([sh, sw])
                    .with_dilation([dh, dw])
                    .with_padding(padding);
                conv.output_shape([n, cin, h, w]).ok()?;
                Some(Case {
                    conv,
                    input: [n, cin, h, w],
                })
            },
        )
}

/// Channel counts that are not multiples of 8 or 16, as the Inception models have (googlenet-bn's 182).
const AWKWARD: [usize; 6] = [1, 3, 7, 13, 182, 191];

/// Geometries with awkward channel counts in and out: 1×1, 3×3, 5×5 and 1×7 kernels, stride 1 or 2,
/// padded to keep the map, on the small maps where the GEMM paths group images.
fn awkward_case() -> impl Strategy<Value = Case> {
    (
        (
            1usize..5,
            prop::sample::select(AWKWARD.to_vec()),
            prop::sample::select(AWKWARD.to_vec()),
        ),
        prop::sample::select(vec![[1, 1], [3, 3], [5, 5], [1, 7], [7, 1]]),
        1usize..3,
        (1usize..8, 1usize..8),
    )
        .prop_filter_map(
            "kernel span must fit the padded input",
            |((n, cin, cout), [kh, kw], stride, (h, w))| {
                let conv = Conv2d::new(cin, cout, [kh, kw])
                    .with_stride([stride, stride])
                    .with_padding(Padding::explicit(kh / 2, kh / 2, kw / 2, kw / 2));
                conv.output_shape([n, cin, h, w]).ok()?;
                Some(Case {
                    conv,
                    input: [n, cin, h, w],
                })
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_geometry_matches_the_naive_reference(c in case(), seed in 0u64..1000) {
        every_algorithm_matches_the_naive_reference(c, seed)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn awkward_channel_counts_match_the_naive_reference(c in awkward_case(), seed in 0u64..1000) {
        every_algorithm_matches_the_naive_reference(c, seed)?;
    }
}

/// Every algorithm that supports `c`'s geometry, forward and both gradients, against the f64 naive path.
fn every_algorithm_matches_the_naive_reference(c: Case, seed: u64) -> Result<(), TestCaseError> {
    let Case { conv, input } = c;
    let g = conv.geometry(input).unwrap();
    let x = random4(input, seed);
    let w = random4(conv.weight_shape(), seed + 1);
    let b = Array1::from_elem(conv.out_channels, 0.25f32);
    let dy = random4(g.output_shape(), seed + 2);
    let naive = conv.clone().with_algo(ConvAlgo::Naive);
    let y_ref = naive.forward(x.view(), w.view(), Some(b.view())).unwrap();
    let dx_ref = naive.backward_input(w.view(), dy.view(), input).unwrap();
    let mut dw_ref = Array4::zeros(conv.weight_shape());
    naive.backward_weight(x.view(), dy.view(), dw_ref.view_mut()).unwrap();
    let algos = [
        ConvAlgo::Im2colGemm,
        ConvAlgo::Gemm1x1,
        ConvAlgo::Winograd,
        ConvAlgo::Factorized,
        ConvAlgo::Direct,
    ];
    for algo in algos.into_iter().filter(|a| a.supports(&g)) {
        let fast = conv.clone().with_algo(algo);
        let y = fast.forward(x.view(), w.view(), Some(b.view())).unwrap();
        let dx = fast.backward_input(w.view(), dy.view(), input).unwrap();
        let mut dw = Array4::zeros(conv.weight_shape());
        fast.backward_weight(x.view(), dy.view(), dw.view_mut()).unwrap();
        for (name, found, want) in [
            ("forward", &y, &y_ref),
            ("input gradient", &dx, &dx_ref),
            ("weight gradient", &dw, &dw_ref),
        ] {
            let err = max_rel_error(found.as_slice().unwrap(), want.as_slice().unwrap(), 1e-3);
            prop_assert!(err <= 2e-5, "{} {:?} error {:.2e} on {}", name, algo, err, g);
        }
    }
    Ok(())
}
