//! bf16 tile problems for the microkernel tests: random operands laid out with gaps, so a wrong stride
//! reads a wrong value, and a plain loop over a tile's pairs as an oracle.

use incept::bf16;
use incept::microkernel::{Bf16Isa, Epilogue, LANES, Tile, TileShape, run_bf16};

/// Random float32 bit patterns over every exponent, with a share of denormals, zeros, infinities.
pub fn wild_floats(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n)
        .map(|_| match rng.u8(0..10) {
            0 => f32::from_bits(rng.u32(..) & 0x807f_ffff),
            1 => [0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY][rng.usize(0..4)],
            _ => f32::from_bits(rng.u32(..)),
        })
        .filter(|v| !v.is_nan())
        .collect()
}

/// Raw bf16 bit patterns (the top halves of [`wild_floats`]): every exponent, overflow, zero products,
/// denormals the instructions read as zero.
pub fn wild_bf16(n: usize, seed: u64) -> Vec<u16> {
    wild_floats(n * 2, seed)
        .into_iter()
        .take(n)
        .map(|v| (v.to_bits() >> 16) as u16)
        .collect()
}

/// bf16 values of moderate size (exponents of 2^-20..2^20), signed: sums of their products neither
/// overflow nor go denormal.
pub fn moderate_bf16(n: usize, seed: u64) -> Vec<u16> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n)
        .map(|_| bf16::from_f32((rng.f32() * 2.0 - 1.0) * 2f32.powi(rng.i32(-20..20))))
        .collect()
}

/// One bf16 tile problem with gaps between operands, so a wrong stride reads a wrong value.
pub struct Case {
    pub shape: TileShape,
    pub runs: Vec<(usize, usize)>,
    pub depth: usize,
    pub w_block_stride: usize,
    pub x_pixel_stride: usize,
    pub x_depth_stride: usize,
    pub c_offset: usize,
    pub c_block_stride: usize,
    pub w: Vec<u16>,
    pub x: Vec<u16>,
    pub c: Vec<f32>,
    pub bias: Vec<f32>,
}

/// The depths and input layouts a [`Case`] draws from.
pub struct Draw {
    /// Pairs per run.
    pub depths: std::ops::Range<usize>,
    /// Between a pixel's consecutive pairs: 1 for pairs of channels (a convolution), 16 for pairs of
    /// pixels 16 channels apart (a weight gradient).
    pub x_depth_strides: &'static [usize],
}

/// The vector builds' problems: both input layouts, 1 to 11 pairs per run.
pub const VECTOR: Draw = Draw {
    depths: 1..12,
    x_depth_strides: &[1, 16],
};

impl Case {
    pub fn new(shape: TileShape, seed: u64, draw: &Draw, values: impl Fn(usize, u64) -> Vec<u16>) -> Case {
        let mut rng = fastrand::Rng::with_seed(seed);
        let depth = rng.usize(draw.depths.clone());
        let w_block_stride = depth * 2 * LANES + rng.usize(0..3) * 2;
        let x_depth_stride = draw.x_depth_strides[rng.usize(0..draw.x_depth_strides.len())];
        let x_pixel_stride = 2 * depth * x_depth_stride + rng.usize(0..4);
        let w_run = shape.blocks * w_block_stride;
        let x_run = shape.pixels * x_pixel_stride;
        let runs: Vec<(usize, usize)> = (0..rng.usize(1..5)).map(|r| (r * w_run + 3, r * x_run + 5)).collect();
        let c_block_stride = shape.pixels * LANES + rng.usize(0..2) * LANES;
        let c_offset = 7;
        let c = moderate_bf16(c_offset + shape.blocks * c_block_stride, seed ^ 3);
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
            c: c.into_iter().map(bf16::to_f32).collect(),
            bias: moderate_bf16(shape.blocks * LANES, seed ^ 4)
                .into_iter()
                .map(bf16::to_f32)
                .collect(),
            runs,
        }
    }

    pub fn tile<'a>(&'a self, epilogue: Epilogue<'a>) -> Tile<'a> {
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

    pub fn run(&self, isa: Bf16Isa, epilogue: Epilogue<'_>) -> Vec<f32> {
        let mut c = self.c.clone();
        run_bf16(isa, &self.tile(epilogue), &self.w, &self.x, &mut c);
        c
    }
}

pub fn epilogues(bias: &[f32]) -> [Epilogue<'_>; 3] {
    [
        Epilogue::default(),
        Epilogue {
            accumulate: true,
            bias: Some(bias),
            relu: false,
        },
        Epilogue {
            accumulate: true,
            bias: None,
            relu: true,
        },
    ]
}

impl Case {
    /// The tile by a plain loop: each output's sum over the runs and pairs in order, each pair added by
    /// `pair(acc, weights, inputs)`, then the epilogue as the microkernel documents it.
    pub fn by_loop(&self, pair: fn(f32, [u16; 2], [u16; 2]) -> f32, epilogue: Epilogue<'_>) -> Vec<f32> {
        let mut c = self.c.clone();
        for b in 0..self.shape.blocks {
            for p in 0..self.shape.pixels {
                for lane in 0..LANES {
                    let at = self.c_offset + b * self.c_block_stride + p * LANES + lane;
                    let mut acc = if epilogue.accumulate { c[at] } else { 0.0 };
                    for &(wo, xo) in &self.runs {
                        for k in 0..self.depth {
                            let w = wo + b * self.w_block_stride + 2 * LANES * k + 2 * lane;
                            let x = xo + p * self.x_pixel_stride + 2 * k * self.x_depth_stride;
                            acc = pair(acc, [self.w[w], self.w[w + 1]], [self.x[x], self.x[x + 1]]);
                        }
                    }
                    let mut v = epilogue.bias.map_or(acc, |bias| acc + bias[b * LANES + lane]);
                    if epilogue.relu {
                        v = v.max(0.0);
                    }
                    c[at] = v;
                }
            }
        }
        c
    }

    /// Asserts that `found` (this tile from zero, no epilogue) is within float32's rounding bound of the
    /// float64 sum of the same bf16 products: γ_n · Σ|terms|, γ_n = n·u/(1 - n·u), u = 2^-24, n terms.
    pub fn assert_within_float32_bound(&self, found: &[f32], what: &str) {
        let u = 2f64.powi(-24);
        let n = (2 * self.depth * self.runs.len()) as f64;
        for b in 0..self.shape.blocks {
            for p in 0..self.shape.pixels {
                for lane in 0..LANES {
                    let (mut sum, mut magnitude) = (0f64, 0f64);
                    for &(wo, xo) in &self.runs {
                        for k in 0..2 * self.depth {
                            let w = self.w[wo + b * self.w_block_stride + (k / 2) * 2 * LANES + 2 * lane + k % 2];
                            let x = self.x[xo + p * self.x_pixel_stride + (k / 2) * 2 * self.x_depth_stride + k % 2];
                            let product = f64::from(bf16::to_f32(w)) * f64::from(bf16::to_f32(x));
                            sum += product;
                            magnitude += product.abs();
                        }
                    }
                    let bound = n * u / (1.0 - n * u) * magnitude;
                    let at = self.c_offset + b * self.c_block_stride + p * LANES + lane;
                    let error = (f64::from(found[at]) - sum).abs();
                    assert!(
                        error <= bound,
                        "{what}, tile {:?} output {at}: {} against float64 {sum} (error {error:e} > bound {bound:e})",
                        self.shape,
                        found[at]
                    );
                }
            }
        }
    }
}
