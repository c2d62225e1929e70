//! What can be wrong with `VCAP_SERVICES`. No variant quotes a credential.

use crate::Kind;

/// Why no URL could be taken from `VCAP_SERVICES`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The variable is not a JSON object of service lists. Only the
    /// position is kept: the parser's own message may quote the document.
    #[error("VCAP_SERVICES is not a JSON object of service lists (line {line}, column {column})")]
    Document {
        /// Line of the first error.
        line: usize,
        /// Column of the first error.
        column: usize,
    },
    /// More than one instance of the kind is bound, and nothing says which.
    #[error("{count} {kind} services are bound ({names}): bind only one, or give the URL by flag or environment")]
    Ambiguous {
        /// The kind looked for.
        kind: Kind,
        /// How many were found.
        count: usize,
        /// Their instance names, comma-separated.
        names: String,
    },
    /// The one instance found has no usable address.
    #[error("{kind} service {name:?}: {problem}")]
    Credentials {
        /// The kind looked for.
        kind: Kind,
        /// The instance's name.
        name: String,
        /// What is missing or wrong (field names, never values).
        problem: String,
    },
}

impl From<serde_json::Error> for Error {
    fn from(error: serde_json::Error) -> Self {
        Self::Document { line: error.line(), column: error.column() }
    }
}
