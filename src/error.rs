//! The crate's one error type: every failure names the op and what was expected against what was found.

use thiserror::Error;

/// Every error incept returns.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum Error {
    /// A tensor had the wrong shape for an op.
    #[error("{op}: expected shape {expected}, found {found}")]
    Shape {
        /// The op that checked the shape, e.g. `conv2d input`.
        op: String,
        /// What the op needed, in words or as `[n, c, h, w]`.
        expected: String,
        /// What it was given.
        found: String,
    },
    /// An op was configured with values it cannot run with.
    #[error("{op}: invalid configuration: {reason}")]
    Config {
        /// The op that refused the configuration.
        op: String,
        /// Why, in one sentence.
        reason: String,
    },
    /// An error inside one node of a graph.
    #[error("node {node}: {source}")]
    Node {
        /// The node's name.
        node: String,
        /// What went wrong there.
        source: Box<Error>,
    },
    /// A file could not be read or written, or held something other than what was expected.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What was wrong, naming what was expected and what was found.
        reason: String,
    },
    /// Training produced a non-finite loss.
    #[error("the loss became {loss} at step {step}; training stopped ({kept})")]
    NonFiniteLoss {
        /// The step (1-based) whose loss was not finite.
        step: u64,
        /// The loss value.
        loss: f32,
        /// What is left to restart from: the last checkpoint written (or resumed from), or that there
        /// is none.
        kept: String,
    },
    /// A run would need more memory than the machine gives it, or an allocation was refused.
    #[error("{reason}")]
    Memory {
        /// What needs how much, what is available, and what to try instead.
        reason: String,
    },
    /// A label was outside `0..classes`.
    #[error("{op}: label {label} at batch index {index} is outside 0..{classes}")]
    Label {
        /// The op that read the label.
        op: String,
        /// Where in the batch.
        index: usize,
        /// The label found.
        label: usize,
        /// The number of classes the logits have.
        classes: usize,
    },
}

impl Error {
    /// A shape error for `op`, built from anything printable.
    pub fn shape(op: &str, expected: impl std::fmt::Display, found: impl std::fmt::Display) -> Self {
        Error::Shape {
            op: op.to_string(),
            expected: expected.to_string(),
            found: found.to_string(),
        }
    }

    /// Attaches the name of the graph node where `self` happened.
    pub fn in_node(self, node: &str) -> Self {
        Error::Node {
            node: node.to_string(),
            source: Box::new(self),
        }
    }

    /// A file error for `path`.
    pub fn file(path: impl std::fmt::Display, reason: impl std::fmt::Display) -> Self {
        Error::File {
            path: path.to_string(),
            reason: reason.to_string(),
        }
    }

    /// A configuration error for `op`.
    pub fn config(op: &str, reason: impl std::fmt::Display) -> Self {
        Error::Config {
            op: op.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// `Result` with incept's [`Error`](enum@Error).
pub type Result<T> = std::result::Result<T, Error>;

/// Checks that `found` equals `expected`, and names `op` and both shapes if not.
pub(crate) fn expect_shape(op: &str, expected: &[usize], found: &[usize]) -> Result<()> {
    if expected == found {
        Ok(())
    } else {
        Err(Error::shape(op, format!("{expected:?}"), format!("{found:?}")))
    }
}
