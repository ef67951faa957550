//! What the subcommands share: the data flags and how they load a dataset, the convolution-algorithm
//! flag, and how a flag, a checkpoint's record and a default resolve into one model and input size.

use std::path::{Path, PathBuf};

use clap::ValueEnum;
use incept::data::{self, Dataset, cifar, idx, npy};
use incept::io::checkpoint::{InputSize, Recorded, TensorFile, resolve};
use incept::models;
use incept::ops::conv::ConvAlgo;
use incept::{Error, Result};

/// Where Debian's `dataset-fashion-mnist` package installs the four IDX files.
pub(crate) const DEBIAN_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// Convolution algorithms that can run every layer, for `train --conv-algo` and `bench --conv-algo`.
#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub(crate) enum ConvAlgoArg {
    /// Each layer's algorithm as the plan chose it.
    Auto,
    /// Plain loops accumulating in float64 (slow): rounding far below float32's, for checking gradients
    /// against a float64 reference.
    Naive,
    /// im2col + GEMM on every layer.
    Im2col,
    /// incept's microkernel on the blocked channel layout (weights packed once per update).
    Direct,
}

impl ConvAlgoArg {
    pub(crate) fn algo(self) -> ConvAlgo {
        match self {
            ConvAlgoArg::Auto => ConvAlgo::Auto,
            ConvAlgoArg::Naive => ConvAlgo::Naive,
            ConvAlgoArg::Im2col => ConvAlgo::Im2colGemm,
            ConvAlgoArg::Direct => ConvAlgo::Direct,
        }
    }
}

/// `--precision`: the arithmetic of the convolutions ([`incept::graph::Precision`]).
#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub(crate) enum PrecisionArg {
    /// float32 everywhere.
    F32,
    /// Mixed precision: the direct convolutions multiply bf16 inputs, weights and output gradients and
    /// sum in float32 (AVX512-BF16 where the CPU has it); weights, optimizer, batch norm and loss stay
    /// float32.
    Bf16,
    /// int8 inference: an int8 checkpoint written by `incept quantize` (eval, predict), or for bench,
    /// the weights quantized on random calibration inputs.
    Int8,
}

