//! AMX tiles: the tile program (`microkernel::amx`, run through `run_bf16` as `Bf16Isa::AmxModel`) on
//! the scalar model of the tile registers on every CPU, against a plain loop over the same pairs in
//! `tdpbf16ps`'s order and against float64; and as `Bf16Isa::Amx` on the CPU's own tiles wherever it has
//! AMX-BF16 and Linux grants the permission, bit for bit against the model (the test output says
//! whether that ran or was skipped).

mod common;

use common::bf16_tile::{Case, Draw, epilogues, moderate_bf16, wild_bf16};
use incept::microkernel::amx::{self, TileConfig};
use incept::microkernel::{Bf16Isa, Epilogue, TileShape};

/// Every shape the tile program takes: 1 or 2 blocks of 16 outputs, 1 to 32 pixels (two groups of 16).
fn amx_shapes() -> impl Iterator<Item = TileShape> {
    let most = amx::MAX_SHAPE;
    (1..=most.blocks).flat_map(move |blocks| (1..=most.pixels).map(move |pixels| TileShape { blocks, pixels }))
}

/// Pairs of channels only (a pixel's pairs are a tile row), depths up to past two steps of 16 pairs
/// (a depth such as 13 or 23 runs in steps of 1; 24 in steps of 12).
const TILES: Draw = Draw {
    depths: 1..34,
    x_depth_strides: &[1],
};

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
    for (s, shape) in amx_shapes().enumerate() {
        let case = Case::new(shape, 500 + s as u64, &TILES, moderate_bf16);
        for epilogue in epilogues(&case.bias) {
            let found = case.run(Bf16Isa::AmxModel, epilogue);
            let expected = case.by_loop(|acc, w, x| amx::dot_pair_even_first(acc, x, w), epilogue);
            for (i, (f, e)) in found.iter().zip(&expected).enumerate() {
                assert_eq!(
                    f.to_bits(),
                    e.to_bits(),
                    "tile {shape:?}, depth {}, {epilogue:?}: value {i}: {f} against {e}",
                    case.depth
                );
            }
        }
        // And the sums are float32's: within its rounding bound of float64's (from zero, no epilogue).
        let found = case.run(Bf16Isa::AmxModel, Epilogue::default());
        case.assert_within_float32_bound(&found, "the tile model");
    }
}

#[test]
fn the_cpus_tiles_equal_the_model_where_it_has_amx() {
    if !Bf16Isa::Amx.available() {
        println!("AMX tiles skipped: this CPU has no AMX-BF16 (or Linux refused the tile permission)");
        return;
    }
    println!("AMX-BF16 tiles ran natively on this CPU");
    for (s, shape) in amx_shapes().enumerate() {
        // Moderate values, then raw bit patterns (every exponent, overflow, denormals read as zero).
        let cases = [
            Case::new(shape, 900 + s as u64, &TILES, moderate_bf16),
            Case::new(shape, 1900 + s as u64, &TILES, wild_bf16),
        ];
        for case in &cases {
            for epilogue in epilogues(&case.bias) {
                let (native, model) = (case.run(Bf16Isa::Amx, epilogue), case.run(Bf16Isa::AmxModel, epilogue));
                for (i, (n, m)) in native.iter().zip(&model).enumerate() {
                    assert!(
                        n.to_bits() == m.to_bits() || (n.is_nan() && m.is_nan()),
                        "tile {shape:?}, depth {}, {epilogue:?}: value {i}: AMX {n:e} against the model's {m:e}",
                        case.depth
                    );
                }
            }
        }
    }
}

#[test]
fn the_tile_program_refuses_pairs_that_are_not_a_row() {
    // A weight gradient's pairs lie 16 channels apart: a tile row cannot load them.
    let shape = TileShape { blocks: 1, pixels: 4 };
    let strided = Draw {
        depths: 4..5,
        x_depth_strides: &[16],
    };
    let case = Case::new(shape, 3, &strided, moderate_bf16);
    let refused = std::panic::catch_unwind(|| case.run(Bf16Isa::AmxModel, Epilogue::default()));
    let message = refused.expect_err("refused").downcast::<String>().expect("a message");
    assert!(message.contains("contiguously"), "{message}");
    assert_eq!(Bf16Isa::AmxModel.for_strided_pairs(), Bf16Isa::Scalar);
}
