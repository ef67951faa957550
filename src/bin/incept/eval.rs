//! `incept eval`: test loss and accuracy of saved weights.

use std::path::{Path, PathBuf};

use crate::args::{DataArgs, PrecisionArg, limit, load_data, load_weights, resolve_size};
use incept::data::transforms::Normalization;
use incept::graph::Executor;
use incept::int8::Int8Checkpoint;
use incept::io::checkpoint::{Recorded, TensorFile};
use incept::models::Model;
use incept::train::{self, loss_and_accuracy, network_inputs};
use incept::{Error, Result};

#[derive(clap::Args)]
pub(crate) struct EvalArgs {
    /// The model (default: the one the checkpoint records, else the one whose state_dict the file holds).
    #[arg(long)]
    model: Option<String>,
    /// The weights: an incept checkpoint, a PyTorch state_dict saved as safetensors, or an ONNX model
    /// (its own graph).
    #[arg(long)]
    weights: PathBuf,
    /// Input size (square) the test images are resized to (default: the checkpoint's, else the
    /// model's native size).
    #[arg(long)]
    resize: Option<usize>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Use only the first N test images.
    #[arg(long)]
    test_limit: Option<usize>,
    /// The arithmetic of the convolutions: f32, or bf16 products summed in float32 (no Winograd); int8
    /// for an int8 checkpoint (default: int8 for an int8 checkpoint, else f32).
    #[arg(long, value_enum)]
    precision: Option<PrecisionArg>,
    #[command(flatten)]
    data: DataArgs,
}

/// `incept eval`: test loss and accuracy of saved weights.
pub(crate) fn eval_command(args: EvalArgs) -> Result<()> {
    let EvalArgs {
        model,
        weights,
        resize,
        batch,
        test_limit,
        precision,
        data,
    } = args;
    if batch == 0 {
        return Err(Error::config("--batch", "--batch must be at least 1"));
    }
    let onnx = incept::onnx::is_onnx(&weights);
    if !onnx && incept::int8::is_int8(&TensorFile::read_metadata(&weights)?) {
        if let Some(p) = precision.filter(|&p| p != PrecisionArg::Int8) {
            let name = p.precision("eval").map(|p| p.name()).unwrap_or("int8");
            return Err(Error::config(
                "--precision",
                format!(
                    "{} is an int8 checkpoint; it runs in int8, not {name}",
                    weights.display()
                ),
            ));
        }
        return eval_int8(&weights, model, resize, batch, test_limit, &data);
    }
    let precision = precision.unwrap_or(PrecisionArg::F32);
    if precision == PrecisionArg::Int8 {
        return Err(Error::config(
            "--precision",
            format!(
                "{} holds float weights; `incept quantize --weights {} --out FILE` makes an int8 checkpoint",
                weights.display(),
                weights.display()
            ),
        ));
    }
    // One read of the weights: channels, classes, parameters and normalization all come from it.
    let (_, Model { graph, params }, file) = load_weights(model, &weights, resize)?;
    let normalization = file.normalization(&weights)?;
    let (_, test_set) = load_data(&data, graph.output_len())?;
    let test_set = limit(test_set, test_limit, "--test-limit")?;
    // Planned for the batch that occurs: a batch beyond the test set is all of it.
    let capacity = batch.min(test_set.len()).max(1);
    let [_, h, w] = graph.input_shape();
    let options = incept::graph::PlanOptions {
        precision: precision.precision("eval")?,
        ..Default::default()
    };
    Executor::check_memory(
        &graph,
        options,
        capacity,
        false,
        &format!("batch {batch} at {h}x{w}"),
        |k| match k {
            Some(k) => format!("try --batch {k}"),
            None => "try a smaller --resize".to_string(),
        },
    )?;
    let mut exec = Executor::new(Model { graph, params }, capacity)?;
    exec.set_plan_options(options)?;
    let (loss, acc) = train::evaluate(&mut exec, &test_set, batch, normalization.as_ref())?;
    // float32 says nothing, as before bf16 existed.
    let arithmetic = match exec.plan().options.bf16_kernel() {
        Some(isa) => format!(", bf16 convolutions on {}", isa.name()),
        None => String::new(),
    };
    println!(
        "test loss {loss:.4}, test acc {acc:.4} ({} images{arithmetic})",
        test_set.len()
    );
    Ok(())
}

/// `incept eval` of an int8 checkpoint: the model, input size and normalization it records.
fn eval_int8(
    weights: &Path,
    model: Option<String>,
    resize: Option<usize>,
    batch: usize,
    test_limit: Option<usize>,
    data: &DataArgs,
) -> Result<()> {
    let checkpoint = Int8Checkpoint::read(weights)?;
    let recorded = Recorded::from_metadata(&checkpoint.metadata, weights)?;
    if let Some(m) = model.filter(|m| *m != checkpoint.model) {
        return Err(Error::config(
            "--model",
            format!(
                "{} is a {} int8 checkpoint, not {m}",
                weights.display(),
                checkpoint.model
            ),
        ));
    }
    let network = &checkpoint.network;
    let shape = network.graph().input_shape();
    // An int8 network is quantized for its input size: --resize may only repeat it.
    resolve_size(resize, &recorded, weights, [shape[1], shape[2]])?;
    let normalization = match checkpoint.metadata.get("normalization") {
        Some(text) => Some(Normalization::from_metadata(text)?),
        None => None,
    };
    let classes = network.graph().output_len();
    let (_, test_set) = load_data(data, classes)?;
    let test_set = limit(test_set, test_limit, "--test-limit")?;
    let per_image: usize = shape.iter().product();
    let capacity = batch.min(test_set.len()).max(1);
    let mut images = vec![0.0; capacity * per_image];
    let mut logits = Vec::with_capacity(test_set.len() * classes);
    for start in (0..test_set.len()).step_by(capacity) {
        let n = capacity.min(test_set.len() - start);
        let images = &mut images[..n * per_image];
        network_inputs(&test_set, start..start + n, shape, normalization.as_ref(), images);
        logits.extend(network.forward(images)?);
    }
    let (loss, acc) = loss_and_accuracy(&logits, classes, &test_set.labels)?;
    println!(
        "test loss {loss:.4}, test acc {acc:.4} ({} images, int8 convolutions on {})",
        test_set.len(),
        network.isa().name()
    );
    Ok(())
}
