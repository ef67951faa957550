//! The microkernel against a float64 reference, on every build this CPU runs, for every tile shape the
//! dispatcher instantiates: each output within the worst-case rounding bound of a float32 sum of that
//! many terms, and the builds bit-identical to each other (the same fused multiply-adds in the same
//! order).

use incept::microkernel::{self, Epilogue, Isa, LANES, MAX_BLOCKS, Tile, TileShape};

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n).map(|_| rng.f32() * 2.0 - 1.0).collect()
}

/// Everything one tile reads and writes, laid out with gaps (offsets, strides larger than needed) so a
/// wrong stride reads a wrong value rather than the right one by luck.
struct Case {
    shape: TileShape,
    runs: Vec<(usize, usize)>,
    depth: usize,
    w_block_stride: usize,
    x_pixel_stride: usize,
    x_depth_stride: usize,
    c_offset: usize,
    c_block_stride: usize,
    w: Vec<f32>,
    x: Vec<f32>,
    c: Vec<f32>,
    bias: Vec<f32>,
}

impl Case {
    fn new(shape: TileShape, seed: u64) -> Case {
        let mut rng = fastrand::Rng::with_seed(seed);
        let depth = rng.usize(1..20);
        let w_block_stride = depth * LANES + rng.usize(0..3) * LANES;
        let x_depth_stride = rng.usize(1..3);
        let x_pixel_stride = depth * x_depth_stride + rng.usize(0..4);
        let w_run = shape.blocks * w_block_stride;
        let x_run = shape.pixels * x_pixel_stride;
        let runs: Vec<(usize, usize)> = (0..rng.usize(1..5)).map(|r| (r * w_run + 3, r * x_run + 5)).collect();
        let c_block_stride = shape.pixels * LANES + rng.usize(0..2) * LANES;
        let c_offset = 7;
        Case {
            shape,
            depth,
            w_block_stride,
            x_pixel_stride,
            x_depth_stride,
            c_offset,
            c_block_stride,
            w: values(runs.len() * w_run + 3, seed ^ 1),
            x: values(runs.len() * x_run + 5, seed ^ 2),
            c: values(c_offset + shape.blocks * c_block_stride, seed ^ 3),
            bias: values(shape.blocks * LANES, seed ^ 4),
            runs,
        }
    }

    fn tile<'a>(&'a self, epilogue: Epilogue<'a>) -> Tile<'a> {
        Tile {
            shape: self.shape,
            runs: &self.runs,
            depth: self.depth,
            w_block_stride: self.w_block_stride,
            x_pixel_stride: self.x_pixel_stride,
            x_depth_stride: self.x_depth_stride,
            c_offset: self.c_offset,
            c_block_stride: self.c_block_stride,
            epilogue,
        }
    }

    /// Output `(block, pixel, lane)`'s exact value in float64, and the sum of its terms' magnitudes.
    fn reference(&self, b: usize, p: usize, lane: usize, e: Epilogue<'_>) -> (f64, f64) {
        let at = self.c_offset + b * self.c_block_stride + p * LANES + lane;
        let (mut sum, mut magnitude) = (0f64, 0f64);
        if e.accumulate {
            sum += self.c[at] as f64;
            magnitude += (self.c[at] as f64).abs();
        }
        for &(wo, xo) in &self.runs {
            for k in 0..self.depth {
                let w = self.w[wo + b * self.w_block_stride + k * LANES + lane] as f64;
                let x = self.x[xo + p * self.x_pixel_stride + k * self.x_depth_stride] as f64;
                sum += w * x;
                magnitude += (w * x).abs();
            }
        }
        if let Some(bias) = e.bias {
            sum += bias[b * LANES + lane] as f64;
            magnitude += (bias[b * LANES + lane] as f64).abs();
        }
        (if e.relu { sum.max(0.0) } else { sum }, magnitude)
    }
}

