//! A trained model ready to answer: weights from a safetensors file (an incept checkpoint, an int8
//! checkpoint from `incept quantize`, or a PyTorch state_dict), with what the checkpoint records (model,
//! input size, normalization, class names), behind an images-in, classes-out API. `incept predict` is
//! built on it. An int8 checkpoint runs in int8 ([`Classifier::int8_kernel`]) and answers only: its
//! training steps are refused.
//!
//! Two kinds of input, kept apart:
//! - **Tensors** ([`Classifier::forward_tensor`], [`Classifier::train_step_tensor`]) are the network's
//!   input, as PyTorch's `model(x)` takes it: fed as given, nothing normalized.
//! - **Images** ([`Classifier::read_images`], [`Classifier::forward_images`],
//!   [`Classifier::train_step_images`]) are values in [0, 1]; they get the preprocessing the weights
//!   expect ([`Classifier::preprocess`]: the normalization the checkpoint records, or for a torchvision
//!   or timm state_dict that library's ImageNet one) before the network.
//!
//! torchvision's `transform_input` is part of its googlenet / inception_v3 model, not of the
//! preprocessing: when on, it runs on both kinds of input, as in PyTorch. A state_dict does not record
//! it, so it is assumed by torchvision's own rule ([`TransformInputRule`]): on for a 1000-class head (the
//! trace of torchvision's ImageNet weights, the only ones its constructor turns it on for), off for any
//! other head.
//!
//! [`Classifier::save`] writes an incept checkpoint that records all of the above.
//!
//! ```no_run
//! use incept::classifier::Classifier;
//!
//! let mut model = Classifier::from_safetensors(None, "runs/checkpoint.safetensors")?;
//! for (file, top) in ["shoe.png"].iter().zip(model.predict_images(&["shoe.png"], 3)?) {
//!     for p in top {
//!         println!("{file}: {} {:.1}%", p.class, 100.0 * p.probability);
//!     }
//! }
//! # Ok::<(), incept::Error>(())
//! ```

use std::path::Path;

use ndarray::{Array2, Array4, ArrayView4};

use crate::data::images::{self, ImageRecipe};
use crate::data::transforms::Normalization;
use crate::error::{Error, Result};
use crate::graph::{BatchLoss, Executor, Mode, PlanOptions, Precision};
use crate::int8::{Int8Checkpoint, QuantizedNetwork};
use crate::io::checkpoint::{InputSize, TensorFile};
use crate::memory;
use crate::models::{self, Model, ModelConfig, pretrained};
use crate::optim::Optimizer;
use crate::tensor::Images;

/// Images per forward pass, at most (fewer when 64 would not fit in memory).
const BATCH: usize = 64;

/// One class of an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The class's name (from the checkpoint, or "class N").
    pub class: String,
    /// Its index among the model's outputs.
    pub index: usize,
    /// Its softmax probability.
    pub probability: f32,
}

/// Where a classifier's `transform_input` setting comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransformInputRule {
    /// The model has no `transform_input` (only torchvision's googlenet and inception_v3 do), or the
    /// weights are incept's own, trained without it: off.
    NotPartOfModel,
    /// The checkpoint records it ([`Classifier::save`]).
    Recorded,
    /// A torchvision state_dict, which does not record it: on for a 1000-class head, off for any other,
    /// as torchvision's constructor turns it on only for its own ImageNet weights.
    AssumedFromHead,
    /// Set by [`Classifier::set_transform_input`].
    Set,
}

/// A model with its weights, in eval mode, at one input size.
pub struct Classifier {
    engine: Engine,
    model: String,
    config: ModelConfig,
    normalization: Option<Normalization>,
    transform_input: bool,
    transform_input_rule: TransformInputRule,
    /// Images per forward pass: [`BATCH`], or as many as fit in memory.
    capacity: usize,
    /// The library whose state_dict this is (`None`: an incept checkpoint).
    source: Option<&'static str>,
    recipe: ImageRecipe,
    class_names: Vec<String>,
}

/// What computes a classifier's logits.
enum Engine {
    /// The float32 (or bf16) executor, which also trains.
    Float(Box<Executor>),
    /// An int8 network from an int8 checkpoint (`incept quantize`): inference only.
    Int8(Box<QuantizedNetwork>),
}

