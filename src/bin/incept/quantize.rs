//! `incept quantize`: post-training int8 quantization of float32 weights, calibrated on training images,
//! then the float32 and int8 networks side by side on the test set.

use std::path::PathBuf;

use crate::args::{DataArgs, limit, load_data, resolve_model, resolve_size};
use incept::graph::{Executor, Mode};
use incept::int8::{CalibrationMethod, QuantizedNetwork, Ranges};
use incept::io::checkpoint::{TensorFile, model_metadata};
use incept::io::output;
use incept::models::{self, Model};
use incept::tensor::Images;
use incept::train::{loss_and_accuracy, network_inputs};
use incept::{Error, Result};

#[derive(clap::Args)]
pub(crate) struct QuantizeArgs {
    /// The model (default: the one the checkpoint records, else the one whose state_dict the file holds).
    #[arg(long)]
    model: Option<String>,
    /// The float32 weights: an incept checkpoint, or a PyTorch state_dict of one of the chapter's models
    /// saved as safetensors (torchvision's and timm's are refused: their preprocessing is not applied to
    /// the calibration images yet).
    #[arg(long)]
    weights: PathBuf,
    /// Where to write the int8 checkpoint.
    #[arg(long)]
    out: PathBuf,
    /// Input size (square) (default: the checkpoint's, else the model's native size).
    #[arg(long)]
    resize: Option<usize>,
    /// Training images the float32 network runs to measure each layer's range, evenly spaced through
    /// the training set.
    #[arg(long, default_value_t = 512)]
    calibration_images: usize,
    /// How a layer's range is chosen from the values seen: `minmax` (smallest to largest), or
    /// `percentile-P` (the values between the (100-P)-th and P-th percentiles). The default,
    /// percentile-99.999, agreed with float32 slightly more often than minmax on both main-job
    /// checkpoints tried (docs/int8.md).
    #[arg(long, default_value = "percentile-99.999")]
    calibration: CalibrationMethod,
    /// Images per forward pass.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Compare float32 and int8 on only the first N test images (0: skip the comparison).
    #[arg(long)]
    test_limit: Option<usize>,
    #[command(flatten)]
    data: DataArgs,
}

/// `incept quantize`.
pub(crate) fn quantize_command(args: QuantizeArgs) -> Result<()> {
    let QuantizeArgs {
        model,
        weights,
        out,
        resize,
        calibration_images,
        calibration,
        batch,
        test_limit,
        data,
    } = args;
    output::check_file("--out", &out)?;
    if incept::onnx::is_onnx(&weights) {
        return Err(Error::config(
            "--weights",
            format!(
                "{} is an ONNX model; quantize takes float32 safetensors weights of a zoo model (an imported \
                 graph is not quantized yet; quantize the checkpoint an incept export was written from)",
                weights.display()
            ),
        ));
    }
    if batch == 0 || calibration_images == 0 {
        return Err(Error::config(
            "quantize",
            "--batch and --calibration-images must be at least 1",
        ));
    }
    let file = TensorFile::read(&weights)?;
    let recorded = file.recorded(&weights)?;
    let model = resolve_model(model, &recorded, &file, &weights)?;
    // torchvision's and timm's state_dicts expect their library's preprocessing and, for googlenet and
    // inception_v3, transform_input, which the classifier applies outside the network: calibrating on
    // the data as given would measure ranges the network never sees. Refused, with the way round.
    let foreign = recorded.model.is_none() && models::entry(&model)?.pretrained.is_some();
    let transform_input = file.metadata.get("transform_input").is_some_and(|v| v == "true");
    if foreign || transform_input {
        return Err(Error::config(
            "quantize",
            format!(
                "{} expects {}, which incept quantize does not apply to its calibration images yet; \
                 quantize weights trained with incept (or fine-tuned with transform_input off)",
                weights.display(),
                if transform_input {
                    "torchvision's transform_input"
                } else {
                    "its library's ImageNet preprocessing"
                }
            ),
        ));
    }
    let mut config = models::config_from_weights(&model, &file)?;
    config.size = resolve_size(resize, &recorded, &weights, config.size)?.0;
    let graph = models::build(&model, config)?;
    let params = file.params_for(&graph, &weights)?;
    let normalization = file.normalization(&weights)?;
    let (train_set, test_set) = load_data(&data, graph.output_len())?;
    let shape = graph.input_shape();
    let per_image: usize = shape.iter().product();

    // Calibration: evenly spaced training images, prepared as evaluation prepares them.
    let count = calibration_images.min(train_set.len());
    let mut inputs = vec![0.0; count * per_image];
    for (i, dst) in inputs.chunks_exact_mut(per_image).enumerate() {
        let at = i * train_set.len() / count;
        network_inputs(&train_set, at..at + 1, shape, normalization.as_ref(), dst);
    }
    let capacity = batch.min(count.max(test_set.len())).max(1);
    let mut exec = Executor::new(
        Model {
            graph: graph.clone(),
            params: params.clone(),
        },
        capacity,
    )?;
    let ranges = Ranges::measure(&mut exec, &inputs, calibration)?;
    let network = QuantizedNetwork::new(&graph, &params, &ranges)?;
    let mut metadata = file.metadata.clone();
    metadata.extend(model_metadata(&model, &config));
    metadata.insert("calibration".to_string(), calibration.to_string());
    metadata.insert("calibration_images".to_string(), count.to_string());
    network.save(&out, &metadata)?;
    println!(
        "wrote {} ({model} int8, {calibration} calibration on {count} training images)",
        out.display()
    );

    if test_limit == Some(0) {
        return Ok(());
    }
    let test_set = limit(test_set, test_limit, "--test-limit")?;
    let classes = graph.output_len();
    let (mut float_logits, mut int8_logits) = (Vec::new(), Vec::new());
    let mut images = vec![0.0; capacity * per_image];
    for start in (0..test_set.len()).step_by(capacity) {
        let n = capacity.min(test_set.len() - start);
        let images = &mut images[..n * per_image];
        network_inputs(&test_set, start..start + n, shape, normalization.as_ref(), images);
        exec.forward(Images::dense(images, n, per_image), Mode::Eval)?;
        float_logits.extend(exec.output_vec());
        int8_logits.extend(network.forward(images)?);
    }
    let (float_loss, float_acc) = loss_and_accuracy(&float_logits, classes, &test_set.labels)?;
    let (int8_loss, int8_acc) = loss_and_accuracy(&int8_logits, classes, &test_set.labels)?;
    let top = |row: &[f32]| (0..row.len()).fold(0, |b, c| if row[c] > row[b] { c } else { b });
    let agree = float_logits
        .chunks_exact(classes)
        .zip(int8_logits.chunks_exact(classes))
        .filter(|(f, q)| top(f) == top(q))
        .count();
    println!("float32: test loss {float_loss:.4}, test acc {float_acc:.4}");
    println!(
        "int8:    test loss {int8_loss:.4}, test acc {int8_acc:.4} ({:+.2} points; top-1 agreement {:.2}% on {} images; int8 on {})",
        100.0 * (int8_acc - float_acc),
        100.0 * agree as f64 / test_set.len() as f64,
        test_set.len(),
        network.isa().name()
    );
    Ok(())
}
