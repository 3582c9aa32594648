//! lode's chunk store: where encrypted chunks and sealed manifests live.
//!
//! Any [`object_store`] backend works (local directory, S3 and S3-compatible
//! servers, memory); [`Store`] adds lode's layout on top (see [`store`]), the
//! root life cycle ([`roots`]), and the two bulk operations, [`push_file`]
//! and [`pull_to_file`]. Every read of an object is bounded by what the
//! object is ([`bounded`]).

pub mod bounded;
pub mod error;
pub mod open;
pub mod pull;
pub mod push;
pub mod roots;
pub mod store;

pub use bounded::{ObjectKind, ObjectReader};
pub use error::{Result, StoreError};
pub use open::open_url;
pub use pull::{open_image, pull_to_file, OpenedImage, PullReport};
pub use push::{push_file, PushOptions, PushProgress, PushReport};
pub use roots::{RootInfo, RootState};
pub use store::{check_name, ImagePointer, Store};
