//! Small pieces every layer of lode shares, kept in one place:
//!
//! * [`errors`]: an error with its causes on one line;
//! * [`escape`]: shows untrusted bytes (entry names, paths, keys, tenant and
//!   image names) in messages with control characters escaped, so a name
//!   like `evil<ESC>[2J` never reaches a terminal raw;
//! * [`bufpool`]: bounded pools of reused large buffers, lent out as
//!   `Bytes` that return on drop (push chunks, disk-tier reads);
//! * [`prom`]: Prometheus text (descriptions, samples, latency
//!   histograms), so every `/metrics` endpoint writes it the same way;
//! * [`temp`]: the output temp file every long-running writer (`flatten`,
//!   `pull`, `push`) uses: locked while its writer lives, renamed into place
//!   when complete, removed on error, and swept by the next run when a
//!   killed writer left it behind.
//!
//! The crate depends on no other lode crate, so every layer may use it.

pub mod bufpool;
pub mod errors;
pub mod escape;
pub mod prom;
pub mod temp;

pub use escape::{escape, escape_controls, escape_str, Shown};
pub use temp::LockedTemp;
