//! The int8 microkernel: every build against the scalar model of `vpdpbusd` bit for bit for every tile
//! shape, and the model against exact 64-bit sums (integer sums have no rounding: equal, not close).

use incept::microkernel::int8::dot_quad;
use incept::microkernel::{Epilogue, Int8Isa, LANES, MAX_BLOCKS, Tile, TileShape, max_pixels, run_int8};

/// One int8 tile problem with gaps between operands, so a wrong stride reads a wrong value.
struct Case {
    shape: TileShape,
    runs: Vec<(usize, usize)>,
    depth: usize,
    w_block_stride: usize,
    x_pixel_stride: usize,
    x_depth_stride: usize,
    c_offset: usize,
    c_block_stride: usize,
    w: Vec<i8>,
    x: Vec<u8>,
    c: Vec<i32>,
}

impl Case {
    fn new(shape: TileShape, seed: u64) -> Case {
        let mut rng = fastrand::Rng::with_seed(seed);
        let depth = rng.usize(1..12);
        let w_block_stride = depth * 4 * LANES + rng.usize(0..3) * 4;
        // Quads of adjacent channels (a convolution), or quads whose next lies 16 channels on.
        let x_depth_stride = [1, 16][rng.usize(0..2)];
        let x_pixel_stride = 4 * depth * x_depth_stride + rng.usize(0..4);
        let w_run = shape.blocks * w_block_stride;
        let x_run = shape.pixels * x_pixel_stride;
        let runs: Vec<(usize, usize)> = (0..rng.usize(1..5)).map(|r| (r * w_run + 3, r * x_run + 5)).collect();
        let c_block_stride = shape.pixels * LANES + rng.usize(0..2) * LANES;
        let c_offset = 7;
        // Every value of both types, the extremes (255 · -128) included.
        Case {
            shape,
            depth,
            w_block_stride,
            x_pixel_stride,
            x_depth_stride,
            c_offset,
            c_block_stride,
            w: (0..runs.len() * w_run + 3).map(|_| rng.i8(..)).collect(),
            x: (0..runs.len() * x_run + 5).map(|_| rng.u8(..)).collect(),
            c: (0..c_offset + shape.blocks * c_block_stride)
                .map(|_| rng.i32(-1 << 20..1 << 20))
                .collect(),
            runs,
        }
    }

    fn tile(&self, accumulate: bool) -> Tile<'_> {
        Tile {
            shape: self.shape,
            runs: &self.runs,
            depth: self.depth,
            w_block_stride: self.w_block_stride,
            x_pixel_stride: self.x_pixel_stride,
            x_depth_stride: self.x_depth_stride,
            c_offset: self.c_offset,
            c_block_stride: self.c_block_stride,
            epilogue: Epilogue {
                accumulate,
                bias: None,
                relu: false,
            },
        }
    }

    fn run(&self, isa: Int8Isa, accumulate: bool) -> Vec<i32> {
        let mut c = self.c.clone();
        run_int8(isa, &self.tile(accumulate), &self.w, &self.x, &mut c);
        c
    }

    /// Output (block, pixel, lane) as an exact sum in 64 bits.
    fn exact(&self, b: usize, p: usize, lane: usize, accumulate: bool) -> i64 {
        let at = self.c_offset + b * self.c_block_stride + p * LANES + lane;
        let mut sum = if accumulate { i64::from(self.c[at]) } else { 0 };
        for &(wo, xo) in &self.runs {
            for k in 0..4 * self.depth {
                let w = self.w[wo + b * self.w_block_stride + (k / 4) * 4 * LANES + 4 * lane + k % 4];
                let x = self.x[xo + p * self.x_pixel_stride + (k / 4) * 4 * self.x_depth_stride + k % 4];
                sum += i64::from(w) * i64::from(x);
            }
        }
        sum
    }
}

fn every_shape() -> impl Iterator<Item = TileShape> {
    (1..=MAX_BLOCKS).flat_map(|blocks| (1..=max_pixels(blocks)).map(move |pixels| TileShape { blocks, pixels }))
}

#[test]
fn every_build_equals_the_model_and_the_model_the_exact_sums() {
    let builds: Vec<Int8Isa> = Int8Isa::ALL.into_iter().filter(|isa| isa.available()).collect();
    println!("int8 builds run natively on this CPU: {builds:?}");
    for (s, shape) in every_shape().enumerate() {
        let case = Case::new(shape, s as u64);
        for accumulate in [false, true] {
            let model = case.run(Int8Isa::Scalar, accumulate);
            for b in 0..shape.blocks {
                for p in 0..shape.pixels {
                    for lane in 0..LANES {
                        let at = case.c_offset + b * case.c_block_stride + p * LANES + lane;
                        assert_eq!(
                            i64::from(model[at]),
                            case.exact(b, p, lane, accumulate),
                            "tile {shape:?}, accumulate {accumulate}: output {at}"
                        );
                    }
                }
            }
            for &isa in &builds[1..] {
                assert_eq!(
                    case.run(isa, accumulate),
                    model,
                    "{isa:?}, tile {shape:?}, accumulate {accumulate}"
                );
            }
        }
    }
}

/// A tile of one block and one pixel over one input quad: 64 weight bytes, 4 input bytes, 16 sums.
fn one_quad(epilogue: Epilogue<'_>) -> Tile<'_> {
    Tile {
        shape: TileShape { blocks: 1, pixels: 1 },
        runs: &[(0, 0)],
        depth: 1,
        w_block_stride: 4 * LANES,
        x_pixel_stride: 4,
        x_depth_stride: 1,
        c_offset: 0,
        c_block_stride: LANES,
        epilogue,
    }
}

#[test]
fn a_sum_wraps_at_32_bits_as_vpdpbusd_does() {
    // The model: four products into the accumulator, wrapping (vpdpbusd does not saturate; vpdpbusds would).
    assert_eq!(dot_quad(i32::MAX, [1, 0, 0, 0], [1, 0, 0, 0]), i32::MIN);
    assert_eq!(dot_quad(0, [255; 4], [-128; 4]), 4 * 255 * -128);
    // And every build, from a sum near the top.
    let (w, x) = (vec![127i8; 4 * LANES], vec![255u8; 4]);
    for isa in Int8Isa::ALL.into_iter().filter(|isa| isa.available()) {
        let mut c = vec![i32::MAX - 10; LANES];
        let tile = one_quad(Epilogue {
            accumulate: true,
            bias: None,
            relu: false,
        });
        run_int8(isa, &tile, &w, &x, &mut c);
        let expected = (i32::MAX - 10).wrapping_add(4 * 255 * 127);
        assert!(c.iter().all(|&v| v == expected), "{isa:?}: {c:?}");
    }
}

#[test]
fn a_bias_or_relu_is_refused() {
    let (w, x, mut c) = (vec![0i8; 4 * LANES], vec![0u8; 4], vec![0i32; LANES]);
    let bias = [0.0f32; LANES];
    let tile = one_quad(Epilogue {
        accumulate: false,
        bias: Some(&bias),
        relu: false,
    });
    let refused = std::panic::catch_unwind(move || run_int8(Int8Isa::Scalar, &tile, &w, &x, &mut c));
    let message = refused.expect_err("refused").downcast::<String>().expect("a message");
    assert!(message.contains("raw sums"), "{message}");
}