/// What a weights file says about its inputs and outputs, or its library's defaults for a state_dict
/// from torchvision or timm (`pretrained`).
struct Preprocessing {
    normalization: Option<Normalization>,
    recipe: ImageRecipe,
    transform_input: bool,
    transform_input_rule: TransformInputRule,
    class_names: Vec<String>,
}

impl Preprocessing {
    /// Reads `file`'s metadata for a model of `config` whose native input size is `native`.
    fn read(
        file: &TensorFile,
        path: &Path,
        config: &ModelConfig,
        pretrained: Option<pretrained::Pretrained>,
        native: usize,
    ) -> Result<Preprocessing> {
        let normalization = match (file.normalization(path)?, pretrained) {
            (Some(recorded), _) => Some(recorded),
            (None, Some(p)) if config.in_channels == 3 => Some(p.normalization()),
            (None, _) => None,
        };
        let recipe = match (file.metadata.get("image_recipe"), pretrained) {
            (Some(text), _) => ImageRecipe::from_metadata(text).map_err(|e| Error::file(path.display(), e))?,
            (None, Some(p)) => p.recipe_at(native, config.size),
            (None, None) => ImageRecipe::STRETCH,
        };
        let (transform_input, transform_input_rule) = match file.metadata.get("transform_input") {
            Some(_) => (
                file.meta::<bool>("transform_input", path)?,
                TransformInputRule::Recorded,
            ),
            None if pretrained.is_some_and(|p| p.transform_input) && config.in_channels == 3 => {
                (config.classes == 1000, TransformInputRule::AssumedFromHead)
            }
            None => (false, TransformInputRule::NotPartOfModel),
        };
        let class_names = match file.metadata.get("class_names") {
            Some(text) => {
                let names: Vec<String> = serde_json::from_str(text).map_err(|e| {
                    Error::file(
                        path.display(),
                        format!("metadata class_names: not a list of names: {e}"),
                    )
                })?;
                if names.len() != config.classes {
                    return Err(Error::file(
                        path.display(),
                        format!("{} class names for {} classes", names.len(), config.classes),
                    ));
                }
                names
            }
            None if pretrained.is_some() && config.classes == 1000 => pretrained::imagenet_classes(),
            None => (0..config.classes).map(|c| format!("class {c}")).collect(),
        };
        Ok(Preprocessing {
            normalization,
            recipe,
            transform_input,
            transform_input_rule,
            class_names,
        })
    }
}

/// The float32 executor of `model` (named `name` in errors), planned for as many images per pass as
/// fit in memory, up to [`BATCH`]: huge inputs run in smaller batches rather than not at all.
fn float_engine(name: &str, model: Model) -> Result<(Engine, usize)> {
    let graph = &model.graph;
    let need = |b| Executor::memory_need(graph, PlanOptions::default(), b, false);
    let Some(capacity) = memory::largest_batch(BATCH, need)? else {
        let [c, h, w] = graph.input_shape();
        return Err(Error::Memory {
            reason: format!(
                "{name} at {c}x{h}x{w} needs {} for the activations of one image; {} are available",
                memory::gib(need(1)?.total()),
                memory::available().map_or("less".to_string(), |a| memory::gib(a.bytes))
            ),
        });
    };
    let executor = Executor::new(model, capacity)?;
    Ok((Engine::Float(Box::new(executor)), capacity))
}

impl Classifier {
    /// Loads the weights at `path` as model `name` (`None`: the one the checkpoint records, else the one
    /// whose state_dict the file holds), at the input size the checkpoint records (else the model's
    /// native one).
    pub fn from_safetensors(name: Option<&str>, path: impl AsRef<Path>) -> Result<Classifier> {
        Classifier::at_size(name, path.as_ref(), None)
    }

