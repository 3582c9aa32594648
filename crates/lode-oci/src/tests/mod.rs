//! Integration-style tests over OCI layouts and docker-archives built in a tempdir.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod docker;
mod oci;
mod verify;

use std::io::{self, Read};
use std::path::Path;

use crate::{Image, LayerReader, OciError, Source};

pub(super) fn oci(dir: &Path, reference: Option<&str>) -> Source {
    Source::OciLayout {
        dir: dir.to_owned(),
        reference: reference.map(str::to_owned),
    }
}

pub(super) fn archive(file: &Path, reference: Option<&str>) -> Source {
    Source::DockerArchive {
        file: file.to_owned(),
        reference: reference.map(str::to_owned),
    }
}

/// Reads a layer fully, then finishes it.
pub(super) fn read_layer(img: &Image, i: usize) -> Result<Vec<u8>, OciError> {
    let mut r = img.open_layer(i)?;
    let mut out = Vec::new();
    r.read_to_end(&mut out).map_err(unwrap_io)?;
    assert_eq!(r.uncompressed_bytes(), out.len() as u64);
    r.finish()?;
    Ok(out)
}

/// The OciError inside an io::Error from LayerReader::read.
pub(super) fn unwrap_io(e: io::Error) -> OciError {
    let inner = e
        .into_inner()
        .expect("io::Error from LayerReader carries an OciError");
    *inner
        .downcast::<OciError>()
        .expect("inner error is OciError")
}

/// Reads to EOF, expecting an io::Error; returns it.
pub(super) fn read_err(r: &mut LayerReader) -> io::Error {
    let mut out = Vec::new();
    r.read_to_end(&mut out).expect_err("reading should fail")
}
