//! AMX tiles: the 2×2 tile program (`microkernel::amx::run_amx`) on the scalar model of the tile
//! registers, on every CPU, against a plain loop over the same pairs in `tdpbf16ps`'s order and against
//! float64; and on the CPU's own tiles wherever it has AMX-BF16 and Linux grants the permission, bit for bit
//! against the model (the test output says whether that ran or was skipped).

use incept::bf16;
use incept::microkernel::amx::{self, AmxTile, TileConfig, TileModel, run_amx};

fn bf16_values(n: usize, seed: u64) -> Vec<u16> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n)
        .map(|_| bf16::from_f32((rng.f32() * 2.0 - 1.0) * 2f32.powi(rng.i32(-6..6))))
        .collect()
}

/// A problem with gaps between rows, groups, blocks and runs, so a wrong stride reads a wrong value.
struct Case {
    rows: usize,
    runs: Vec<(usize, usize)>,
    a: Vec<u16>,
    b: Vec<u16>,
    c: Vec<f32>,
    a_row_stride: usize,
    a_group_stride: usize,
    b_block_stride: usize,
    c_block_stride: usize,
    c_group_stride: usize,
}

impl Case {
    fn new(rows: usize, runs: usize, seed: u64) -> Case {
        let a_row_stride = 32 + 8;
        let a_group_stride = 16 * a_row_stride + 4;
        let a_run = 2 * a_group_stride;
        let b_block_stride = 512 + 32;
        let b_run = 2 * b_block_stride;
        let (c_block_stride, c_group_stride) = (16 * 16 + 16, 2 * (16 * 16 + 16));
        Case {
            rows,
            runs: (0..runs).map(|r| (r * b_run + 64, r * a_run + 2)).collect(),
            a: bf16_values(runs * a_run + 2, seed),
            b: bf16_values(runs * b_run + 64, seed ^ 1),
            c: bf16_values(3 + 2 * c_group_stride, seed ^ 2)
                .into_iter()
                .map(bf16::to_f32)
                .collect(),
            a_row_stride,
            a_group_stride,
            b_block_stride,
            c_block_stride,
            c_group_stride,
        }
    }

    fn tile(&self, accumulate: bool) -> AmxTile<'_> {
        AmxTile {
            rows: self.rows,
            runs: &self.runs,
            a_row_stride: self.a_row_stride,
            a_group_stride: self.a_group_stride,
            b_block_stride: self.b_block_stride,
            c_offset: 3,
            c_block_stride: self.c_block_stride,
            c_group_stride: self.c_group_stride,
            accumulate,
        }
    }

    /// Output (group, block, row, column) by a plain loop: `tdpbf16ps`'s pairs in order, run after run.
    fn expected(&self, accumulate: bool) -> Vec<f32> {
        let mut c = self.c.clone();
        for group in 0..2 {
            for block in 0..2 {
                for row in 0..self.rows {
                    for col in 0..16 {
                        let at = 3 + group * self.c_group_stride + block * self.c_block_stride + row * 16 + col;
                        let mut acc = if accumulate { self.c[at] } else { 0.0 };
                        for &(bo, ao) in &self.runs {
                            let a_row = ao + group * self.a_group_stride + row * self.a_row_stride;
                            let b_col = bo + block * self.b_block_stride + 2 * col;
                            for k in 0..16 {
                                let a = [self.a[a_row + 2 * k], self.a[a_row + 2 * k + 1]];
                                let b = [self.b[b_col + 32 * k], self.b[b_col + 32 * k + 1]];
                                acc = amx::dot_pair_even_first(acc, a, b);
                            }
                        }
                        c[at] = acc;
                    }
                }
            }
        }
        c
    }
}

