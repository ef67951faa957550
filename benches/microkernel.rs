//! The microkernel alone, in cache, against this machine's FMA peak measured by the same bench.
//!
//! The problem is one 3×3 convolution tile as the blocked layout will run it: 256 input channels (16
//! blocks × 9 taps = 144 runs of 16 reduction steps) over a 14×14 padded map, weights packed per output
//! block ([`microkernel::block_stride`] apart); weights (≤ 590 kB) and input (200 kB) stay in L2. Criterion reports FLOP/s ("elem/s" counts
//! floating-point operations, 2 per multiply-add); a summary after it prints each build's best tile as a
//! fraction of that build's single-thread FMA peak (a 12-chain FMA loop), both timed here as medians.
//!
//! `cargo bench --bench microkernel`

use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use incept::microkernel::{self, Epilogue, Isa, LANES, Tile, TileShape};

const IN_BLOCKS: usize = 16;
const TAPS: usize = 9;
const MAP: usize = 14;
const PEAK_ITERATIONS: u64 = 1 << 20;

/// Packed weights, blocked input, output, and the runs of one 3×3 tile at the map's top-left.
struct Problem {
    w: Vec<f32>,
    x: Vec<f32>,
    c: Vec<f32>,
    runs: Vec<(usize, usize)>,
}

impl Problem {
    fn new() -> Problem {
        let runs_len = IN_BLOCKS * TAPS;
        let mut rng = fastrand::Rng::with_seed(7);
        let mut values = |n: usize| (0..n).map(|_| rng.f32() - 0.5).collect::<Vec<f32>>();
        let runs = (0..IN_BLOCKS)
            .flat_map(|icb| (0..TAPS).map(move |tap| (icb, tap)))
            .enumerate()
            .map(|(r, (icb, tap))| {
                let (ky, kx) = (tap / 3, tap % 3);
                (r * LANES * LANES, ((icb * MAP + ky) * MAP + kx) * LANES)
            })
            .collect();
        Problem {
            w: values(4 * microkernel::block_stride(runs_len * LANES * LANES)),
            x: values(IN_BLOCKS * MAP * MAP * LANES),
            // Room for the widest tile: AMX's 2 blocks × 32 pixels.
            c: vec![0.0; 4 * 32 * LANES],
            runs,
        }
    }

    fn tile(&self, shape: TileShape) -> Tile<'_> {
        Tile {
            shape,
            runs: &self.runs,
            depth: LANES,
            w_block_stride: microkernel::block_stride(self.runs.len() * LANES * LANES),
            x_pixel_stride: LANES,
            x_depth_stride: 1,
            c_offset: 0,
            c_block_stride: 32 * LANES,
            epilogue: Epilogue::default(),
        }
    }

    fn flops(&self, shape: TileShape) -> u64 {
        shape.flops_per_step() * (self.runs.len() * LANES) as u64
    }
}

/// The shapes each build is timed on: its preferred tile and neighbours.
fn shapes(isa: Isa) -> Vec<TileShape> {
    let s = |blocks, pixels| TileShape { blocks, pixels };
    match isa {
        Isa::Avx512 => vec![s(4, 6), s(4, 4), s(3, 8), s(2, 8), s(1, 8)],
        Isa::Avx2 | Isa::Neon => vec![s(1, 6), s(2, 3), s(2, 2), s(1, 4)],
        Isa::Scalar => vec![s(1, 4)],
    }
}

