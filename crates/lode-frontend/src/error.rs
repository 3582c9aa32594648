//! The frontend's errors, and the Lambda error each one is answered with.

use crate::seal::SealError;
use lode_lambda::{ErrorKind, LambdaError};
use lode_store::StoreError;

/// What failed in the frontend.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A sealed document did not open or could not be sealed.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// A document in the store is not what lode writes there.
    #[error("{what} at {path} is not valid: {source}")]
    Document {
        /// What kind of document.
        what: &'static str,
        /// Its path in the store.
        path: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The key provider failed (its random source, a tenant key).
    #[error("key provider: {0}")]
    Key(#[from] lode_chunk::ChunkError),
    /// A request the Lambda API refuses (its kind says how).
    #[error(transparent)]
    Lambda(#[from] LambdaError),
}

impl FrontendError {
    /// The Lambda error a client gets for this.
    pub fn to_lambda(&self) -> LambdaError {
        match self {
            FrontendError::Lambda(e) => e.clone(),
            other => LambdaError::new(ErrorKind::ServiceException, other.to_string()),
        }
    }
}

/// A [`LambdaError`] of `kind` as a [`FrontendError`].
pub fn refuse(kind: ErrorKind, message: impl Into<String>) -> FrontendError {
    FrontendError::Lambda(LambdaError::new(kind, message))
}

/// Result of the frontend's operations.
pub type Result<T, E = FrontendError> = std::result::Result<T, E>;
