//! lode's local agent: serves images to VMs as NBD or vhost-user-blk block
//! devices, loading chunks on demand, as a host service.
//!
//! * [`reader`]: the 512 KiB chunk read path (memory → disk → tiers,
//!   single-flight, verify before serve, demand before prefetch);
//! * [`range`]: the checked byte range every request becomes;
//! * [`image`]: byte ranges of one image over the reader;
//! * [`overlay`]: copy-on-write at 4 KiB pages, with its journal;
//! * [`reads`]: the chunks clients read, per manifest digest (what
//!   `GET /v1/images` checks against the caches);
//! * [`exports`]: `TENANT/NAME[@OVERLAY]` names, the images behind them,
//!   prefetch and recording;
//! * [`volume`]: one image served as one block device, with its overlay;
//! * [`session`]: one client of a volume (both transports);
//! * [`serve`]: the accept loop (bound, shutdown, surviving fd exhaustion);
//! * [`nbd`]: the NBD protocol server;
//! * [`vhost`]: the vhost-user-blk backend, with reconnection;
//! * [`tls`]: mutual TLS for NBD over TCP;
//! * [`control`]: the control API, the volume table and restarts;
//! * [`metrics`]: the Prometheus endpoint.

pub mod control;
pub mod exports;
pub mod files;
pub mod image;
pub mod metrics;
pub mod nbd;
pub mod overlay;
pub mod range;
pub mod reader;
pub mod reads;
pub mod serve;
pub mod session;
pub mod tls;
pub mod vhost;
pub mod volume;

pub use exports::{ExportName, Exports, Prefetch};
pub use image::ImageHandle;
pub use nbd::{Catalog, NbdService};
pub use range::{BlockRange, RangeError};
pub use reader::{ChunkReader, Priority, ReadError};
pub use session::Session;
pub use volume::{Via, Volume};
