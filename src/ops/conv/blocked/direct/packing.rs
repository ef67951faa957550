//! The geometry and packing a direct convolution shares between its passes: the weights in the
//! microkernel's layout ([`PackedConv`]) and back, the bias, the input's halo, and the workspace each
//! pass takes.

use rayon::prelude::*;

use crate::bf16;
use crate::blocked::{self, Halo};
use crate::microkernel::{self, Bf16Isa, LANES};
use crate::ops::conv::ConvGeometry;
use crate::ops::conv::direct_stem;
use crate::parallel;
use crate::workspace::WorkspaceSize;

/// A convolution's weights and bias in the microkernel's layout, and the runs one output tile walks.
#[derive(Debug, Clone)]
pub struct PackedConv {
    pub(super) geometry: ConvGeometry,
    /// Distance between consecutive output blocks' weights ([`microkernel::block_stride`]).
    pub(super) block_stride: usize,
    pub(super) weights: Vec<f32>,
    /// One per output channel, padded to whole blocks with zeros (all zero without a bias).
    pub(super) bias: Vec<f32>,
    /// `(weight offset, input offset)` per (input block, tap), relative to the tile's first weight and
    /// its first input pixel.
    pub(super) runs: Vec<(usize, usize)>,
    /// For a convolution that runs in bf16: the weights again, as bf16 pairs for `isa`'s kernels.
    pub(super) bf16: Option<Bf16Weights>,
}

/// A [`PackedConv`]'s weights in bf16, and the build that runs them. Each 16 × 16 block of the float32
/// packing (`[16 in][16 out]`) becomes `[8 input pairs][16 out][2]` (oneDNN's `8i16o2i`), the pairs
/// the bf16 microkernel's reduction steps take; the blocks stay where they were, so the runs' weight
/// offsets hold for both.
#[derive(Debug, Clone)]
pub(super) struct Bf16Weights {
    pub(super) isa: Bf16Isa,
    pub(super) weights: Vec<u16>,
}

impl PackedConv {
    /// Packs PyTorch-layout weights `[out, in, kh, kw]` (and a bias) for the convolution `g`.
    pub fn new(g: &ConvGeometry, w: &[f32], b: Option<&[f32]>) -> PackedConv {
        PackedConv::with_precision(g, w, b, None)
    }

    /// [`PackedConv::new`] for the bf16 microkernel's `isa` (`None`: float32). In bf16 the float32
    /// packing holds the weights rounded to bf16 too, so both say which values the convolution used.
    pub fn with_precision(g: &ConvGeometry, w: &[f32], b: Option<&[f32]>, bf16: Option<Bf16Isa>) -> PackedConv {
        let mut packed = PackedConv::zeros(g).in_bf16(bf16);
        packed.repack(w, b);
        packed
    }

    /// These buffers for the bf16 microkernel's `isa` (`None`: float32 only).
    pub(super) fn in_bf16(mut self, isa: Option<Bf16Isa>) -> PackedConv {
        self.bf16 = isa.map(|isa| Bf16Weights {
            isa,
            weights: vec![0; self.weights.len()],
        });
        self
    }

    /// The bf16 build these weights run on, `None` for float32.
    pub fn bf16_isa(&self) -> Option<Bf16Isa> {
        self.bf16.as_ref().map(|b| b.isa)
    }

    /// Buffers for `g`'s packed weights, all zero, and the runs of its tiles.
    pub(super) fn zeros(g: &ConvGeometry) -> PackedConv {
        let in_blocks = blocked::blocks(g.in_channels);
        let taps = g.h.kernel * g.w.kernel;
        let [hp, wp] = halo(g).padded([g.h.input, g.w.input]);
        let runs = (0..in_blocks)
            .flat_map(|icb| (0..taps).map(move |tap| (icb, tap)))
            .map(|(icb, tap)| {
                let (ky, kx) = (tap / g.w.kernel, tap % g.w.kernel);
                let w_offset = (icb * taps + tap) * LANES * LANES;
                let x_offset = ((icb * hp + ky * g.h.dilation) * wp + kx * g.w.dilation) * LANES;
                (w_offset, x_offset)
            })
            .collect();
        PackedConv {
            geometry: *g,
            block_stride: packed_block_stride(g),
            weights: vec![0.0; packed_len(g)],
            bias: vec![0.0; blocked::blocks(g.out_channels) * LANES],
            runs,
            bf16: None,
        }
    }

    /// Packs new values of the same weights (after an optimizer step) into the existing buffers.
    pub fn repack(&mut self, w: &[f32], b: Option<&[f32]>) {
        let g = &self.geometry;
        let (inputs, outputs) = (g.in_channels, g.out_channels);
        let taps = g.h.kernel * g.w.kernel;
        assert_eq!(w.len(), outputs * inputs * taps, "conv weights [out, in, kh, kw]");
        self.pack(|o, c, tap| w[(o * inputs + c) * taps + tap]);
        pack_bias(&mut self.bias, b, outputs);
    }

