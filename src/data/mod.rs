//! Datasets: MNIST/Fashion-MNIST IDX files, CIFAR-10 binary files, user data as .npy, the resize
//! transform, and a loader that prepares the next batch on another thread while the current one trains.

pub mod augment;
pub mod cifar;
pub mod idx;
pub mod images;
pub mod loader;
pub mod npy;
pub mod resample;
pub mod transforms;

/// Fashion-MNIST's ten classes, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// CIFAR-10's ten classes, in label order.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Class names from a text file, one per line (blank lines at the end ignored); an error names the
/// file when it holds none.
pub fn read_class_names(path: &std::path::Path) -> crate::error::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| crate::error::Error::file(path.display(), e))?;
    let names: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
    let names = names.into_iter().rev().skip_while(|n| n.is_empty()).collect::<Vec<_>>();
    let names: Vec<String> = names.into_iter().rev().collect();
    if names.is_empty() {
        return Err(crate::error::Error::file(
            path.display(),
            "class names, one per line, but it is empty",
        ));
    }
    Ok(names)
}

/// Images and labels held in memory at their stored size.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// `count * channels * height * width` values, NCHW.
    pub images: Vec<f32>,
    /// One label per image.
    pub labels: Vec<usize>,
    /// `[channels, height, width]` per image.
    pub shape: [usize; 3],
    /// True when the values are bytes / 255 (IDX, CIFAR): resizing then follows PIL's byte arithmetic,
    /// as torchvision's `Resize` on a PIL image does ([`resample`]).
    pub from_bytes: bool,
}

impl Dataset {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per image.
    pub fn image_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// The first `n` images (all if fewer).
    pub fn truncate(mut self, n: usize) -> Self {
        let n = n.min(self.len());
        self.images.truncate(n * self.image_len());
        self.labels.truncate(n);
        self
    }
}
