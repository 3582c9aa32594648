//! The clock and id source of the store protocol.
//!
//! Everything in the protocol that depends on time (root ages and grace
//! times, lease expiry, alarm times) or on fresh ids (intents, alarms, lease
//! holders) asks the store's [`Environment`], never the system directly, so
//! the deterministic simulation of the protocol (`src/sim`) can run the real
//! code on a virtual clock with replayable ids.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// Time and ids for the store protocol.
pub trait Environment: Send + Sync + fmt::Debug {
    /// Wall-clock time, Unix milliseconds.
    fn now_ms(&self) -> u64;
    /// A fresh id: 16 lower-case hex digits, unique with overwhelming odds.
    fn unique_id(&self) -> String;
}

/// The real clock and the operating system's random source.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemEnv;

impl Environment for SystemEnv {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    fn unique_id(&self) -> String {
        // An id is not a secret; if the random source fails, time and pid
        // still make it unique on this host.
        match lode_chunk::keys::random32() {
            Ok(b) => hex::encode(&b[..8]),
            Err(_) => format!(
                "{:010x}{:06x}",
                self.now_ms() & 0xff_ffff_ffff,
                std::process::id() & 0xff_ffff
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_hex_and_distinct() {
        let a = SystemEnv.unique_id();
        let b = SystemEnv.unique_id();
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert!(SystemEnv.now_ms() > 1_600_000_000_000);
    }
}
