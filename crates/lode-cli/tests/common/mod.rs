//! Shared helpers for the lode CLI integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The `lode` binary under test: `LODE_BIN` if set, else the one cargo
/// built for this package.
pub fn lode_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LODE_BIN") {
        return PathBuf::from(p);
    }
    match option_env!("CARGO_BIN_EXE_lode") {
        Some(p) => PathBuf::from(p),
        None => panic!("set LODE_BIN to the lode binary"),
    }
}

/// Large cases (hundreds of MiB) run only with `LODE_BIG_TESTS=1`.
pub fn big_tests() -> bool {
    std::env::var("LODE_BIG_TESTS").is_ok_and(|v| v == "1")
}

/// A fresh temporary directory.
pub fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("lode-it-")
        .tempdir()
        .expect("tempdir")
}