#[test]
fn every_build_and_tile_shape_matches_float64_within_the_rounding_bound() {
    let isas: Vec<Isa> = Isa::ALL.into_iter().filter(|isa| isa.available()).collect();
    eprintln!("builds on this CPU: {isas:?}");
    let mut worst = 0f64;
    for blocks in 1..=MAX_BLOCKS {
        for pixels in 1..=microkernel::max_pixels(blocks) {
            let shape = TileShape { blocks, pixels };
            for variant in 0..8u64 {
                let case = Case::new(shape, 100 * (blocks * 10 + pixels) as u64 + variant);
                let e = Epilogue {
                    accumulate: variant & 1 != 0,
                    bias: (variant & 2 != 0).then_some(&case.bias[..]),
                    relu: variant & 4 != 0,
                };
                let terms = case.runs.len() * case.depth + 2;
                // |fl(sum) - sum| <= γ_n Σ|terms| for n sequential roundings, γ_n = n u / (1 - n u).
                let u = f32::EPSILON as f64 / 2.0;
                let gamma = terms as f64 * u / (1.0 - terms as f64 * u);
                let mut first: Option<Vec<f32>> = None;
                for &isa in &isas {
                    let mut c = case.c.clone();
                    microkernel::run(isa, &case.tile(e), &case.w, &case.x, &mut c);
                    for b in 0..blocks {
                        for p in 0..pixels {
                            for lane in 0..LANES {
                                let at = case.c_offset + b * case.c_block_stride + p * LANES + lane;
                                let (exact, magnitude) = case.reference(b, p, lane, e);
                                let err = (c[at] as f64 - exact).abs();
                                assert!(
                                    err <= gamma * magnitude + f64::MIN_POSITIVE,
                                    "{isa:?} {blocks}x{pixels} {e:?}: block {b} pixel {p} lane {lane}: {} vs {exact} (error {err:.2e}, bound {:.2e})",
                                    c[at],
                                    gamma * magnitude
                                );
                                worst = worst.max(err / magnitude.max(f64::MIN_POSITIVE));
                            }
                        }
                    }
                    // Values outside the tile are untouched.
                    for (i, (&ours, &before)) in c.iter().zip(&case.c).enumerate() {
                        let rel = i.wrapping_sub(case.c_offset);
                        let inside = i >= case.c_offset
                            && rel / case.c_block_stride < blocks
                            && rel % case.c_block_stride < pixels * LANES;
                        if !inside {
                            assert_eq!(
                                ours.to_bits(),
                                before.to_bits(),
                                "{isa:?} wrote outside the tile at {i}"
                            );
                        }
                    }
                    match &first {
                        None => first = Some(c),
                        Some(expected) => assert!(
                            expected.iter().zip(&c).all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{isa:?} {blocks}x{pixels} differs from {:?} in some bit",
                            isas[0]
                        ),
                    }
                }
            }
        }
    }
    eprintln!("worst error relative to the sum of magnitudes: {worst:.2e}");
}

#[test]
#[should_panic(expected = "a run at input offset")]
fn a_run_past_the_input_is_refused() {
    let case = Case::new(TileShape { blocks: 2, pixels: 3 }, 9);
    let mut c = case.c.clone();
    let mut runs = case.runs.clone();
    runs[0].1 = case.x.len() - 1;
    let tile = Tile {
        runs: &runs,
        ..case.tile(Epilogue::default())
    };
    microkernel::run(Isa::Scalar, &tile, &case.w, &case.x, &mut c);
}

#[test]
#[should_panic(expected = "bias values")]
fn a_short_bias_is_refused() {
    let case = Case::new(TileShape { blocks: 2, pixels: 1 }, 10);
    let mut c = case.c.clone();
    let e = Epilogue {
        bias: Some(&case.bias[..LANES]),
        ..Epilogue::default()
    };
    microkernel::run(Isa::best(), &case.tile(e), &case.w, &case.x, &mut c);
}

#[test]
fn the_best_build_respects_the_limit_and_block_strides_avoid_4k_multiples() {
    for limit in Isa::ALL {
        Isa::set_limit(Some(limit));
        let best = Isa::best();
        assert!(best <= limit && best.available(), "limit {limit:?} gave {best:?}");
    }
    Isa::set_limit(None);
    assert!(Isa::ALL.into_iter().filter(|i| i.available()).all(|i| i <= Isa::best()));
    for values in [16, 1000, 1024, 4096, 144 * 256, 144 * 256 + 3] {
        let stride = microkernel::block_stride(values);
        assert!(
            stride >= values && stride % LANES == 0 && stride % 1024 != 0,
            "{values} -> {stride}"
        );
    }
}