fn median_seconds(mut f: impl FnMut(), repeats: usize) -> f64 {
    let mut times: Vec<f64> = (0..repeats)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn microkernel(c: &mut Criterion) {
    let problem = Problem::new();
    let isas: Vec<Isa> = Isa::ALL.into_iter().filter(|i| i.available()).collect();
    let mut group = c.benchmark_group("microkernel");
    group.sample_size(20);
    for &isa in &isas {
        // One untimed call gives the loop's FLOP count.
        group.throughput(Throughput::Elements(microkernel::fma_peak_flops(isa, PEAK_ITERATIONS)));
        group.bench_function(BenchmarkId::new("fma peak, 1 thread", format!("{isa:?}")), |b| {
            b.iter(|| microkernel::fma_peak_flops(isa, PEAK_ITERATIONS))
        });
        for shape in shapes(isa) {
            group.throughput(Throughput::Elements(problem.flops(shape)));
            let mut out = problem.c.clone();
            let tile = problem.tile(shape);
            let label = format!("{isa:?} {}x{}", shape.blocks, shape.pixels);
            group.bench_function(BenchmarkId::new("3x3 tile, 256 in, 1 thread", label), |b| {
                b.iter(|| microkernel::run(isa, &tile, &problem.w, &problem.x, &mut out))
            });
        }
    }
    group.finish();

    println!("\nmicrokernel vs this machine's single-thread FMA peak (medians of 21):");
    for &isa in &isas {
        let peak = peak_gflops(|| microkernel::fma_peak_flops(isa, PEAK_ITERATIONS));
        let shape = isa.preferred_tile();
        let mut out = problem.c.clone();
        let tile = problem.tile(shape);
        let rate = tile_gflops(&problem, shape, || {
            microkernel::run(isa, &tile, &problem.w, &problem.x, &mut out)
        });
        println!(
            "  {isa:?}: peak {peak:.1} GFLOP/s; tile {}x{} {rate:.1} GFLOP/s = {:.0}% of peak",
            shape.blocks,
            shape.pixels,
            100.0 * rate / peak
        );
    }
    // The reduced-precision builds against the best float32 build's FMA peak, measured once.
    let f32_peak = peak_gflops(|| microkernel::fma_peak_flops(Isa::best(), PEAK_ITERATIONS));
    bf16_summary(&problem, f32_peak);
    int8_summary(&problem, f32_peak);
}

/// GFLOP/s of a peak loop `measure` (which returns the FLOPs it did), the median of 21 timings.
fn peak_gflops(mut measure: impl FnMut() -> u64) -> f64 {
    let mut flops = 0;
    let s = median_seconds(|| flops = measure(), 21);
    flops as f64 / s / 1e9
}

/// GFLOP/s of `run`, one call of a `shape` tile on `problem` (2 operations per multiply-add for any
/// element type), the median of 21 timings of 50 calls.
fn tile_gflops(problem: &Problem, shape: TileShape, mut run: impl FnMut()) -> f64 {
    const REPS: usize = 50;
    let s = median_seconds(
        || {
            for _ in 0..REPS {
                run();
            }
        },
        21,
    );
    problem.flops(shape) as f64 * REPS as f64 / s / 1e9
}

/// The int8 builds on the same problem (weights as signed bytes re-laid as quads `[4 quads][16 lanes][4]`,
/// inputs as unsigned bytes), in operations per second (2 per multiply-add, as the FLOP rates), against
/// the float32 FMA peak.
fn int8_summary(problem: &Problem, f32_peak: f64) {
    use incept::microkernel::{Int8Isa, run_int8};
    let mut w = vec![0i8; problem.w.len()];
    // Index (k/4)·64 + 4·lane + k%4 of each 16 × 16 block holds input k, output lane.
    for (block, out) in problem
        .w
        .chunks_exact(LANES * LANES)
        .zip(w.chunks_exact_mut(LANES * LANES))
    {
        for k in 0..LANES {
            for lane in 0..LANES {
                out[(k / 4) * 4 * LANES + 4 * lane + k % 4] = (block[k * LANES + lane] * 254.0) as i8;
            }
        }
    }
    let x: Vec<u8> = problem.x.iter().map(|&v| ((v + 0.5) * 255.0) as u8).collect();
    println!("\nint8 microkernel (medians of 21), against the float32 FMA peak {f32_peak:.1} GFLOP/s:");
    for isa in Int8Isa::ALL
        .into_iter()
        .filter(|i| i.available() && *i != Int8Isa::Scalar)
    {
        let shape = isa.preferred_tile();
        let mut tile = problem.tile(shape);
        tile.depth = LANES / 4;
        let mut out = vec![0i32; problem.c.len()];
        let rate = tile_gflops(problem, shape, || run_int8(isa, &tile, &w, &x, &mut out));
        println!(
            "  {isa:?}: tile {}x{} {rate:.1} GOP/s = {:.2}x the float32 FMA peak",
            shape.blocks,
            shape.pixels,
            rate / f32_peak
        );
    }
}

/// The bf16 builds on the same problem (its values rounded to bf16, weights re-laid as pairs), against
/// the float32 FMA peak and, where the CPU has it, the `vdpbf16ps` peak.
fn bf16_summary(problem: &Problem, f32_peak: f64) {
    use incept::microkernel::{Bf16Isa, bf16::dot_peak_flops, run_bf16};
    let mut w = vec![0u16; problem.w.len()];
    // The same 16 × 16 block per run, as [8 pairs][16 lanes][2]: index (k/2)·32 + 2·lane + k%2.
    for (block, out) in problem
        .w
        .chunks_exact(LANES * LANES)
        .zip(w.chunks_exact_mut(LANES * LANES))
    {
        for k in 0..LANES {
            for lane in 0..LANES {
                out[(k / 2) * 2 * LANES + 2 * lane + k % 2] = incept::bf16::from_f32(block[k * LANES + lane]);
            }
        }
    }
    let x: Vec<u16> = problem.x.iter().map(|&v| incept::bf16::from_f32(v)).collect();
    println!("\nbf16 microkernel (medians of 21), against the float32 FMA peak {f32_peak:.1} GFLOP/s:");
    if Bf16Isa::Avx512Bf16.available() {
        let peak = peak_gflops(|| dot_peak_flops(PEAK_ITERATIONS));
        println!(
            "  vdpbf16ps peak {peak:.1} GFLOP/s = {:.2}x the float32 FMA peak",
            peak / f32_peak
        );
    }
    if Bf16Isa::Amx.available() {
        let peak = peak_gflops(|| incept::microkernel::amx::dot_peak_flops(PEAK_ITERATIONS / 16));
        println!(
            "  tdpbf16ps peak {peak:.1} GFLOP/s = {:.2}x the float32 FMA peak",
            peak / f32_peak
        );
    }
    for isa in Bf16Isa::ALL
        .into_iter()
        .filter(|i| i.available() && *i != Bf16Isa::Scalar)
    {
        let shape = isa.preferred_tile();
        let mut tile = problem.tile(shape);
        tile.depth = LANES / 2;
        let mut out = problem.c.clone();
        let rate = tile_gflops(problem, shape, || run_bf16(isa, &tile, &w, &x, &mut out));
        println!(
            "  {isa:?}: tile {}x{} {rate:.1} GFLOP/s = {:.2}x the float32 FMA peak",
            shape.blocks,
            shape.pixels,
            rate / f32_peak
        );
    }
}

criterion_group!(benches, microkernel);
criterion_main!(benches);