    /// [`Classifier::from_safetensors`] at input `size` when the weights record none (PyTorch's); an
    /// error naming both sizes when they record another.
    pub fn at_size(name: Option<&str>, path: &Path, size: Option<[usize; 2]>) -> Result<Classifier> {
        if crate::onnx::is_onnx(path) {
            return Classifier::from_onnx(name, path, size);
        }
        // An int8 checkpoint's tensors are bytes and 32-bit integers; its metadata is read as any other's.
        let int8 = match crate::int8::is_int8(&TensorFile::read_metadata(path)?) {
            true => Some(Int8Checkpoint::read(path)?),
            false => None,
        };
        let file = match &int8 {
            Some(checkpoint) => TensorFile {
                tensors: Default::default(),
                metadata: checkpoint.metadata.clone(),
            },
            None => TensorFile::read(path)?,
        };
        let recorded = file.recorded(path)?;
        let model = match (name, &recorded.model) {
            (Some(n), Some(r)) if n != r => {
                return Err(Error::config(
                    "model",
                    format!("{} was written with model {r}, not {n}", path.display()),
                ));
            }
            (Some(n), _) => n.to_string(),
            (None, Some(r)) => r.clone(),
            (None, None) => models::detect(&file, path)?.to_string(),
        };
        let mut config = match &int8 {
            Some(checkpoint) => checkpoint.config,
            None => models::config_from_weights(&model, &file)?,
        };
        config.size = match (recorded.size, size) {
            (Some(r), Some(s)) if r != s => {
                return Err(Error::config(
                    "input size",
                    format!(
                        "{} was trained at {}, the images are {}; resize them first",
                        path.display(),
                        InputSize(r),
                        InputSize(s)
                    ),
                ));
            }
            (Some(r), _) => r,
            (None, Some(s)) => s,
            (None, None) => config.size,
        };
        // A state_dict from torchvision or timm records nothing: it gets its library's preprocessing.
        let foreign = recorded.model.is_none();
        let pretrained = models::entry(&model)?.pretrained.filter(|_| foreign);
        let native = models::default_config(&model)?.size[0];
        let recorded = Preprocessing::read(&file, path, &config, pretrained, native)?;
        if let Some(checkpoint) = int8 {
            return Ok(Classifier::assemble(
                Engine::Int8(Box::new(checkpoint.network)),
                BATCH,
                model,
                config,
                recorded,
                pretrained,
            ));
        }
        let graph = models::build(&model, config)?;
        let params = file.params_for(&graph, path)?;
        let (engine, capacity) = float_engine(&model, Model { graph, params })?;
        Ok(Classifier::assemble(
            engine, capacity, model, config, recorded, pretrained,
        ))
    }

    /// An ONNX model ([`crate::onnx::import`]): its own graph, with the preprocessing and class names
    /// its `metadata_props` record (an `incept export` records its checkpoint's; a file exported
    /// elsewhere records none, and its tensors go to the network as given, images only scaled to [0, 1]).
    fn from_onnx(name: Option<&str>, path: &Path, size: Option<[usize; 2]>) -> Result<Classifier> {
        let imported = crate::onnx::read(path, size)?;
        let file = TensorFile {
            tensors: Default::default(),
            metadata: imported.metadata,
        };
        let recorded_model = file.metadata.get("model").cloned();
        let model = match (name, recorded_model) {
            (Some(n), Some(r)) if n != r => {
                return Err(Error::config(
                    "model",
                    format!("{} holds a {r} graph, not {n}", path.display()),
                ));
            }
            (Some(n), None) => {
                return Err(Error::config(
                    "model",
                    format!(
                        "{} is an ONNX model: its graph is its own, not {n}; drop --model",
                        path.display()
                    ),
                ));
            }
            (_, Some(r)) => r,
            (None, None) => "onnx".to_string(),
        };
        let [c, h, w] = imported.graph.input_shape();
        let config = ModelConfig {
            in_channels: c,
            size: [h, w],
            classes: imported.graph.output_len(),
            aux_heads: false,
        };
        let recorded = Preprocessing::read(&file, path, &config, None, h)?;
        let (engine, capacity) = float_engine(
            &model,
            Model {
                graph: imported.graph,
                params: imported.params,
            },
        )?;
        Ok(Classifier::assemble(engine, capacity, model, config, recorded, None))
    }

