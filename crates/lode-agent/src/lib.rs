//! lode's local agent: serves images to VMs as NBD or vhost-user-blk block
//! devices, loading chunks on demand.
//!
//! * [`reader`]: the 512 KiB chunk read path (memory → disk → tiers,
//!   single-flight, verify before serve);
//! * [`image`]: byte ranges of one image over the reader;
//! * [`overlay`]: per-connection copy-on-write at 4 KiB pages;
//! * [`exports`]: `TENANT/NAME[@OVERLAY]` names and the images behind them;
//! * [`nbd`]: the NBD protocol server;
//! * [`vhost`]: the vhost-user-blk export (one VM per socket);
//! * [`metrics`]: the Prometheus endpoint.

pub mod exports;
pub mod image;
pub mod metrics;
pub mod nbd;
pub mod overlay;
pub mod reader;
pub mod vhost;

pub use exports::{ExportName, Exports, Prefetch};
pub use image::ImageHandle;
pub use nbd::{Server, ServerConfig};
pub use reader::{ChunkReader, ReadError};
pub use vhost::{StopHandle, VhostError, VhostUserExport};
