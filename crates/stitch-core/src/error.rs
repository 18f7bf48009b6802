//! Errors are values that say what went wrong, where (node, op, file offset)
//! and, where possible, what to do.

use thiserror::Error;

/// Result alias used across stitch.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every error stitch returns.
#[derive(Debug, Error)]
pub enum Error {
    /// A node's inputs do not fit its op (shapes, dtypes, attributes).
    #[error("node `{node}` ({op}): {message}")]
    Node {
        /// The node's name.
        node: String,
        /// The op kind, e.g. `matmul`.
        op: String,
        /// What is wrong, naming the shapes and dtypes involved.
        message: String,
    },
    /// A placeholder had no input at run time.
    #[error("missing input for placeholder `{name}` (expected {dtype} {shape}); pass it to run()")]
    MissingInput {
        /// Placeholder name.
        name: String,
        /// Expected dtype.
        dtype: String,
        /// Expected shape.
        shape: String,
    },
    /// An input was given that the graph has no placeholder for.
    #[error("unknown input `{name}`: the graph has no placeholder of that name (placeholders: {known})")]
    UnknownInput {
        /// The name given.
        name: String,
        /// Placeholders the graph does have.
        known: String,
    },
    /// A file or byte stream is malformed.
    #[error("{what} at byte {offset}: {message}")]
    Format {
        /// What was being read, e.g. `npy header of x.npy`.
        what: String,
        /// Byte offset of the problem.
        offset: u64,
        /// What is wrong.
        message: String,
    },
    /// A backend cannot run a node and no fallback exists.
    #[error("backend `{backend}` cannot run node `{node}` ({op}): {message}")]
    Unsupported {
        /// Backend name.
        backend: String,
        /// Node name.
        node: String,
        /// Op kind.
        op: String,
        /// Why.
        message: String,
    },
    /// Invalid argument to a library call.
    #[error("{0}")]
    Invalid(String),
    /// I/O error with the path involved.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// An [`Error::Invalid`].
    pub fn invalid(msg: impl Into<String>) -> Error {
        Error::Invalid(msg.into())
    }
    /// An [`Error::Node`].
    pub fn node(node: impl Into<String>, op: impl Into<String>, message: impl Into<String>) -> Error {
        Error::Node {
            node: node.into(),
            op: op.into(),
            message: message.into(),
        }
    }
    /// An [`Error::Format`].
    pub fn format(what: impl Into<String>, offset: u64, message: impl Into<String>) -> Error {
        Error::Format {
            what: what.into(),
            offset,
            message: message.into(),
        }
    }
}
