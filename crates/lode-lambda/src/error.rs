//! Lambda's error shapes: the exception name a client reads from
//! `X-Amzn-ErrorType`, its HTTP status, and the JSON body
//! (`{"Type": "User", "message": ...}`). Frontend, manager and workers
//! answer every refused request with a [`LambdaError`], so one shape crosses
//! every hop and the frontend passes it on unchanged.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! kinds {
    ($($(#[$m:meta])* $k:ident = $status:literal, $who:literal;)*) => {
        /// The exceptions lode answers with (Lambda's names).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum ErrorKind {
            $($(#[$m])* $k,)*
        }

        impl ErrorKind {
            /// Every kind, for tests and documentation.
            pub const ALL: &'static [ErrorKind] = &[$(ErrorKind::$k,)*];

            /// HTTP status Lambda answers this exception with.
            pub fn status(self) -> u16 {
                match self { $(ErrorKind::$k => $status,)* }
            }

            /// Lambda's exception name (the `X-Amzn-ErrorType` header).
            pub fn name(self) -> &'static str {
                match self { $(ErrorKind::$k => stringify!($k),)* }
            }

            /// `User` for a caller's mistake, `Service` for lode's.
            pub fn fault(self) -> &'static str {
                match self { $(ErrorKind::$k => $who,)* }
            }

            /// The kind of an exception name, if lode knows it.
            pub fn from_name(name: &str) -> Option<ErrorKind> {
                let name = name.split(':').next().unwrap_or(name);
                match name { $(stringify!($k) => Some(ErrorKind::$k),)* _ => None }
            }
        }
    };
}

kinds! {
    /// A parameter is missing, malformed or out of range.
    InvalidParameterValueException = 400, "User";
    /// The request body is not the JSON the operation takes.
    InvalidRequestContentException = 400, "User";
    /// No such function (or one the caller's tenant does not own).
    ResourceNotFoundException = 404, "User";
    /// The function exists already, or is being changed.
    ResourceConflictException = 409, "User";
    /// The payload is over 6 MB.
    RequestEntityTooLargeException = 413, "User";
    /// Over the tenant's concurrency limit, or no capacity in time.
    TooManyRequestsException = 429, "User";
    /// No signature, or one from an unknown access key.
    UnrecognizedClientException = 403, "User";
    /// The signature does not match the request.
    InvalidSignatureException = 403, "User";
    /// The caller may not do this.
    AccessDeniedException = 403, "User";
    /// The function's image cannot be found or opened.
    InvalidImageException = 502, "Service";
    /// The sandbox could not be started (VM, volume, runtime).
    ResourceNotReadyException = 502, "Service";
    /// lode failed: a worker lost, an internal error.
    ServiceException = 500, "Service";
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A refused request: its kind and a message that names what failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct LambdaError {
    /// The exception.
    pub kind: ErrorKind,
    /// What failed, with which input.
    pub message: String,
}

/// The JSON body of an error, as Lambda sends it.
#[derive(Debug, Serialize, Deserialize)]
struct Body {
    #[serde(rename = "Type", default)]
    fault: String,
    #[serde(default, alias = "Message")]
    message: String,
    #[serde(rename = "__type", default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
}

impl LambdaError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> LambdaError {
        LambdaError {
            kind,
            message: message.into(),
        }
    }

    /// HTTP status to answer with.
    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    /// The JSON body (`{"Type","message","__type"}`); send it with the
    /// header `X-Amzn-ErrorType: <kind>`.
    pub fn body(&self) -> Vec<u8> {
        let b = Body {
            fault: self.kind.fault().to_string(),
            message: self.message.clone(),
            kind: Some(self.kind.name().to_string()),
        };
        serde_json::to_vec(&b).unwrap_or_default()
    }

    /// Reads an error answer: the header's kind if given, else the body's
    /// `__type`; `None` when neither names a known kind.
    pub fn parse(header: Option<&str>, body: &[u8]) -> Option<LambdaError> {
        let b: Option<Body> = serde_json::from_slice(body).ok();
        let kind = header
            .and_then(ErrorKind::from_name)
            .or_else(|| b.as_ref()?.kind.as_deref().and_then(ErrorKind::from_name))?;
        Some(LambdaError {
            kind,
            message: b.map(|b| b.message).unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_round_trip_through_header_and_body() {
        for &k in ErrorKind::ALL {
            let e = LambdaError::new(k, format!("{k} happened"));
            assert_eq!(
                LambdaError::parse(Some(k.name()), &e.body()),
                Some(e.clone())
            );
            assert_eq!(LambdaError::parse(None, &e.body()), Some(e.clone()));
            assert!((400..600).contains(&e.status()));
        }
        assert_eq!(
            ErrorKind::from_name("ResourceNotFoundException:http://internal.amazon.com/"),
            Some(ErrorKind::ResourceNotFoundException)
        );
        assert_eq!(LambdaError::parse(Some("Nope"), b"{}"), None);
        assert_eq!(ErrorKind::RequestEntityTooLargeException.status(), 413);
        assert_eq!(ErrorKind::TooManyRequestsException.status(), 429);
    }
}