#[test]
fn the_configuration_is_the_64_bytes_ldtilecfg_reads() {
    let config = TileConfig::new([16, 15, 14, 13, 12, 11, 10, 9], [64, 60, 56, 52, 48, 44, 40, 36]);
    assert_eq!(std::mem::size_of::<TileConfig>(), 64);
    assert_eq!(std::mem::align_of::<TileConfig>(), 64);
    // SAFETY: TileConfig is 64 plain bytes (repr(C), no padding between its fields).
    let bytes: [u8; 64] = unsafe { std::mem::transmute(config) };
    assert_eq!(bytes[0], 1, "palette 1");
    assert_eq!(&bytes[1..16], &[0; 15], "start row and reserved bytes");
    assert_eq!(
        u16::from_le_bytes([bytes[16], bytes[17]]),
        64,
        "colsb of tile 0 at byte 16"
    );
    assert_eq!(u16::from_le_bytes([bytes[30], bytes[31]]), 36, "colsb of tile 7");
    assert_eq!(&bytes[48..56], &[16, 15, 14, 13, 12, 11, 10, 9], "rows at byte 48");
}

#[test]
fn the_tile_program_on_the_model_sums_every_pair_in_order() {
    for (rows, runs) in [(16, 1), (16, 3), (7, 2), (1, 1)] {
        let case = Case::new(rows, runs, rows as u64 * 31 + runs as u64);
        for accumulate in [false, true] {
            let mut c = case.c.clone();
            run_amx(
                &mut TileModel::default(),
                &case.tile(accumulate),
                &case.a,
                &case.b,
                &mut c,
            );
            let expected = case.expected(accumulate);
            for (i, (f, e)) in c.iter().zip(&expected).enumerate() {
                assert_eq!(
                    f.to_bits(),
                    e.to_bits(),
                    "rows {rows} runs {runs} accumulate {accumulate}: value {i}: {f} against {e}"
                );
            }
            // And the sums are float32's: within its rounding bound of float64's.
            let u = f64::from(f32::EPSILON) / 2.0;
            for group in 0..2 {
                for block in 0..2 {
                    for row in 0..rows {
                        for col in 0..16 {
                            let at = 3 + group * case.c_group_stride + block * case.c_block_stride + row * 16 + col;
                            let (mut sum, mut magnitude) = if accumulate {
                                (f64::from(case.c[at]), f64::from(case.c[at]).abs())
                            } else {
                                (0.0, 0.0)
                            };
                            for &(bo, ao) in &case.runs {
                                for k in 0..32 {
                                    let a = bf16::to_f32(
                                        case.a[ao + group * case.a_group_stride + row * case.a_row_stride + k],
                                    );
                                    let b = bf16::to_f32(
                                        case.b[bo + block * case.b_block_stride + 32 * (k / 2) + 2 * col + k % 2],
                                    );
                                    sum += f64::from(a) * f64::from(b);
                                    magnitude += (f64::from(a) * f64::from(b)).abs();
                                }
                            }
                            let n = (32 * runs + 1) as f64;
                            let bound = n * u / (1.0 - n * u) * magnitude;
                            assert!(
                                (f64::from(c[at]) - sum).abs() <= bound,
                                "value {at}: {} against float64 {sum}",
                                c[at]
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn the_cpus_tiles_equal_the_model_where_it_has_amx() {
    #[cfg(target_arch = "x86_64")]
    if let Some(mut hardware) = amx::Hardware::new() {
        println!("AMX-BF16 tiles ran natively on this CPU");
        incept::kernels::flush_denormals_on_this_thread();
        for (rows, runs) in [(16, 1), (16, 4), (5, 2)] {
            let case = Case::new(rows, runs, 7 + rows as u64);
            for accumulate in [false, true] {
                let (mut model, mut native) = (case.c.clone(), case.c.clone());
                run_amx(
                    &mut TileModel::default(),
                    &case.tile(accumulate),
                    &case.a,
                    &case.b,
                    &mut model,
                );
                run_amx(&mut hardware, &case.tile(accumulate), &case.a, &case.b, &mut native);
                for (i, (n, m)) in native.iter().zip(&model).enumerate() {
                    assert_eq!(
                        n.to_bits(),
                        m.to_bits(),
                        "rows {rows} runs {runs}: value {i}: AMX {n} against the model's {m}"
                    );
                }
            }
        }
        return;
    }
    println!("AMX tiles skipped: this CPU has no AMX-BF16 (or Linux refused the tile permission)");
}
