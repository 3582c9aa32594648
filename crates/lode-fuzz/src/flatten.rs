//! The flatten crate's layer tar reader (ustar, GNU, PAX, sparse).

/// `flatten_tar`: arbitrary bytes as one layer's uncompressed tar stream.
pub fn tar(data: &[u8]) {
    lode_flatten::fuzz_tar(data);
}