    fn assemble(
        engine: Engine,
        capacity: usize,
        model: String,
        config: ModelConfig,
        p: Preprocessing,
        pretrained: Option<pretrained::Pretrained>,
    ) -> Classifier {
        Classifier {
            engine,
            capacity,
            model,
            config,
            normalization: p.normalization,
            transform_input: p.transform_input,
            transform_input_rule: p.transform_input_rule,
            source: pretrained.map(|p| p.source),
            recipe: p.recipe,
            class_names: p.class_names,
        }
    }

    /// The input the model takes: `[channels, height, width]`.
    pub fn input_shape(&self) -> [usize; 3] {
        [self.config.in_channels, self.config.size[0], self.config.size[1]]
    }

    /// Whether torchvision's `transform_input` runs as the network's first step, on tensors and images
    /// alike ([`TransformInputRule`] says how it was decided).
    pub fn transform_input(&self) -> bool {
        self.transform_input
    }

    /// How [`Classifier::transform_input`] was decided.
    pub fn transform_input_rule(&self) -> TransformInputRule {
        self.transform_input_rule
    }

    /// When `transform_input` was assumed rather than recorded or set: the sentence saying what was
    /// assumed and why (a caller that shows it adds how to change it).
    pub fn transform_input_assumption(&self) -> Option<String> {
        (self.transform_input_rule == TransformInputRule::AssumedFromHead).then(|| {
            let state = if self.transform_input { "on" } else { "off" };
            format!(
                "transform_input {state}: assumed for a {} {} state_dict with a {}-class head (torchvision \
                 turns it on for its ImageNet weights, whose head has 1000 classes, and only for those)",
                self.source.unwrap_or("torchvision"),
                self.model,
                self.config.classes
            )
        })
    }

    /// How [`Classifier::read_images`] brings an image file to the input size, in words.
    pub fn image_recipe(&self) -> String {
        let [h, w] = self.config.size;
        let filter = match self.recipe.filter {
            crate::data::resample::Filter::Bilinear => "bilinear",
            crate::data::resample::Filter::Bicubic => "bicubic",
        };
        match self.recipe.fit {
            images::Fit::Stretch => format!("resized to {h}x{w} ({filter})"),
            images::Fit::ResizeThenCenterCrop { shorter_side } => {
                format!("shorter side resized to {shorter_side} ({filter}), centre crop {h}x{w}")
            }
        }
    }

    /// The model's name (`onnx` for an ONNX file that records none).
    pub fn model_name(&self) -> &str {
        &self.model
    }

    /// What [`Classifier::preprocess`] does to an image in [0, 1], in one line.
    pub fn preprocessing(&self) -> String {
        match &self.normalization {
            Some(n) => format!("normalized (x - mean) / std, mean {:?}, std {:?}", n.mean, n.std),
            None => "none (the weights record no normalization)".to_string(),
        }
    }

