//! # incept
//!
//! CPU-only training and inference for the GoogLeNet/Inception family. Every op has a forward pass and a
//! hand-written backward pass with PyTorch's and TensorFlow's geometry; activations are `ndarray` arrays in
//! NCHW order, and parameters (PyTorch layouts: conv weights `[out, in, kh, kw]`, linear `[out, in]`) are
//! passed to each call so the caller owns them and their gradients.
//!
//! Backward passes are split: input gradients are returned, while weight and bias gradients are *added*
//! into buffers the caller zeroes once per step, so a layer that needs only some of them skips the rest.
//!
//! ```
//! use incept::ndarray::{Array1, Array4};
//! use incept::ops::conv::Conv2d;
//! use incept::Padding;
//!
//! // A 3x3, padding-1 convolution from 2 to 4 channels on one 5x5 image.
//! let conv = Conv2d::new(2, 4, [3, 3]).with_padding(Padding::symmetric(1, 1));
//! let x = Array4::<f32>::ones([1, 2, 5, 5]);
//! let w = Array4::<f32>::from_elem(conv.weight_shape(), 0.5);
//! let b = Array1::<f32>::zeros(4);
//! let y = conv.forward(x.view(), w.view(), Some(b.view()))?;
//! assert_eq!(y.shape(), &[1, 4, 5, 5]);
//! assert_eq!(y[[0, 0, 2, 2]], 9.0); // 2 channels x 9 taps x 1.0 x 0.5
//!
//! // Backward: the gradient of sum(y) with respect to x and w.
//! let dy = Array4::<f32>::ones(y.raw_dim());
//! let dx = conv.backward_input(w.view(), dy.view(), [1, 2, 5, 5])?;
//! let mut dw = Array4::<f32>::zeros(conv.weight_shape());
//! conv.backward_weight(x.view(), dy.view(), dw.view_mut())?;
//! assert_eq!(dx[[0, 0, 2, 2]], 4.0 * 9.0 * 0.5); // the centre pixel feeds 4 channels x 9 taps
//! assert_eq!(dw[[0, 0, 1, 1]], 25.0); // the centre tap sees all 25 pixels
//! # Ok::<(), incept::Error>(())
//! ```
//!
//! Shape mistakes come back as [`Error::Shape`], naming the op, what it expected and what it found.
//!
//! To answer with a trained model, [`classifier::Classifier`] loads a checkpoint (or PyTorch weights saved
//! as safetensors) and classifies image files or arrays; `examples/classify.rs` does it in ten lines.
//! [`graph::Executor`] trains and runs any model of [`models`] step by step. [`onnx`] writes a model as
//! ONNX and turns an ONNX file exported elsewhere into the same static graph the models build.

#![warn(missing_docs)]

pub mod bench;
pub mod bf16;
pub mod blocked;
pub mod classifier;
pub mod data;
pub mod distributed;
pub mod error;
pub mod geometry;
pub mod graph;
pub mod int8;
pub mod io;
pub mod kernels;
pub(crate) mod matmul;
pub mod memory;
pub mod microkernel;
pub mod models;
pub mod onnx;
pub mod ops;
pub mod optim;
pub mod parallel;
#[cfg(feature = "cli")]
pub mod plot;
pub mod progress;
pub mod reduction;
pub mod tensor;
pub mod train;
pub mod workspace;

pub use error::{Error, Result};
pub use geometry::{Axis, Padding, Pads};
pub use ndarray;
