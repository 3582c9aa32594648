//! The agent as a host service: the control API, the volume table, and
//! the state that lets a restarted agent re-create every volume.
//!
//! * [`api`]: HTTP/1.1 + JSON on a unix socket under `/v1/` (hyper);
//! * [`client`]: the client the `lode` commands use;
//! * [`registry`]: attach, detach, list, restore, shutdown;
//! * [`state`]: the state directory and its volume table;
//! * [`manifests`]: sealed manifests of attached images, cached on the host;
//! * [`sockets`]: per-volume sockets, mode 0600, owned by the VM's user.

pub mod api;
pub mod client;
pub mod manifests;
pub mod registry;
pub mod sockets;
pub mod state;

pub use api::{
    AttachRequest, Attached, FleetInfo, FleetRequest, Health, ImageInfo, ImageList, VolumeInfo,
};
pub use client::{Client, ClientError};
pub use registry::{Registry, RegistryError};
pub use state::{StateDir, StateError};
