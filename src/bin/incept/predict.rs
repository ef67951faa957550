//! `incept predict`: the classes of image files, or the logits of a .npy tensor fed as given.

use std::path::PathBuf;

use crate::args::PrecisionArg;
use incept::classifier::Classifier;
use incept::data::{self, images, npy};
use incept::io::output::check_file;
use incept::{Error, Result};

#[derive(clap::Args)]
pub(crate) struct PredictArgs {
    /// The model (default: the one the checkpoint records, else the one whose state_dict the file holds).
    #[arg(long)]
    model: Option<String>,
    /// The weights: an incept checkpoint, a PyTorch state_dict saved as safetensors, or an ONNX model
    /// (its own graph).
    #[arg(long)]
    weights: PathBuf,
    /// Image files (PNG, JPEG) or directories of them: each is converted to the model's channels,
    /// resized to the checkpoint's input size as torchvision's Resize does, normalized as the run was,
    /// and answered with its most likely classes. A torchvision or timm state_dict gets that library's
    /// ImageNet preprocessing instead (resize, centre crop, normalization).
    #[arg(value_name = "IMAGE|DIR", conflicts_with = "input")]
    images: Vec<PathBuf>,
    /// Instead of image files: the network's input tensor [n, c, h, w] as float32 .npy, at the
    /// checkpoint's input size, fed as given (as PyTorch's `model(x)` takes it: not normalized).
    #[arg(long, requires = "output")]
    input: Option<PathBuf>,
    /// With --input: the tensor holds images in [0, 1]; normalize them as image files are (the
    /// checkpoint's normalization, or the library's for torchvision / timm weights) before the network.
    #[arg(long, requires = "input")]
    normalize_input: bool,
    /// Write the logits [n, classes] as float32 .npy here (required with --input).
    #[arg(long)]
    output: Option<PathBuf>,
    /// How many classes to print per image, most likely first.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Print one JSON object per image (file, then classes with index and probability).
    #[arg(long)]
    json: bool,
    /// Class names, one per line in label order (default: the ones the checkpoint records; without
    /// either, classes are named by number).
    #[arg(long, value_name = "FILE")]
    classes: Option<PathBuf>,
    /// torchvision's transform_input (part of its googlenet / inception_v3 model, run on images and
    /// tensors alike), true or false. Default: what the checkpoint records; for a torchvision state_dict,
    /// which records nothing, true with a 1000-class head (torchvision turns it on for its ImageNet
    /// weights only) and false with any other (printed when assumed); false for every other model.
    #[arg(long, value_name = "BOOL")]
    transform_input: Option<bool>,
    /// The arithmetic of the convolutions: f32, or bf16 products summed in float32 (no Winograd); int8
    /// for an int8 checkpoint (default: int8 for an int8 checkpoint, else f32).
    #[arg(long, value_enum)]
    precision: Option<PrecisionArg>,
}

/// `incept predict`: eval-mode logits of a .npy batch.
pub(crate) fn predict_command(args: PredictArgs) -> Result<()> {
    let PredictArgs {
        model,
        weights,
        images,
        input,
        output,
        top_k,
        json,
        classes,
        transform_input,
        normalize_input,
        precision,
    } = args;
    if top_k == 0 {
        return Err(Error::config("top-k", "--top-k must be at least 1"));
    }
    if let Some(path) = &output {
        check_file("--output", path)?;
    }
    // The .npy images' own size, for weights that record none.
    let x = input.as_deref().map(npy::read_images).transpose()?;
    let size = x.as_ref().map(|x| [x.shape()[2], x.shape()[3]]);
    let mut classifier = Classifier::at_size(model.as_deref(), &weights, size).map_err(|e| match (&input, e) {
        (Some(input), Error::Config { reason, .. }) if reason.contains("resize them first") => {
            Error::file(input.display(), reason)
        }
        (_, e) => e,
    })?;
    match (precision, classifier.int8_kernel()) {
        (None | Some(PrecisionArg::Int8), Some(_)) | (None, None) => {}
        (Some(PrecisionArg::Int8), None) => {
            return Err(Error::config(
                "--precision",
                format!(
                    "{} holds float weights; `incept quantize --weights {} --out FILE` makes an int8 checkpoint",
                    weights.display(),
                    weights.display()
                ),
            ));
        }
        (Some(p), _) => classifier.set_precision(p.precision("predict")?)?,
    }
    if let Some(isa) = classifier.bf16_kernel() {
        eprintln!("convolutions in bf16 on {} (float32 sums)", isa.name());
    }
    if let Some(isa) = classifier.int8_kernel() {
        eprintln!("convolutions in int8 on {} (an int8 checkpoint)", isa.name());
    }
    match transform_input {
        Some(on) => classifier.set_transform_input(on)?,
        None => {
            if let Some(assumed) = classifier.transform_input_assumption() {
                let other = !classifier.transform_input();
                eprintln!("{assumed}; --transform-input {other} to change it");
            }
        }
    }
    if let Some(path) = &classes {
        let names = data::read_class_names(path)?;
        let (found, classes) = (names.len(), classifier.class_names().len());
        classifier.set_class_names(names).map_err(|_| {
            Error::config(
                "classes",
                format!("{} names {found} classes, the model has {classes}", path.display()),
            )
        })?;
    }
    let (names, logits) = match (&input, x) {
        (Some(input), Some(x)) => {
            let [c, ..] = classifier.input_shape();
            if x.shape()[1] != c {
                return Err(Error::file(
                    input.display(),
                    format!(
                        "images with {c} channel(s), as the weights expect, found {}",
                        x.shape()[1]
                    ),
                ));
            }
            let names: Vec<String> = (0..x.shape()[0]).map(|i| format!("{}[{i}]", input.display())).collect();
            let logits = if normalize_input {
                eprintln!(
                    "preprocessing of {} (--normalize-input): {}; {}",
                    input.display(),
                    classifier.preprocessing(),
                    classifier.network_input_step()
                );
                classifier.forward_images(x.view())?
            } else {
                eprintln!(
                    "preprocessing of {}: none, the tensor goes to the network as given; {}",
                    input.display(),
                    classifier.network_input_step()
                );
                classifier.forward_tensor(x.view())?
            };
            (names, logits)
        }
        _ => {
            if images.is_empty() {
                return Err(Error::config(
                    "predict",
                    "give image files or directories to classify, or --input X.npy --output Y.npy",
                ));
            }
            let files = images::image_files(&images)?;
            let x = classifier.read_images(&files)?;
            eprintln!(
                "preprocessing of the images: {}, values in [0, 1], {}; {}",
                classifier.image_recipe(),
                classifier.preprocessing(),
                classifier.network_input_step()
            );
            let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            (names, classifier.forward_images(x.view())?)
        }
    };
    if let Some(output) = &output {
        npy::write_matrix(output, &logits)?;
        if input.is_some() {
            println!(
                "wrote {} x {} logits to {}",
                logits.nrows(),
                logits.ncols(),
                output.display()
            );
            return Ok(());
        }
    }
    for (name, top) in names.iter().zip(classifier.top(&logits, top_k)) {
        if json {
            let top: Vec<serde_json::Value> = top
                .iter()
                .map(|p| serde_json::json!({"class": p.class, "index": p.index, "probability": p.probability}))
                .collect();
            println!("{}", serde_json::json!({"file": name, "top": top}));
        } else {
            println!("{name}");
            for p in &top {
                println!("  {:>6.2}%  {}", 100.0 * p.probability, p.class);
            }
        }
    }
    Ok(())
}