    /// Fills the packed weights with `weight(output channel, input channel, tap)` for the real channels,
    /// zeros elsewhere.
    pub(super) fn pack(&mut self, weight: impl Fn(usize, usize, usize) -> f32 + Sync) {
        let g = &self.geometry;
        let (inputs, outputs) = (g.in_channels, g.out_channels);
        let taps = g.h.kernel * g.w.kernel;
        // i = ((icb · taps + tap) · 16 + ic) · 16 + oc within output block ob.
        fill_blocks(&mut self.weights, self.block_stride, |ob, i| {
            let (oc, rest) = (i % LANES, i / LANES);
            let (ic, rest) = (rest % LANES, rest / LANES);
            let (tap, icb) = (rest % taps, rest / taps);
            let (o, c) = (ob * LANES + oc, icb * LANES + ic);
            (o < outputs && c < inputs).then(|| weight(o, c, tap))
        });
        if let Some(bf16) = &mut self.bf16 {
            to_bf16_pairs(&mut self.weights, &mut bf16.weights, self.block_stride);
        }
    }

    /// The convolution that computes `g`'s input gradient, packed: over the output gradient (as its
    /// input, with a halo of `(K - 1)·dilation - pad` per side), `w'[c][o][ky][kx] = w[o][c][K-1-ky][K-1-kx]`,
    /// no bias. `None` when `g` has a stride above 1 or more padding than its kernel reaches (those need a
    /// transposed convolution, not built yet).
    pub fn input_grad(g: &ConvGeometry, w: &[f32]) -> Option<PackedConv> {
        PackedConv::input_grad_with_precision(g, w, None)
    }

    /// [`PackedConv::input_grad`] for the bf16 microkernel's `isa` (`None`: float32).
    pub fn input_grad_with_precision(g: &ConvGeometry, w: &[f32], bf16: Option<Bf16Isa>) -> Option<PackedConv> {
        let mut back = PackedConv::zeros(&g.input_grad_geometry()?).in_bf16(bf16);
        back.repack_flipped(w);
        Some(back)
    }

    /// Packs new values of the forward weights `w` (`[out, in, kh, kw]` of the convolution whose input
    /// gradient these weights compute) flipped and transposed, into the existing buffers.
    pub(super) fn repack_flipped(&mut self, w: &[f32]) {
        let back = &self.geometry;
        // The forward convolution's input channels are this one's outputs, and the other way round.
        let (forward_inputs, taps) = (back.out_channels, back.h.kernel * back.w.kernel);
        assert_eq!(
            w.len(),
            back.in_channels * forward_inputs * taps,
            "conv weights [out, in, kh, kw]"
        );
        // Flipping both kernel axes reverses the tap order: (K-1-ky)·K + (K-1-kx) = K·K - 1 - tap.
        self.pack(|c, o, tap| w[(o * forward_inputs + c) * taps + (taps - 1 - tap)]);
    }

    /// The packed weights themselves (a weight gradient in this layout starts as a copy or as zeros).
    pub fn packed_weights(&self) -> &[f32] {
        &self.weights
    }

    /// The convolution these weights are packed for.
    pub fn geometry(&self) -> &ConvGeometry {
        &self.geometry
    }
}

impl PackedConv {
    /// `packed` (in these weights' layout) back in PyTorch's `[out, in, kh, kw]`.
    pub fn unpack(&self, packed: &[f32]) -> Vec<f32> {
        let g = &self.geometry;
        let mut w = vec![0.0; g.out_channels * g.in_channels * g.h.kernel * g.w.kernel];
        self.unpack_add(packed, &mut w);
        w
    }

    /// Adds `packed` (in these weights' layout) into `w`, laid out as PyTorch's `[out, in, kh, kw]`.
    pub(super) fn unpack_add(&self, packed: &[f32], w: &mut [f32]) {
        let g = &self.geometry;
        let taps = g.h.kernel * g.w.kernel;
        assert_eq!(
            w.len(),
            g.out_channels * g.in_channels * taps,
            "conv weights [out, in, kh, kw]"
        );
        // One task per output block, its 16 rows of `w` written in order: value (oc, c, tap) of block ob
        // is at ((icb · taps + tap) · 16 + ic) · 16 + oc of the block's packing.
        let per_output = g.in_channels * taps;
        w.par_chunks_mut(LANES * per_output)
            .zip(packed.par_chunks(self.block_stride))
            .for_each(|(w_block, block)| {
                for (oc, w_o) in w_block.chunks_exact_mut(per_output).enumerate() {
                    for (c, w_c) in w_o.chunks_exact_mut(taps).enumerate() {
                        let first = ((c / LANES) * taps * LANES + c % LANES) * LANES + oc;
                        for (tap, v) in w_c.iter_mut().enumerate() {
                            *v += block[first + tap * LANES * LANES];
                        }
                    }
                }
            });
    }
}