impl PrecisionArg {
    /// The float arithmetic this flag asks for; `--precision int8` is an error where `flag_use` (the
    /// command) runs float weights only.
    pub(crate) fn precision(self, flag_use: &str) -> Result<incept::graph::Precision> {
        match self {
            PrecisionArg::F32 => Ok(incept::graph::Precision::F32),
            PrecisionArg::Bf16 => Ok(incept::graph::Precision::Bf16),
            PrecisionArg::Int8 => Err(Error::config(
                "--precision",
                format!(
                    "int8 runs int8 checkpoints (eval, predict) and bench; {flag_use} runs f32 or bf16 \
                     (`incept quantize` makes an int8 checkpoint of trained weights)"
                ),
            )),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum DatasetArg {
    /// (Fashion-)MNIST IDX files.
    FashionMnist,
    /// CIFAR-10's binary files (data_batch_1.bin ... data_batch_5.bin, test_batch.bin).
    Cifar10,
}

#[derive(clap::Args)]
pub(crate) struct DataArgs {
    /// The dataset's format.
    #[arg(long, value_enum, default_value = "fashion-mnist")]
    pub(crate) dataset: DatasetArg,
    /// Directory with the dataset's files: the (Fashion-)MNIST IDX files (.gz or raw), or CIFAR-10's
    /// binary files.
    #[arg(long, default_value = DEBIAN_FASHION_MNIST)]
    pub(crate) data: PathBuf,
    /// Your own data instead: float32 images [n, c, h, w] and int64 labels [n], as .npy (used for both
    /// training and testing).
    #[arg(long, num_args = 2, value_names = ["IMAGES", "LABELS"])]
    pub(crate) data_npy: Option<Vec<PathBuf>>,
    /// A text file with one class name per line, in label order, recorded in the checkpoint so
    /// `incept predict` names its answers (default: Fashion-MNIST's or CIFAR-10's ten names; none for
    /// --data-npy).
    #[arg(long, value_name = "FILE")]
    pub(crate) classes: Option<PathBuf>,
}

/// The class names a run records: `--classes FILE`, else the dataset's own (none for `.npy` data); an
/// error when their count is not the model's number of classes.
pub(crate) fn class_names(args: &DataArgs, classes: usize) -> Result<Vec<String>> {
    let names: Vec<String> = match (&args.classes, &args.data_npy, args.dataset) {
        (Some(path), _, _) => data::read_class_names(path)?,
        (None, Some(_), _) => return Ok(Vec::new()),
        (None, None, DatasetArg::FashionMnist) => data::FASHION_MNIST_CLASSES.map(String::from).to_vec(),
        (None, None, DatasetArg::Cifar10) => data::CIFAR10_CLASSES.map(String::from).to_vec(),
    };
    if names.len() != classes {
        return Err(Error::config(
            "classes",
            format!("the model has {classes} classes, the class names list {}", names.len()),
        ));
    }
    Ok(names)
}

pub(crate) fn load_data(args: &DataArgs, classes: usize) -> Result<(Dataset, Dataset)> {
    if let Some(paths) = &args.data_npy {
        let data = npy::read_pair(&paths[0], &paths[1], classes)?;
        return Ok((data.clone(), data));
    }
    if args.dataset == DatasetArg::Cifar10 {
        if args.data == Path::new(DEBIAN_FASHION_MNIST) {
            return Err(Error::config(
                "data",
                "--dataset cifar10 needs --data DIR, the directory with data_batch_1.bin ... test_batch.bin",
            ));
        }
        return cifar::read_dir(&args.data);
    }
    if !args.data.exists() {
        let hint = if args.data == Path::new(DEBIAN_FASHION_MNIST) {
            "install Fashion-MNIST with `sudo apt-get install -y dataset-fashion-mnist`, or pass --data DIR"
        } else {
            "pass --data DIR with the four IDX files (train-images-idx3-ubyte[.gz], ...)"
        };
        return Err(Error::file(args.data.display(), format!("no such directory: {hint}")));
    }
    idx::read_dir(&args.data)
}

/// The first `n` images of `data` (all without a limit); `flag` names the option for the error a limit of
/// 0 gets.
pub(crate) fn limit(data: Dataset, n: Option<usize>, flag: &str) -> Result<Dataset> {
    match n {
        Some(0) => Err(Error::config(
            flag,
            format!("{flag} must be at least 1 (omit it to use every image)"),
        )),
        Some(n) => Ok(data.truncate(n)),
        None => Ok(data),
    }
}

/// The model a command runs on weights: `--model`, or the one the checkpoint records (they must agree), else the
/// one whose state_dict the file holds.
pub(crate) fn resolve_model(
    flag: Option<String>,
    recorded: &Recorded,
    file: &TensorFile,
    checkpoint: &Path,
) -> Result<String> {
    resolve("model", flag, recorded.model.clone(), checkpoint, || {
        models::detect(file, checkpoint).map(str::to_string)
    })
}

/// The input size a command runs at: `--resize`, or the one the checkpoint records (they must agree),
/// else `native`.
pub(crate) fn resolve_size(
    resize: Option<usize>,
    recorded: &Recorded,
    checkpoint: &Path,
    native: [usize; 2],
) -> Result<InputSize> {
    let flag = match resize {
        Some(0) => return Err(Error::config("--resize", "--resize must be at least 1")),
        other => other.map(|s| InputSize([s, s])),
    };
    resolve("input size", flag, recorded.size.map(InputSize), checkpoint, || {
        Ok(InputSize(native))
    })
}

/// The graph and weights a `--weights` file holds, with the model's name and the file's metadata (its
/// tensors taken out): an ONNX model's own graph (named by the model its metadata records, else by the
/// file), or the model a safetensors file records (else the one whose state_dict it holds, or `--model`),
/// at `--resize` or the input size the file records.
pub(crate) fn load_weights(
    model: Option<String>,
    weights: &Path,
    resize: Option<usize>,
) -> Result<(String, models::Model, TensorFile)> {
    if incept::onnx::is_onnx(weights) {
        let imported = incept::onnx::read(weights, resize.map(|s| [s, s]))?;
        let recorded = imported.metadata.get("model").cloned();
        if let Some(m) = model.filter(|m| recorded.as_ref() != Some(m)) {
            return Err(Error::config(
                "--model",
                format!(
                    "{} is an ONNX model with a graph of its own, not {m}; drop --model",
                    weights.display()
                ),
            ));
        }
        let name = recorded.unwrap_or_else(|| weights.display().to_string());
        let model = models::Model {
            graph: imported.graph,
            params: imported.params,
        };
        let file = TensorFile {
            tensors: Default::default(),
            metadata: imported.metadata,
        };
        return Ok((name, model, file));
    }
    let mut file = TensorFile::read(weights)?;
    let recorded = file.recorded(weights)?;
    let name = resolve_model(model, &recorded, &file, weights)?;
    let mut config = models::config_from_weights(&name, &file)?;
    config.size = resolve_size(resize, &recorded, weights, config.size)?.0;
    let graph = models::build(&name, config)?;
    // Checked with the parameters loaded, as Executor::new checks.
    let params = file.params_for(&graph, weights)?;
    file.tensors.clear();
    Ok((name, models::Model { graph, params }, file))
}
