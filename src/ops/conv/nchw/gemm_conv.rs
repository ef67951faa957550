//! Convolution as GEMM. With [`Lowering::Im2col`] each image is lowered to its im2col matrix; with
//! [`Lowering::Direct`] (1×1, stride 1, unpadded) the image already is that matrix.
//!
//! A large map gets one GEMM per image, reading and writing the image buffers in place. Small maps are
//! grouped (`batching.rs`): the lowered matrices of a chunk of images are laid side by side and one GEMM
//! covers the chunk; outputs and output gradients are then copied between the chunk's matrix and the
//! images. Scratch (lowered matrices, weight-gradient partials) is reused across calls.

use crate::matmul::{MatMut, MatRef, matmul};
use crate::ops::conv::batching::{Chunking, accumulate_weight_grad, for_each_chunk, weight_grad_workspace};
use crate::ops::conv::im2col::{Block, col2im, im2col};
use crate::ops::conv::{ConvGeometry, Fused, GradOperands, Operands};
use crate::parallel::Threads;
use crate::tensor::{Images, ImagesMut};
use crate::workspace::{Workspace, WorkspaceSize};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::ops::conv) enum Lowering {
    Direct,
    Im2col,
}

impl Lowering {
    /// Adds the weight gradient into `dw`.
    pub(crate) fn backward_weight(
        self,
        g: &ConvGeometry,
        x: Images<'_>,
        dy: Images<'_>,
        dw: &mut [f32],
        ws: &mut Workspace,
    ) {
        let lowering = self;
        let (k, m, pixels) = (g.patch_len(), g.out_channels, g.output_pixels());
        let chunking = Chunking::new(g);
        // dw += dy_chunk · col_chunkᵀ, over the chunks of the images in `images`.
        let accumulate_images = |images: std::ops::Range<usize>, dw: &mut [f32], scratch: &mut [f32], threads| {
            let mut first = images.start;
            while first < images.end {
                let count = chunking.per.min(images.end - first);
                let cols = count * pixels;
                let (dy_mat, col_mat) = if Chunking::in_place(count) {
                    let col = match lowering {
                        Lowering::Direct => x.get(first),
                        Lowering::Im2col => {
                            im2col(g, x.get(first), scratch, Block::dense(g));
                            &scratch[..k * pixels]
                        }
                    };
                    (dy.get(first), col)
                } else {
                    let (dy_chunk, col) = scratch.split_at_mut(m * cols);
                    gather_output_grad(g, dy, first, count, dy_chunk);
                    lower(g, lowering, x, first, count, col);
                    (&*dy_chunk, &col[..k * cols])
                };
                matmul(
                    MatMut::row_major(dw, m, k),
                    MatRef::row_major(dy_mat, m, cols),
                    MatRef::row_major(col_mat, k, cols).t(),
                    true,
                    threads,
                );
                first += count;
            }
        };
        accumulate_weight_grad(x.count(), chunking, dw, ws, lowering.scratch_len(g), accumulate_images);
    }