/// Rounds float32 packed weights to bf16 in place, and writes them as bf16 pairs into `pairs`: value
/// `ic · 16 + oc` of each 16 × 16 block goes to `(ic / 2) · 32 + 2 · oc + ic % 2`.
fn to_bf16_pairs(weights: &mut [f32], pairs: &mut [u16], block_stride: usize) {
    const BLOCK: usize = LANES * LANES;
    weights
        .par_chunks_mut(block_stride)
        .zip(pairs.par_chunks_mut(block_stride))
        .for_each(|(w, p)| {
            let whole = w.len() / BLOCK * BLOCK;
            for (w, p) in w[..whole]
                .chunks_exact_mut(BLOCK)
                .zip(p[..whole].chunks_exact_mut(BLOCK))
            {
                // Written in order, read two rows at a time.
                for (pair, out) in p.chunks_exact_mut(2 * LANES).enumerate() {
                    let (even, odd) = w[2 * pair * LANES..][..2 * LANES].split_at(LANES);
                    for (oc, o) in out.chunks_exact_mut(2).enumerate() {
                        o[0] = bf16::from_f32(even[oc]);
                        o[1] = bf16::from_f32(odd[oc]);
                    }
                }
                for v in w.iter_mut() {
                    *v = bf16::round(*v);
                }
            }
            // The stride's padding after the last whole block is zero in both.
        });
}

/// Fills packed weights, one output block per `block_stride` values (in parallel): value `i` of output
/// block `ob` is `value(ob, i)`, and zero where that is `None` (channels past the real counts, and the
/// stride's padding).
pub(in crate::ops::conv) fn fill_blocks(
    weights: &mut [f32],
    block_stride: usize,
    value: impl Fn(usize, usize) -> Option<f32> + Sync,
) {
    weights
        .par_chunks_mut(block_stride)
        .enumerate()
        .for_each(|(ob, block)| {
            for (i, v) in block.iter_mut().enumerate() {
                *v = value(ob, i).unwrap_or(0.0);
            }
        });
}

/// Writes the bias `b` (`outputs` values; zeros without one) into packed `bias`, padded with zeros to
/// whole blocks.
pub(in crate::ops::conv) fn pack_bias(bias: &mut [f32], b: Option<&[f32]>, outputs: usize) {
    bias.fill(0.0);
    if let Some(b) = b {
        assert_eq!(b.len(), outputs, "conv bias [out]");
        bias[..outputs].copy_from_slice(b);
    }
}

/// Images per weight-gradient chunk: as many as keep a chunk's inputs and output gradients
/// (`per_image` values for one image) within ~2 MB, at least one.
pub(in crate::ops::conv) fn weight_grad_chunk(per_image: usize) -> usize {
    (512 * 1024 / per_image).max(1)
}

/// Output blocks per group when the groups run across the pool: the most, up to `most`, that still
/// gives every thread a group of its own (one when none does).
pub(in crate::ops::conv) fn group_blocks(out_blocks: usize, most: usize) -> usize {
    (1..=most)
        .rev()
        .find(|&b| out_blocks.div_ceil(b) >= parallel::threads())
        .unwrap_or(1)
}

/// Distance between consecutive output blocks of `g`'s packed weights.
pub(super) fn packed_block_stride(g: &ConvGeometry) -> usize {
    let taps = g.h.kernel * g.w.kernel;
    microkernel::block_stride(blocked::blocks(g.in_channels) * taps * LANES * LANES)
}

/// Values of `g`'s packed weights.
pub(super) fn packed_len(g: &ConvGeometry) -> usize {
    blocked::blocks(g.out_channels) * packed_block_stride(g)
}

/// The zero halo the input needs: the convolution's padding.
pub fn halo(g: &ConvGeometry) -> Halo {
    Halo([g.h.pad_lo, g.h.pad_hi, g.w.pad_lo, g.w.pad_hi])
}

/// Whether `g`'s input gradient runs on the microkernel (see [`DirectWeights`]).
pub fn direct_input_grad(g: &ConvGeometry) -> bool {
    g.input_grad_geometry().is_some() && !direct_stem::eligible(g)
}

/// Whether `g` runs the few-channel path of `direct_stem.rs`: it reads NCHW only, and its input gradient
/// goes through im2col.
pub fn few_channels(g: &ConvGeometry) -> bool {
    direct_stem::eligible(g)
}

/// The workspace of every pass of [`ConvAlgo::Direct`](crate::ops::conv::ConvAlgo::Direct) over `g` (at the batch
/// `g` holds), except an input gradient that goes through im2col (`direct_input_grad` is false).
pub(in crate::ops::conv) fn workspace(g: &ConvGeometry) -> WorkspaceSize {
    if direct_stem::eligible(g) {
        return direct_stem::workspace(g);
    }
    let lens = |g: &ConvGeometry| {
        blocked::image_len(g.in_channels, [g.h.input, g.w.input], halo(g))
            + blocked::image_len(g.out_channels, [g.h.output, g.w.output], Halo::default())
    };
    let chunk = weight_grad_chunk(lens(g)).min(g.batch.max(1));
    let weight_grad = WorkspaceSize {
        partials: packed_len(g),
        ..WorkspaceSize::regions(chunk * lens(g))
    };
    let forward = WorkspaceSize::regions(lens(g));
    let input_grad = g
        .input_grad_geometry()
        .map(|back| WorkspaceSize::regions(lens(&back)))
        .unwrap_or_default();
    forward.max(weight_grad).max(input_grad)
}