    /// What the network itself does to its input first, in words: torchvision's `transform_input`, or
    /// nothing.
    pub fn network_input_step(&self) -> &'static str {
        match self.transform_input {
            true => "torchvision's transform_input (part of the model) runs first",
            false => "no transform_input",
        }
    }

    /// Runs the convolutions in `precision` from the next call on ([`Precision`]; the default is
    /// float32, the precision every float checkpoint is stored in). An int8 classifier runs in int8
    /// only: an error.
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        match &mut self.engine {
            Engine::Float(exec) => exec.set_precision(precision),
            Engine::Int8(_) => Err(Error::config(
                "precision",
                format!("an int8 checkpoint runs in int8, not {}", precision.name()),
            )),
        }
    }

    /// The float precision the convolutions run in (`None` for an int8 checkpoint: [`Classifier::int8_kernel`]).
    pub fn precision(&self) -> Option<Precision> {
        match &self.engine {
            Engine::Float(exec) => Some(exec.plan().options.precision),
            Engine::Int8(_) => None,
        }
    }

    /// The bf16 microkernel build the convolutions run on, `None` in float32 and int8.
    pub fn bf16_kernel(&self) -> Option<crate::microkernel::Bf16Isa> {
        match &self.engine {
            Engine::Float(exec) => exec.plan().options.bf16_kernel(),
            Engine::Int8(_) => None,
        }
    }

    /// The int8 microkernel build the convolutions run on, for an int8 checkpoint.
    pub fn int8_kernel(&self) -> Option<crate::microkernel::Int8Isa> {
        match &self.engine {
            Engine::Float(_) => None,
            Engine::Int8(network) => Some(network.isa()),
        }
    }

    /// Turns `transform_input` on or off (for torchvision weights trained with it off; an error for a
    /// model that is not 3-channel).
    pub fn set_transform_input(&mut self, on: bool) -> Result<()> {
        if on && self.config.in_channels != 3 {
            return Err(Error::config(
                "transform-input",
                format!(
                    "transform_input needs RGB input, the model takes {} channel(s)",
                    self.config.in_channels
                ),
            ));
        }
        self.transform_input = on;
        self.transform_input_rule = TransformInputRule::Set;
        Ok(())
    }

    /// The class names, in output order.
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// Replaces the class names (an error unless there is one per class).
    pub fn set_class_names(&mut self, names: Vec<String>) -> Result<()> {
        if names.len() != self.config.classes {
            return Err(Error::config(
                "classes",
                format!(
                    "{} class names for a model with {} classes",
                    names.len(),
                    self.config.classes
                ),
            ));
        }
        self.class_names = names;
        Ok(())
    }

    /// Eval-mode logits `[n, classes]` of the network's input tensor `[n, c, h, w]` at
    /// [`Classifier::input_shape`], as PyTorch's `model(x)` computes them: fed as given, nothing
    /// normalized (`transform_input`, part of torchvision's model, runs when on).
    pub fn forward_tensor(&mut self, x: ArrayView4<f32>) -> Result<Array2<f32>> {
        let x = self.checked(x)?;
        self.forward_flat(x)
    }

    /// Eval-mode logits of images `[n, c, h, w]` with values in [0, 1] (as [`Classifier::read_images`]
    /// returns them): [`Classifier::preprocess`], then [`Classifier::forward_tensor`].
    pub fn forward_images(&mut self, x: ArrayView4<f32>) -> Result<Array2<f32>> {
        let x = self.preprocessed(x)?;
        self.forward_flat(x)
    }

    /// [`Classifier::forward_tensor`] of the checked input `x`, flat.
    fn forward_flat(&mut self, mut x: Vec<f32>) -> Result<Array2<f32>> {
        self.apply_transform_input(&mut x);
        let image = self.image_len();
        let count = x.len() / image;
        let mut logits = Vec::with_capacity(count * self.config.classes);
        for chunk in x.chunks(self.capacity * image) {
            match &mut self.engine {
                Engine::Float(exec) => {
                    exec.forward(Images::dense(chunk, chunk.len() / image, image), Mode::Eval)?;
                    logits.extend(exec.output_vec());
                }
                Engine::Int8(network) => logits.extend(network.forward(chunk)?),
            }
        }
        Ok(Array2::from_shape_vec([count, self.config.classes], logits).expect("one row per image"))
    }

    /// Images `[n, c, h, w]` with values in [0, 1] as the network's input tensor: normalized as the
    /// checkpoint's run normalized them (a torchvision or timm state_dict: its library's ImageNet
    /// normalization; weights that record none: unchanged). [`Classifier::preprocessing`] says which.
    pub fn preprocess(&self, x: ArrayView4<f32>) -> Result<Array4<f32>> {
        let x = self.preprocessed(x)?;
        let [c, h, w] = self.input_shape();
        Ok(Array4::from_shape_vec([x.len() / self.image_len(), c, h, w], x).expect("whole images"))
    }

    /// [`Classifier::preprocess`], flat.
    fn preprocessed(&self, x: ArrayView4<f32>) -> Result<Vec<f32>> {
        let mut x = self.checked(x)?;
        if let Some(n) = &self.normalization {
            x.chunks_exact_mut(self.image_len()).for_each(|img| n.apply(img));
        }
        Ok(x)
    }

    /// The `top_k` most likely classes of each image file (PNG, JPEG), most likely first: each image
    /// converted to the model's channels and resized to its input size as torchvision would
    /// ([`images::read_image`]).
    pub fn predict_images(&mut self, paths: &[impl AsRef<Path>], top_k: usize) -> Result<Vec<Vec<Prediction>>> {
        let x = self.read_images(paths)?;
        let logits = self.forward_images(x.view())?;
        Ok(self.top(&logits, top_k))
    }

    /// The image files (PNG, JPEG) as this model's input `[n, c, h, w]`, values in [0, 1]: converted to
    /// its channels and resized to its input size as torchvision would ([`images::read_image`]), with
    /// the centre crop of torchvision's or timm's recipe for their weights.
    pub fn read_images(&self, paths: &[impl AsRef<Path>]) -> Result<Array4<f32>> {
        let [c, h, w] = self.input_shape();
        let mut x = Vec::with_capacity(paths.len() * c * h * w);
        for path in paths {
            x.extend(images::read_image(path.as_ref(), c, [h, w], self.recipe)?);
        }
        Ok(Array4::from_shape_vec([paths.len(), c, h, w], x).expect("whole images"))
    }

    /// One training step (fine-tuning) on images `[n, c, h, w]` with values in [0, 1]:
    /// [`Classifier::preprocess`], then [`Classifier::train_step_tensor`].
    pub fn train_step_images(
        &mut self,
        x: ArrayView4<f32>,
        labels: &[usize],
        optimizer: &mut Optimizer,
        lr: f32,
    ) -> Result<BatchLoss> {
        let x = self.preprocessed(x)?;
        self.train_step_flat(x, labels, optimizer, lr)
    }

    /// One training step (fine-tuning) on the network's input tensor `[n, c, h, w]`, fed as given as
    /// [`Classifier::forward_tensor`] feeds it, and its labels: training-mode forward, loss, backward,
    /// and `optimizer`'s update at learning rate `lr` (auxiliary heads, where loaded, add their weighted
    /// losses). At most 64 images per step (fewer for inputs so large that 64 would not fit in
    /// memory). A non-finite loss leaves the weights as they were and is
    /// returned for the caller to handle.
    pub fn train_step_tensor(
        &mut self,
        x: ArrayView4<f32>,
        labels: &[usize],
        optimizer: &mut Optimizer,
        lr: f32,
    ) -> Result<BatchLoss> {
        let x = self.checked(x)?;
        self.train_step_flat(x, labels, optimizer, lr)
    }

    /// [`Classifier::train_step_tensor`] of the checked input `x`, flat.
    fn train_step_flat(
        &mut self,
        mut x: Vec<f32>,
        labels: &[usize],
        optimizer: &mut Optimizer,
        lr: f32,
    ) -> Result<BatchLoss> {
        self.apply_transform_input(&mut x);
        let image = self.image_len();
        let count = x.len() / image;
        if count != labels.len() || !(1..=self.capacity).contains(&count) {
            return Err(Error::shape(
                "classifier train_step",
                format!("1 to {} images with one label each", self.capacity),
                format!("{count} images, {} labels", labels.len()),
            ));
        }
        match &mut self.engine {
            Engine::Float(exec) => exec.train_step(Images::dense(&x, count, image), labels, optimizer, lr),
            Engine::Int8(_) => Err(Error::config(
                "classifier train_step",
                "an int8 checkpoint runs inference only: fine-tune its float32 checkpoint, then quantize it again",
            )),
        }
    }

    /// An Adam optimizer with PyTorch's defaults (betas 0.9, 0.999, eps 1e-8) for this model's parameters.
    pub fn adam(&self) -> Optimizer {
        let graph = match &self.engine {
            Engine::Float(exec) => exec.graph(),
            Engine::Int8(network) => network.graph(),
        };
        let lens: Vec<usize> = graph.params.iter().map(|p| p.len()).collect();
        Optimizer::Adam(crate::optim::Adam::new(&lens))
    }

    /// What [`Classifier::save`] records: model, input size, normalization, image recipe,
    /// `transform_input` and class names.
    fn metadata(&self) -> std::collections::HashMap<String, String> {
        let mut metadata: std::collections::HashMap<String, String> = [
            ("image_recipe", self.recipe.to_metadata()),
            ("transform_input", self.transform_input.to_string()),
            (
                "class_names",
                serde_json::to_string(&self.class_names).expect("strings serialize"),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .chain(crate::io::checkpoint::model_metadata(&self.model, &self.config))
        .collect();
        if let Some(n) = &self.normalization {
            metadata.insert("normalization".into(), n.to_metadata());
        }
        metadata
    }

    /// Writes the weights as an incept checkpoint that records the model, input size, normalization,
    /// image recipe, `transform_input` and class names, so [`Classifier::from_safetensors`] loads it
    /// back as it is (and PyTorch loads its tensors under their state_dict names).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let metadata = self.metadata();
        match &self.engine {
            Engine::Float(exec) => {
                let model = exec.model();
                crate::io::checkpoint::save(path.as_ref(), &model.graph, &model.params, None, &metadata)
            }
            Engine::Int8(network) => network.save(path.as_ref(), &metadata),
        }
    }

    /// Writes the network as an ONNX model at `opset` ([`crate::onnx::export`]): the eval graph, the
    /// weights under their state_dict names, a dynamic batch axis, and as `metadata_props` what
    /// [`Classifier::save`] records (model, input size, normalization, image recipe, class names), so
    /// loading the file back answers as this classifier does. An int8 classifier is written in QDQ form
    /// ([`crate::onnx::export_int8`]), which ONNX Runtime runs in int8. Refused for what the graph cannot
    /// carry yet: torchvision's `transform_input` (it runs before the network).
    pub fn export_onnx(&self, path: impl AsRef<Path>, opset: i64) -> Result<()> {
        if self.transform_input {
            return Err(Error::config(
                "export",
                format!(
                    "{} with transform_input on: that input transform runs before the network in incept and \
                     is not part of the exported graph yet, so ONNX Runtime would answer differently; \
                     torch.onnx.export of the torchvision model puts it in the graph",
                    self.model
                ),
            ));
        }
        // What a checkpoint records, less incept's file format: the file is ONNX.
        let mut metadata = self.metadata();
        metadata.remove("format");
        match &self.engine {
            Engine::Float(exec) => {
                let model = exec.model();
                crate::onnx::write(path.as_ref(), &model.graph, &model.params, &metadata, opset)
            }
            Engine::Int8(network) => {
                metadata.insert(crate::int8::PRECISION_KEY.into(), "int8".into());
                crate::onnx::write_int8(path.as_ref(), network, &metadata, opset)
            }
        }
    }

    /// The `top_k` most likely classes of each row of `logits`, most likely first.
    pub fn top(&self, logits: &Array2<f32>, top_k: usize) -> Vec<Vec<Prediction>> {
        let classes = self.config.classes;
        let flat = logits.as_standard_layout();
        let probabilities = crate::ops::loss::softmax_rows(flat.as_slice().expect("standard layout"), classes);
        probabilities
            .chunks_exact(classes)
            .map(|p| {
                let mut order: Vec<usize> = (0..classes).collect();
                order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
                order
                    .into_iter()
                    .take(top_k)
                    .map(|index| Prediction {
                        class: self.class_names[index].clone(),
                        index,
                        probability: p[index],
                    })
                    .collect()
            })
            .collect()
    }

    fn image_len(&self) -> usize {
        self.input_shape().iter().product()
    }

    /// `x` as a flat vector, after checking its shape against [`Classifier::input_shape`].
    fn checked(&self, x: ArrayView4<f32>) -> Result<Vec<f32>> {
        let [c, h, w] = self.input_shape();
        let shape = x.shape();
        if shape[1..] != [c, h, w] {
            return Err(Error::shape(
                "classifier input",
                format!("[n, {c}, {h}, {w}]"),
                format!("{shape:?}"),
            ));
        }
        Ok(x.as_standard_layout().into_owned().into_raw_vec_and_offset().0)
    }

    /// torchvision's `transform_input` on every image of `x`, when on.
    fn apply_transform_input(&self, x: &mut [f32]) {
        if self.transform_input {
            x.chunks_exact_mut(self.image_len())
                .for_each(pretrained::transform_input);
        }
    }
}
