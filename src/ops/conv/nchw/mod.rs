//! The reference and NCHW paths, behind the ndarray API's [`super::ConvAlgo`] and `--conv-algo`: plain
//! loops accumulating in float64 (`naive.rs`, the reference every other path is tested against), im2col
//! and GEMM (`im2col.rs`, `gemm_conv.rs`, with 1×1 convolutions as a GEMM on the input as it lies),
//! 1×k / k×1 convolutions as one GEMM per tap (`factorized.rs`), and Winograd F(4,3) on NCHW tensors
//! (`winograd.rs`: the Winograd of the ndarray API and of `Executor::set_conv_algo`, where the blocked
//! layout is not in use), with the batching the GEMM paths share (`batching.rs`).

pub(super) mod batching;
pub(super) mod factorized;
pub(super) mod gemm_conv;
pub(super) mod im2col;
pub(super) mod naive;
pub(super) mod winograd;