    /// [`for_each_chunk`] over the images of `out` (`g`'s chunks), each with this lowering's scratch.
    fn for_each_chunk<F>(self, g: &ConvGeometry, out: &mut ImagesMut<'_>, ws: &mut Workspace, f: F)
    where
        F: Fn(usize, &mut [&mut [f32]], &mut [f32], Threads) + Sync,
    {
        for_each_chunk(out, Chunking::new(g), ws, self.scratch_len(g), f)
    }

    /// The workspace any pass over `g` takes.
    pub(in crate::ops::conv) fn workspace(self, g: &ConvGeometry) -> WorkspaceSize {
        weight_grad_workspace(g.out_channels * g.patch_len(), self.scratch_len(g))
    }

    /// The region one part takes for any pass over `g`: the chunk's lowered matrix (unless a lone image
    /// is used in place) and its output matrix (unless written in place).
    fn scratch_len(self, g: &ConvGeometry) -> usize {
        let chunking = Chunking::new(g);
        let cols = chunking.per * g.output_pixels();
        if Chunking::in_place(chunking.per) {
            match self {
                Lowering::Direct => 0,
                Lowering::Im2col => g.patch_len() * cols,
            }
        } else {
            (g.patch_len() + g.out_channels) * cols
        }
    }
}

/// Lays images `first..first + count` of `x` side by side as the chunk's lowered matrix
/// (`patch_len x count·pixels`) in `col`.
fn lower(g: &ConvGeometry, lowering: Lowering, x: Images<'_>, first: usize, count: usize, col: &mut [f32]) {
    let (k, pixels) = (g.patch_len(), g.output_pixels());
    let cols = count * pixels;
    for j in 0..count {
        let image = x.get(first + j);
        match lowering {
            Lowering::Im2col => im2col(
                g,
                image,
                col,
                Block {
                    row_stride: cols,
                    column: j * pixels,
                },
            ),
            Lowering::Direct => {
                for (c, plane) in image.chunks_exact(pixels).enumerate().take(k) {
                    col[c * cols + j * pixels..][..pixels].copy_from_slice(plane);
                }
            }
        }
    }
}

/// Copies images `first..first + count` of `dy` side by side into `out` (`out_channels x count·pixels`).
fn gather_output_grad(g: &ConvGeometry, dy: Images<'_>, first: usize, count: usize, out: &mut [f32]) {
    let pixels = g.output_pixels();
    let cols = count * pixels;
    for j in 0..count {
        for (o, plane) in dy.get(first + j).chunks_exact(pixels).enumerate() {
            out[o * cols + j * pixels..][..pixels].copy_from_slice(plane);
        }
    }
}

pub(in crate::ops::conv) fn forward(
    g: &ConvGeometry,
    lowering: Lowering,
    op: Operands<'_>,
    y: &mut ImagesMut<'_>,
    ws: &mut Workspace,
) {
    let Operands {
        x,
        w,
        fused: Fused { bias: b, relu },
    } = op;
    let (k, m, pixels) = (g.patch_len(), g.out_channels, g.output_pixels());
    lowering.for_each_chunk(g, y, ws, |first, images, scratch, threads| {
        let count = images.len();
        let cols = count * pixels;
        let in_place = Chunking::in_place(count);
        let (col_scratch, out_scratch) = scratch.split_at_mut(if in_place && lowering == Lowering::Direct {
            0
        } else {
            k * cols
        });
        let col: &[f32] = if in_place && lowering == Lowering::Direct {
            x.get(first)
        } else {
            lower(g, lowering, x, first, count, col_scratch);
            col_scratch
        };
        let product = |out: &mut [f32]| {
            // The bias is written first and the product accumulated onto it: no second pass.
            if let Some(b) = b {
                for (row, &bias) in out.chunks_exact_mut(cols).zip(b) {
                    row.fill(bias);
                }
            }
            matmul(
                MatMut::row_major(out, m, cols),
                MatRef::row_major(w, m, k),
                MatRef::row_major(&col[..k * cols], k, cols),
                b.is_some(),
                threads,
            );
        };
        if in_place {
            product(&mut *images[0]);
        } else {
            let out = &mut out_scratch[..m * cols];
            product(out);
            for (j, image) in images.iter_mut().enumerate() {
                for (o, plane) in image.chunks_exact_mut(pixels).enumerate() {
                    plane.copy_from_slice(&out[o * cols + j * pixels..][..pixels]);
                }
            }
        }
        if relu {
            images.iter_mut().for_each(|image| crate::kernels::relu_in_place(image));
        }
    });
}

/// Adds the input gradient into `dx`.
pub(in crate::ops::conv) fn backward_input(
    g: &ConvGeometry,
    lowering: Lowering,
    op: GradOperands<'_>,
    dx: &mut ImagesMut<'_>,
    ws: &mut Workspace,
) {
    let GradOperands { w, dy } = op;
    let (k, m, pixels) = (g.patch_len(), g.out_channels, g.output_pixels());
    let w_t = MatRef::row_major(w, m, k).t();
    lowering.for_each_chunk(g, dx, ws, |first, images, scratch, threads| {
        let count = images.len();
        let cols = count * pixels;
        if Chunking::in_place(count) {
            let dy_img = MatRef::row_major(dy.get(first), m, pixels);
            match lowering {
                Lowering::Direct => matmul(MatMut::row_major(images[0], k, pixels), w_t, dy_img, true, threads),
                Lowering::Im2col => {
                    let dcol = &mut scratch[..k * pixels];
                    matmul(MatMut::row_major(dcol, k, pixels), w_t, dy_img, false, threads);
                    col2im(g, dcol, Block::dense(g), images[0]);
                }
            }
            return;
        }
        let (dy_chunk, dcol) = scratch.split_at_mut(m * cols);
        gather_output_grad(g, dy, first, count, dy_chunk);
        let dcol = &mut dcol[..k * cols];
        matmul(
            MatMut::row_major(dcol, k, cols),
            w_t,
            MatRef::row_major(dy_chunk, m, cols),
            false,
            threads,
        );
        for (j, image) in images.iter_mut().enumerate() {
            match lowering {
                Lowering::Im2col => col2im(
                    g,
                    dcol,
                    Block {
                        row_stride: cols,
                        column: j * pixels,
                    },
                    image,
                ),
                Lowering::Direct => {
                    for (c, plane) in image.chunks_exact_mut(pixels).enumerate().take(k) {
                        let src = &dcol[c * cols + j * pixels..][..pixels];
                        plane.iter_mut().zip(src).for_each(|(d, s)| *d += s);
                    }
                }
            }
        }
    });
}
