//! lode's chunk store: where encrypted chunks and sealed manifests live.
//!
//! Any [`object_store`] backend works (local directory, S3 and S3-compatible
//! servers, memory); [`Store`] adds lode's layout on top (see [`store`]), the
//! root life cycle ([`roots`]), the two bulk operations, [`push_file`] and
//! [`pull_to_file`], and the image life cycle: sealed, versioned pointers
//! ([`pointer`]), the publish protocol that never publishes into a root
//! that is no longer active ([`publish`]), removal and listing
//! ([`lifecycle`]), and garbage collection ([`gc`]: lease, migration,
//! deletion, alarms). The protocol is specified in `docs/format.md`.
//! Every read of an object is bounded by what the object is ([`bounded`]).
//! [`Store`] is the read path's last tier: it implements
//! [`lode_tier::ChunkTier`] ([`tier`]).

pub mod alarm;
pub mod bounded;
pub mod cond;
pub mod counting;
pub mod env;
pub mod error;
pub mod freshness;
pub mod gc;
pub mod lease;
pub mod lifecycle;
pub mod local;
pub mod migrate;
pub mod open;
pub mod pins;
pub mod pointer;
pub mod publish;
pub mod pull;
pub mod push;
pub mod roots;
pub mod scan;
mod sealer;
pub mod store;
pub mod sweep;
pub mod tier;

#[cfg(test)]
mod sim;

/// Whether a protocol rule is switched off on purpose: only ever in this
/// crate's unit tests, which run the protocol simulation with one rule
/// broken to show the simulation catches it. Always false otherwise.
#[inline]
pub(crate) fn rule_broken(rule: &str) -> bool {
    #[cfg(test)]
    {
        sim::broken(rule)
    }
    #[cfg(not(test))]
    {
        let _ = rule;
        false
    }
}

pub use bounded::{ObjectKind, ObjectReader};
pub use cond::Expect;
pub use env::{Environment, SystemEnv};
pub use error::{Result, StoreError};
pub use freshness::SeenVersions;
pub use gc::{gc_pass, GcOptions, GcReport};
pub use lifecycle::{list_tenant_images, remove_image, ImageEntry, Removed};
pub use open::open_url;
pub use pins::Pin;
pub use pointer::{ImagePointer, PointerState, ResolvedImage};
pub use pull::{open_image, open_image_at, pull_to_file, OpenedImage, PullReport};
pub use push::{push_file, push_stream, PushOptions, PushProgress, PushReport, Ready};
pub use roots::{RootInfo, RootState};
pub use store::{check_name, Store};
