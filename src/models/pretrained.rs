//! What weights from torchvision and timm expect of their input, so `incept predict` and
//! [`crate::classifier::Classifier`] prepare an image as those libraries do for them: the resize and
//! crop of their ImageNet evaluation transform, its normalization, torchvision's `transform_input`, and
//! ImageNet's class names for a 1000-class head.

use crate::data::images::{Fit, ImageRecipe};
use crate::data::resample::Filter;
use crate::data::transforms::Normalization;

/// The preprocessing the weights of one model's source library are evaluated with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pretrained {
    /// The library whose state_dict names and preprocessing these are.
    pub source: &'static str,
    /// Resize and crop at the model's native input size.
    pub recipe: ImageRecipe,
    /// Normalization mean per RGB channel.
    pub mean: [f32; 3],
    /// Normalization standard deviation per RGB channel.
    pub std: [f32; 3],
    /// Whether the model has torchvision's `transform_input` (which maps ImageNet-normalized input to
    /// the original Google weights' own; torchvision turns it on when it loads its ImageNet weights).
    pub transform_input: bool,
}

/// ImageNet's mean and standard deviation per channel (torchvision's `Normalize` for its weights).
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// torchvision's `GoogLeNet_Weights.IMAGENET1K_V1.transforms()`.
pub const TORCHVISION_GOOGLENET: Pretrained = torchvision(256);
/// torchvision's `Inception_V3_Weights.IMAGENET1K_V1.transforms()`.
pub const TORCHVISION_INCEPTION_V3: Pretrained = torchvision(342);
/// timm's `inception_v4` data config: crop_pct 0.875, bicubic, mean and std 0.5.
pub const TIMM_INCEPTION_V4: Pretrained = timm(341);
/// timm's `inception_resnet_v2` data config: crop_pct 0.8975, bicubic, mean and std 0.5.
pub const TIMM_INCEPTION_RESNET_V2: Pretrained = timm(333);

const fn torchvision(shorter_side: usize) -> Pretrained {
    resize_and_crop(
        "torchvision",
        shorter_side,
        Filter::Bilinear,
        [IMAGENET_MEAN, IMAGENET_STD],
        true,
    )
}

const fn timm(shorter_side: usize) -> Pretrained {
    resize_and_crop("timm", shorter_side, Filter::Bicubic, [[0.5; 3], [0.5; 3]], false)
}

/// A library's evaluation transform: the shorter side resized to `shorter_side` with `filter`, the centre
/// crop, then `(x - mean) / std`.
const fn resize_and_crop(
    source: &'static str,
    shorter_side: usize,
    filter: Filter,
    [mean, std]: [[f32; 3]; 2],
    transform_input: bool,
) -> Pretrained {
    Pretrained {
        source,
        recipe: ImageRecipe {
            fit: Fit::ResizeThenCenterCrop { shorter_side },
            filter,
        },
        mean,
        std,
        transform_input,
    }
}

impl Pretrained {
    /// The normalization these weights are evaluated with.
    pub fn normalization(&self) -> Normalization {
        Normalization {
            mean: self.mean.to_vec(),
            std: self.std.to_vec(),
        }
    }

    /// The recipe at input size `size` instead of the native `native`: the shorter side scales with it.
    pub fn recipe_at(&self, native: usize, size: [usize; 2]) -> ImageRecipe {
        match self.recipe.fit {
            Fit::ResizeThenCenterCrop { shorter_side } if size != [native, native] => {
                let crop = size[0].min(size[1]);
                ImageRecipe {
                    fit: Fit::ResizeThenCenterCrop {
                        shorter_side: (shorter_side * crop).div_ceil(native).max(size[0].max(size[1])),
                    },
                    ..self.recipe
                }
            }
            _ => self.recipe,
        }
    }
}

/// torchvision's `transform_input` on one ImageNet-normalized RGB image (`[3, h, w]`): the input the
/// original Google weights were trained on, `(x - 0.5) / 0.5` per channel, written as torchvision
/// writes it (`x * (std / 0.5) + (mean - 0.5) / 0.5`).
pub fn transform_input(image: &mut [f32]) {
    let plane = image.len() / 3;
    for (c, values) in image.chunks_exact_mut(plane).enumerate() {
        let scale = (f64::from(IMAGENET_STD[c]) / 0.5) as f32;
        let shift = ((f64::from(IMAGENET_MEAN[c]) - 0.5) / 0.5) as f32;
        values.iter_mut().for_each(|v| *v = *v * scale + shift);
    }
}

/// ImageNet's 1000 class names in output order (torchvision's `_IMAGENET_CATEGORIES`), for weights with
/// a 1000-class head that record no names.
pub fn imagenet_classes() -> Vec<String> {
    include_str!("imagenet_classes.txt")
        .lines()
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imagenet_has_1000_names() {
        let names = imagenet_classes();
        assert_eq!(names.len(), 1000);
        assert_eq!((names[0].as_str(), names[999].as_str()), ("tench", "toilet tissue"));
        assert!(names.iter().all(|n| !n.trim().is_empty()));
    }

    #[test]
    fn transform_input_is_the_half_normalization() {
        // ImageNet-normalized x, mapped back to [0, 1] and normalized by mean 0.5, std 0.5 instead.
        let raw = [0.0f32, 0.25, 0.5, 1.0];
        let mut image: Vec<f32> = (0..3)
            .flat_map(|c| raw.iter().map(move |&r| (r - IMAGENET_MEAN[c]) / IMAGENET_STD[c]))
            .collect();
        transform_input(&mut image);
        for (c, plane) in image.chunks_exact(4).enumerate() {
            for (&r, &v) in raw.iter().zip(plane) {
                assert!((v - (r - 0.5) / 0.5).abs() < 1e-6, "channel {c}: {v} for {r}");
            }
        }
    }
}
