//! Sliding-window geometry shared by convolution and pooling: padding rules and output sizes per axis,
//! with PyTorch's and TensorFlow's conventions (asymmetric padding, TF `SAME`, `ceil_mode`).

use crate::error::{Error, Result};

/// How a window op pads its input. Resolved to concrete [`Pads`] once the input size is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Padding {
    /// No padding (TensorFlow's `VALID`).
    #[default]
    Valid,
    /// TensorFlow's `SAME`: output size `ceil(input / stride)`, the odd pixel of padding at the bottom/right.
    Same,
    /// Explicit padding per side.
    Explicit(Pads),
}

impl Padding {
    /// The same padding on both sides of each axis, as PyTorch's `padding=(ph, pw)`.
    pub fn symmetric(ph: usize, pw: usize) -> Self {
        Padding::Explicit(Pads {
            top: ph,
            bottom: ph,
            left: pw,
            right: pw,
        })
    }

    /// Padding per side: top, bottom, left, right.
    pub fn explicit(top: usize, bottom: usize, left: usize, right: usize) -> Self {
        Padding::Explicit(Pads {
            top,
            bottom,
            left,
            right,
        })
    }

    /// Concrete pads for an input of `input` = `[h, w]`.
    pub fn resolve(self, input: [usize; 2], kernel: [usize; 2], stride: [usize; 2], dilation: [usize; 2]) -> Pads {
        match self {
            Padding::Valid => Pads::default(),
            Padding::Explicit(p) => p,
            Padding::Same => {
                let (top, bottom) = same_pads(input[0], kernel[0], stride[0], dilation[0]);
                let (left, right) = same_pads(input[1], kernel[1], stride[1], dilation[1]);
                Pads {
                    top,
                    bottom,
                    left,
                    right,
                }
            }
        }
    }
}

/// TensorFlow's SAME rule for one axis: total padding so that `out = ceil(in / stride)`, split with the
/// extra pixel after.
fn same_pads(input: usize, kernel: usize, stride: usize, dilation: usize) -> (usize, usize) {
    let out = input.div_ceil(stride.max(1));
    let span = (kernel.max(1) - 1) * dilation + 1;
    let total = ((out.max(1) - 1) * stride + span).saturating_sub(input);
    (total / 2, total - total / 2)
}

/// Padding in pixels on each side of a feature map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pads {
    /// Rows added above.
    pub top: usize,
    /// Rows added below.
    pub bottom: usize,
    /// Columns added on the left.
    pub left: usize,
    /// Columns added on the right.
    pub right: usize,
}

/// One spatial axis of a window op, fully resolved: which input index each (output, tap) pair reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Axis {
    /// Input length.
    pub input: usize,
    /// Kernel taps.
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
    /// Step between taps.
    pub dilation: usize,
    /// Padding before the first input element.
    pub pad_lo: usize,
    /// Padding after the last input element.
    pub pad_hi: usize,
    /// Output length.
    pub output: usize,
}

impl Axis {
    /// Resolves one axis with PyTorch's output-size rule:
    /// `out = floor_or_ceil((in + lo + hi - dilation*(k-1) - 1) / stride) + 1`, and in `ceil_mode` the last
    /// window is dropped if it would start in the right padding.
    pub fn new(
        op: &str,
        input: usize,
        kernel: usize,
        stride: usize,
        dilation: usize,
        (pad_lo, pad_hi): (usize, usize),
        ceil_mode: bool,
    ) -> Result<Axis> {
        if kernel == 0 || stride == 0 || dilation == 0 {
            return Err(Error::config(
                op,
                format!("kernel, stride and dilation must be at least 1, found {kernel}, {stride}, {dilation}"),
            ));
        }
        let span = (kernel - 1) * dilation + 1;
        let padded = input + pad_lo + pad_hi;
        if padded < span {
            return Err(Error::shape(
                op,
                format!("a padded input of at least {span} (the kernel span) along each axis"),
                format!("{input} + padding {pad_lo}+{pad_hi} = {padded}"),
            ));
        }
        let room = padded - span;
        let mut output = if ceil_mode {
            room.div_ceil(stride)
        } else {
            room / stride
        } + 1;
        if ceil_mode && (output - 1) * stride >= input + pad_lo {
            output -= 1;
        }
        Ok(Axis {
            input,
            kernel,
            stride,
            dilation,
            pad_lo,
            pad_hi,
            output,
        })
    }

