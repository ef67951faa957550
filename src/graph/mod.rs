//! The static graph: a model is declared once ([`GraphBuilder`]), its shapes are inferred and checked
//! when it is built, a [`plan`] fixes every buffer, and an [`Executor`] runs inference and training on
//! buffers allocated once for a maximum batch size, so a training step allocates nothing.

mod builder;
mod executor;
pub mod gradient_slots;
pub mod plan;

pub use builder::{Graph, GraphBuilder, Init, Layer, Node, NodeId, ParamId, ParamSpec};
pub use executor::{BatchLoss, BranchSchedule, Executor, Mode, NodeTime, NodeValues};
pub use plan::{PlanOptions, Precision, WinogradPolicy};
