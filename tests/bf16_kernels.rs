//! The bf16 number format and microkernel: the CPU's own bf16 instructions against the scalar model of
//! `incept::bf16` bit for bit, every build of the bf16 microkernel against that model for every tile
//! shape, and the model against float64 (the sums stay float32: a sum bf16 could not hold comes out
//! exact).

use incept::bf16;
use incept::microkernel::{Bf16Isa, Epilogue, LANES, MAX_BLOCKS, Tile, TileShape, max_pixels, run_bf16};

mod common;
use common::bf16_tile::{Case, VECTOR, epilogues, moderate_bf16, wild_bf16, wild_floats};

#[test]
fn conversion_matches_the_model() {
    // `convert` runs `vcvtneps2bf16` where the CPU has it, the model elsewhere; both must give the model.
    let x = wild_floats(1 << 16, 1);
    let mut found = vec![0u16; x.len()];
    bf16::convert(&x, &mut found);
    let ran = Bf16Isa::Avx512Bf16.available();
    println!(
        "vcvtneps2bf16 {}",
        if ran {
            "ran on this CPU"
        } else {
            "skipped: no AVX512-BF16 here"
        }
    );
    for (i, (&v, &b)) in x.iter().zip(&found).enumerate() {
        assert_eq!(b, bf16::from_f32(v), "value {i}: {v:e} ({:#010x})", v.to_bits());
    }
}

fn every_shape() -> impl Iterator<Item = TileShape> {
    (1..=MAX_BLOCKS).flat_map(|blocks| (1..=max_pixels(blocks)).map(move |pixels| TileShape { blocks, pixels }))
}

#[test]
fn every_build_equals_the_model_bit_for_bit() {
    // The widened build equals the model only with denormals flushed, as the incept command runs.
    incept::kernels::flush_denormals_on_this_thread();
    // The vector builds (the tile program has its own model: tests/amx_tiles.rs).
    let builds: Vec<Bf16Isa> = Bf16Isa::ALL
        .into_iter()
        .filter(|isa| isa.available() && isa.model() == Bf16Isa::Scalar)
        .collect();
    println!("bf16 vector builds run natively on this CPU: {builds:?}");
    for (s, shape) in every_shape().enumerate() {
        // Moderate values for the sums' sake, then raw bit patterns (every exponent, overflow, zero
        // products, bf16 denormals read as zero) for the instruction's corner cases.
        let cases = [
            Case::new(shape, s as u64, &VECTOR, moderate_bf16),
            Case::new(shape, 1000 + s as u64, &VECTOR, wild_bf16),
        ];
        for case in &cases {
            for epilogue in epilogues(&case.bias) {
                let model = case.run(Bf16Isa::Scalar, epilogue);
                for &isa in &builds[1..] {
                    let found = case.run(isa, epilogue);
                    for (i, (f, m)) in found.iter().zip(&model).enumerate() {
                        assert!(
                            f.to_bits() == m.to_bits() || (f.is_nan() && m.is_nan()),
                            "{isa:?}, tile {shape:?}, {epilogue:?}, output {i}: {f:e} against the model's {m:e}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn model_sums_in_float32_within_its_rounding_bound() {
    // Against float64 on the same bf16 values: each output within the float32 bound of a sum of that
    // many terms (2 per step), γ_n · Σ|terms| with γ_n = n·u/(1 - n·u), u = 2^-24.
    for (s, shape) in every_shape().enumerate().step_by(5) {
        let case = Case::new(shape, 77 + s as u64, &VECTOR, moderate_bf16);
        let found = case.run(Bf16Isa::best().for_strided_pairs(), Epilogue::default());
        case.assert_within_float32_bound(&found, "the fastest vector build");
    }
}

#[test]
fn a_sum_bf16_could_not_hold_is_exact() {
    // 257 products of 1·1: 257 needs 9 significant bits, bf16 has 8, so an accumulator in bf16 would
    // stop at 256; float32 holds it exactly. Then one product of 2^-10 on top (257 + 2^-10 needs 19 bits).
    let depth = 129; // 258 products: 257 ones, then 2^-10 · 1
    let mut w = vec![0u16; depth * 2 * LANES];
    let mut x = vec![0u16; 2 * depth];
    for k in 0..2 * depth {
        let value = if k < 257 { 1.0 } else { 2f32.powi(-10) };
        x[k] = bf16::from_f32(value);
        for lane in 0..LANES {
            w[(k / 2) * 2 * LANES + 2 * lane + k % 2] = bf16::from_f32(1.0);
        }
    }
    for isa in Bf16Isa::ALL
        .into_iter()
        .chain([Bf16Isa::AmxModel])
        .filter(|isa| isa.available())
    {
        let mut c = vec![0f32; LANES];
        let tile = Tile {
            shape: TileShape { blocks: 1, pixels: 1 },
            runs: &[(0, 0)],
            depth,
            w_block_stride: depth * 2 * LANES,
            x_pixel_stride: 2 * depth,
            x_depth_stride: 1,
            c_offset: 0,
            c_block_stride: LANES,
            epilogue: Epilogue::default(),
        };
        run_bf16(isa, &tile, &w, &x, &mut c);
        assert!(c.iter().all(|&v| v == 257.0 + 2f32.powi(-10)), "{isa:?}: {c:?}");
    }
}
