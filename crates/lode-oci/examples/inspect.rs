//! Resolve an image source, print its layers, and stream-verify every layer.
//!
//! Usage: `cargo run -p lode-oci --example inspect -- oci:DIR[:REF] | docker-archive:FILE[:REF]`

use std::io::{self, Read};
use std::process::ExitCode;

fn run(arg: &str) -> Result<(), Box<dyn std::error::Error>> {
    let image = lode_oci::Image::open(&arg.parse()?)?;
    println!("source: {}", image.source());
    println!(
        "config: {} ({} bytes)",
        image.config_digest(),
        image.config_json().len()
    );
    for l in image.layers() {
        let mut r = image.open_layer(l.index)?;
        let mut entries = 0usize;
        {
            let mut ar = tar::Archive::new(&mut r);
            for e in ar.entries()? {
                let mut e = e?;
                io::copy(&mut e.by_ref(), &mut io::sink())?;
                entries += 1;
            }
        }
        let bytes = r.uncompressed_bytes();
        r.finish()?;
        println!(
            "layer {}: {} {:?} {} bytes stored, {} bytes tar, {} entries, diff_id {} OK",
            l.index, l.digest, l.compression, l.size, bytes, entries, l.diff_id
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let Some(arg) = std::env::args().nth(1) else {
        eprintln!("usage: inspect TRANSPORT:PATH[:REF]");
        return ExitCode::from(2);
    };
    match run(&arg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