    /// The input index read by output `o` at tap `k`, or `None` if it falls in the padding.
    #[inline]
    pub fn input_index(&self, o: usize, k: usize) -> Option<usize> {
        let i = (o * self.stride + k * self.dilation).checked_sub(self.pad_lo)?;
        (i < self.input).then_some(i)
    }

    /// The outputs whose tap `k` reads a real input element (not padding), as a half-open range.
    pub fn valid_outputs(&self, k: usize) -> std::ops::Range<usize> {
        let offset = k * self.dilation;
        // o*stride + offset >= pad_lo  and  o*stride + offset < pad_lo + input
        let lo = self.pad_lo.saturating_sub(offset).div_ceil(self.stride);
        let hi = (self.pad_lo + self.input).saturating_sub(offset).div_ceil(self.stride);
        let hi = hi.min(self.output);
        lo.min(hi)..hi
    }

    /// The first input index of window `o` (may be in the padding, hence signed).
    #[inline]
    pub fn window_start(&self, o: usize) -> isize {
        (o * self.stride) as isize - self.pad_lo as isize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_sizes_match_pytorch_and_tensorflow() {
        // 96 -> 48 for GoogLeNet's 7x7/2 stem with padding 3.
        assert_eq!(Axis::new("t", 96, 7, 2, 1, (3, 3), false).unwrap().output, 48);
        // torchvision GoogLeNet: MaxPool2d(3, 2, ceil_mode=True) on 112 gives 56, floor gives 55.
        assert_eq!(Axis::new("t", 112, 3, 2, 1, (0, 0), true).unwrap().output, 56);
        assert_eq!(Axis::new("t", 112, 3, 2, 1, (0, 0), false).unwrap().output, 55);
        // ceil_mode drops a window that would start in the right padding: in 5, k 2, s 2, pad 1.
        assert_eq!(Axis::new("t", 5, 2, 2, 1, (1, 1), true).unwrap().output, 3);
        // TF SAME with stride 2 on an even input pads asymmetrically: 8, k3, s2 -> total 1 -> (0, 1).
        let p = Padding::Same.resolve([8, 7], [3, 3], [2, 2], [1, 1]);
        assert_eq!((p.top, p.bottom, p.left, p.right), (0, 1, 1, 1));
        assert_eq!(Axis::new("t", 8, 3, 2, 1, (0, 1), false).unwrap().output, 4);
        // Dilation widens the span.
        assert_eq!(Axis::new("t", 10, 3, 1, 2, (0, 0), false).unwrap().output, 6);
        assert!(Axis::new("t", 2, 5, 1, 1, (0, 0), false).is_err());
        assert!(Axis::new("t", 2, 0, 1, 1, (0, 0), false).is_err());
    }

    #[test]
    fn valid_outputs_agree_with_input_index() {
        for input in 1..9 {
            for kernel in 1..5 {
                for stride in 1..4 {
                    for dilation in 1..3 {
                        for lo in 0..3 {
                            for hi in 0..3 {
                                let Ok(a) = Axis::new("t", input, kernel, stride, dilation, (lo, hi), false) else {
                                    continue;
                                };
                                for k in 0..kernel {
                                    let expected: Vec<usize> =
                                        (0..a.output).filter(|&o| a.input_index(o, k).is_some()).collect();
                                    let found: Vec<usize> = a.valid_outputs(k).collect();
                                    assert_eq!(expected, found, "{a:?} tap {k}");
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
