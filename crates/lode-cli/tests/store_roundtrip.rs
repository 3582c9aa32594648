//! `lode push` / `pull` / `inspect` round trips on a local directory store:
//! a 22 MiB image with holes, in-image repeats and a partial last chunk;
//! edge sizes; an OCI source flattened on the fly; and no plaintext in the
//! store.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "store_support/store_util.rs"]
mod util;

use std::os::unix::fs::PermissionsExt;
use util::*;

#[test]
fn roundtrip_local_holes_repeats_partial_tail() {
    let w = World::local();
    let img = standard_image();
    let (chunks, holes, stored, unique) = expected_counts(&img);
    // The generator is what the test relies on.
    assert_eq!((chunks, holes, stored, unique), (45, 6, 39, 36));
    let src = w.work().join("image.ext4");
    write(&src, &img);

    let s = w.push(&src, "alice", "app");
    assert_eq!((s.chunks, s.holes), (chunks, holes), "{s:?}");
    assert_eq!(
        s.uploaded + s.already,
        stored,
        "every data chunk is either uploaded or found: {s:?}"
    );
    assert!(s.uploaded >= unique, "{s:?}");
    // Random chunks are stored raw; the two chunks the canary text fills
    // (40 and 41) compress (chunk format v2).
    assert!(s.bytes_uploaded >= (unique - 3) * CS as u64 + 777, "{s:?}");
    assert!(s.bytes_uploaded < (unique - 1) * CS as u64, "{s:?}");

    // The store holds each distinct chunk once, named by the SHA-256 of its bytes.
    let chunk_files = w.chunk_files();
    assert_eq!(chunk_files.len() as u64, unique, "{chunk_files:?}");
    let mut compressed = 0;
    for f in &chunk_files {
        let bytes = std::fs::read(w.store_dir().join(f)).unwrap();
        let name = f.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            lode_chunk::Manifest::digest_of(&bytes),
            format!("sha256:{name}"),
            "{f:?}"
        );
        assert_eq!(
            f.parent().unwrap().file_name().unwrap().to_str().unwrap(),
            &name[..2]
        );
        if bytes.len() <= CS - CS / 8 && bytes.len() != 777 {
            compressed += 1;
        } else {
            assert!(
                bytes.len() == CS || bytes.len() == 777,
                "chunk of {} bytes",
                bytes.len()
            );
        }
    }
    assert_eq!(
        compressed, 2,
        "the canary's two chunks are stored compressed"
    );
    // Manifest and pointer are where the layout says.
    let (mpath, _) = manifest_of(w.store_dir(), "alice", "app");
    assert_eq!(
        mpath.file_name().unwrap().to_str().unwrap(),
        &s.manifest[7..]
    );

    // Keys: the tenant's key was created on first push, 0600; one salt.
    let key = w.home.join("keys/alice.key");
    let meta = std::fs::metadata(&key).unwrap();
    assert_eq!((meta.len(), meta.permissions().mode() & 0o777), (32, 0o600));
    assert_eq!(files_under(&w.home.join("keys/salts")).len(), 1);

    // Pull: byte-identical, partial tail included, nothing else left in OUT's directory.
    let outdir = w.work().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let out = outdir.join("pulled.ext4");
    w.pull("alice", "app", &out);
    assert_same(&src, &out);
    assert_eq!(
        files_under(&outdir),
        vec![std::path::PathBuf::from("pulled.ext4")]
    );

    // inspect --json.
    let j = w.inspect("alice", "app");
    assert_eq!(j["tenant"], "alice");
    assert_eq!(j["name"], "app");
    assert_eq!(j["manifest"], s.manifest.as_str());
    assert_eq!(j["image_size"], img.len() as u64);
    assert_eq!(j["chunk_size"], CS as u64);
    assert_eq!(j["chunks"], chunks);
    assert_eq!(j["holes"], holes);
    assert_eq!(j["stored_chunks"], stored);
    assert_eq!(j["unique_chunks"], unique);
    assert_eq!(j["root_state"], "active");
    assert_eq!(j["authenticated"], true);
    // Sizes: logical bytes of the distinct chunks, what the store holds for
    // them (the chunk files' bytes), and the compressed share.
    let on_disk: u64 = chunk_files
        .iter()
        .map(|f| std::fs::metadata(w.store_dir().join(f)).unwrap().len())
        .sum();
    assert_eq!(j["logical_bytes"], (unique - 1) * CS as u64 + 777);
    assert_eq!(j["stored_bytes"], on_disk);
    assert_eq!(j["compressed_chunks"], 2);
    assert_eq!(j["raw_chunks"], unique - 2);
    assert_eq!(j["compressed_logical_bytes"], 2 * CS as u64);
    assert!(
        j["compressed_stored_bytes"].as_u64().unwrap() < CS as u64 / 2,
        "{j}"
    );
    assert_eq!(
        j["manifest_bytes"],
        std::fs::metadata(&mpath).unwrap().len()
    );
    // The text form says the same.
    let text = w.run(&["inspect", "app", "--tenant", "alice"]).ok().stdout;
    assert!(
        text.contains(&format!("{stored} stored ({unique} unique), {holes} holes")),
        "{text}"
    );
    assert!(text.contains("2 zstd ("), "{text}");
    assert!(text.contains(&format!(", {} raw", unique - 2)), "{text}");

    // Pushing again uploads nothing.
    let again = w.push(&src, "alice", "app");
    assert_eq!(
        (again.uploaded, again.already, again.bytes_uploaded),
        (0, stored, 0),
        "{again:?}"
    );
    assert_eq!(w.chunk_files().len() as u64, unique);
}

/// Sizes around chunk boundaries, including empty and one-byte images.
/// `lode push --compress never`: every chunk stored raw (codec 0, the
/// ciphertext as long as the plaintext), read back identically, shown so by
/// `inspect`; the raw chunks are the very objects `--compress auto` stores
/// for incompressible data, so an auto push next to it uploads only the
/// chunks that compress. A value that is not a policy is refused.
#[test]
fn push_compress_never_stores_every_chunk_raw() {
    let w = World::local();
    let img = standard_image();
    let (chunks, holes, stored, unique) = expected_counts(&img);
    let src = w.work().join("image.ext4");
    write(&src, &img);
    let srcarg = format!("ext4:{}", src.display());
    let logical = (unique - 1) * CS as u64 + 777;

    let bad = w.run(&[
        "push",
        &srcarg,
        "--tenant",
        "alice",
        "--name",
        "x",
        "--compress",
        "sometimes",
    ]);
    assert!(!bad.status.success(), "{bad:?}");
    assert!(bad.stderr.contains("sometimes"), "{}", bad.stderr);
    assert!(w.chunk_files().is_empty(), "a refused push stores nothing");

    let s = w
        .run(&[
            "push",
            &srcarg,
            "--tenant",
            "alice",
            "--name",
            "raw",
            "--compress",
            "never",
        ])
        .ok()
        .summary();
    assert_eq!(
        (s.chunks, s.holes, s.uploaded),
        (chunks, holes, unique),
        "{s:?}"
    );
    assert_eq!(
        s.bytes_uploaded, logical,
        "raw: stored bytes = plaintext bytes"
    );
    let files = w.chunk_files();
    assert_eq!(files.len() as u64, unique);
    for f in &files {
        let n = std::fs::metadata(w.store_dir().join(f)).unwrap().len();
        assert!(n == CS as u64 || n == 777, "{f:?}: {n} bytes");
    }
    let j = w.inspect("alice", "raw");
    assert_eq!(j["compressed_chunks"], 0, "{j}");
    assert_eq!(j["raw_chunks"], unique, "{j}");
    assert_eq!(j["logical_bytes"], logical);
    assert_eq!(j["stored_bytes"], logical);
    let text = w.run(&["inspect", "raw", "--tenant", "alice"]).ok().stdout;
    assert!(
        text.contains(&format!("0 zstd (0 B logical in 0 B stored), {unique} raw")),
        "{text}"
    );
    let out = w.work().join("pulled.ext4");
    w.pull("alice", "raw", &out);
    assert_same(&src, &out);

    // The default (auto) beside it: only the two chunks the canary text
    // fills are new (compressed); every other chunk is the same object.
    let a = w.push(&src, "alice", "auto");
    assert_eq!((a.uploaded, a.already), (2, stored - 2), "{a:?}");
    assert_eq!(w.chunk_files().len() as u64, unique + 2);
    let ja = w.inspect("alice", "auto");
    assert_eq!(ja["compressed_chunks"], 2);
    assert_eq!(
        ja["format_version"], j["format_version"],
        "one manifest format"
    );
    let out2 = w.work().join("pulled-auto.ext4");
    w.pull("alice", "auto", &out2);
    assert_same(&src, &out2);
}

#[test]
fn roundtrip_edge_sizes() {
    let w = World::local();
    let sizes = [0usize, 1, 4095, CS - 1, CS, CS + 1, 3 * CS + 12_345];
    for (k, &n) in sizes.iter().enumerate() {
        let mut data = noise(k as u64 + 7, n);
        if n > CS {
            // An all-zero first chunk in front of data: a hole that is not at the end.
            data[..CS].fill(0);
        }
        let src = w.work().join(format!("img-{n}"));
        write(&src, &data);
        let name = format!("size-{n}");
        let s = w.push(&src, "edge", &name);
        let (chunks, holes, stored, _) = expected_counts(&data);
        assert_eq!(
            (s.chunks, s.holes, s.uploaded + s.already),
            (chunks, holes, stored),
            "size {n}: {s:?}"
        );
        let out = w.work().join(format!("out-{n}"));
        w.pull("edge", &name, &out);
        assert_same(&src, &out);
        let j = w.inspect("edge", &name);
        assert_eq!(
            (j["image_size"].as_u64(), j["chunks"].as_u64()),
            (Some(n as u64), Some(chunks)),
            "size {n}"
        );
    }
    // A sparse file whose data sits between two large holes.
    let sparse = w.work().join("sparse");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(&sparse).unwrap();
        f.set_len(40 * MIB as u64 + 100).unwrap();
        f.write_all_at(&noise(5, 3 * CS), 17 * MIB as u64 + 4096)
            .unwrap();
    }
    let s = w.push(&sparse, "edge", "sparse");
    assert_eq!(
        (s.chunks, s.holes, s.uploaded + s.already),
        (81, 77, 4),
        "{s:?}"
    );
    let out = w.work().join("out-sparse");
    w.pull("edge", "sparse", &out);
    assert_same(&sparse, &out);
}

/// `push oci:DIR:REF` flattens on the fly; the stored image is exactly what
/// `lode flatten` writes, and pulls back byte for byte.
#[test]
fn push_oci_source_equals_flatten() {
    let w = World::local();
    let big = noise(3, 2 * MIB + 1000);
    let l1 = tar(&[
        TarEntry::Dir("etc"),
        TarEntry::File("etc/hostname", b"lode-test\n"),
        TarEntry::Dir("opt"),
        TarEntry::File("opt/data.bin", &big),
    ]);
    let can = canary();
    let l2 = tar(&[
        TarEntry::Dir("srv"),
        TarEntry::File("srv/canary.txt", &can),
        TarEntry::File("etc/motd", b"hello\n"),
    ]);
    let layout = w.work().join("layout");
    write_oci_layout(&layout, &[l1, l2], "v1");
    let source = format!("oci:{}:v1", layout.display());

    let flat = w.work().join("flat.ext4");
    w.flatten(&source, &flat);
    let s = w
        .run(&["push", &source, "--tenant", "oci", "--name", "img:v1"])
        .ok()
        .summary();
    let flat_bytes = std::fs::read(&flat).unwrap();
    let (chunks, holes, stored, _) = expected_counts(&flat_bytes);
    assert_eq!(
        (s.chunks, s.holes, s.uploaded + s.already),
        (chunks, holes, stored),
        "{s:?}"
    );
    assert!(
        holes > 0 && stored >= 6,
        "a flattened image is mostly holes, with the layers' data: {s:?}"
    );
    // The temporary flattened image under $LODE_HOME/tmp is gone.
    assert!(
        files_under(&w.home.join("tmp")).is_empty(),
        "{:?}",
        files_under(&w.home.join("tmp"))
    );
    let out = w.work().join("pulled.ext4");
    w.pull("oci", "img:v1", &out);
    assert_same(&flat, &out);
    // The canary file is in the image, but nowhere in the store.
    let windows = Windows::new(&can);
    assert!(
        windows.find_in(&flat_bytes).is_some(),
        "the canary must be in the flattened image"
    );
    for f in w.store_files() {
        let bytes = std::fs::read(w.store_dir().join(&f)).unwrap();
        assert_eq!(
            windows.find_in(&bytes),
            None,
            "plaintext of the image found in store file {f:?}"
        );
    }
}

/// A distinctive 1 MiB plaintext in the image appears in no store object,
/// not even as one 64-byte window (chunks, manifests, pointers, roots).
#[test]
fn no_plaintext_in_store() {
    let w = World::local();
    let img = standard_image();
    let src = w.work().join("image.ext4");
    write(&src, &img);
    let can = canary();
    let windows = Windows::new(&can);
    // The scanner finds the canary where it is (so it can fail).
    assert_eq!(windows.find_in(&img), Some(40 * CS + 4321));
    assert!(
        windows
            .find_in(&img[40 * CS + 4321 + 500_000..][..WINDOW])
            .is_some(),
        "an unaligned window is found"
    );

    w.push(&src, "alice", "app");
    w.push(&src, "bob", "app");
    let files = w.store_files();
    assert!(files.len() >= 35 + 4, "{files:?}");
    let mut scanned = 0u64;
    for f in &files {
        let bytes = std::fs::read(w.store_dir().join(f)).unwrap();
        scanned += bytes.len() as u64;
        assert_eq!(
            windows.find_in(&bytes),
            None,
            "plaintext of the image found in store file {f:?}"
        );
        // Nor is any 64-byte window of another (random) chunk of the image in clear.
        let other = Windows::new(&img[7 * CS..8 * CS]);
        assert_eq!(
            other.find_in(&bytes),
            None,
            "plaintext of chunk 7 found in store file {f:?}"
        );
    }
    // 34 random chunks raw, the canary's two compressed.
    assert!(scanned > 16 * MIB as u64, "scanned only {scanned} bytes");
}

/// Three layers of 12 MiB of noise and many small files each: `push oci:`
/// uploads most chunks while the image is still being written (streamed),
/// and what it stores is chunk for chunk what a push of the finished
/// `lode flatten` output stores (that push finds every chunk already
/// there) and pulls back byte for byte.
#[test]
fn streamed_push_equals_push_of_the_flattened_file() {
    let w = World::local();
    let mut layers = Vec::new();
    let mut bufs: Vec<(String, Vec<u8>)> = Vec::new();
    for l in 0..3u64 {
        bufs.clear();
        bufs.push((format!("l{l}/big.bin"), noise(10 + l, 12 * MIB + 777)));
        for f in 0..200u64 {
            bufs.push((
                format!("l{l}/small/{f}"),
                noise(100 * l + f, 3000 + f as usize * 37),
            ));
        }
        let mut entries = vec![
            TarEntry::Dir("l0"),
            TarEntry::Dir("l1"),
            TarEntry::Dir("l2"),
        ];
        entries.push(TarEntry::Dir(Box::leak(
            format!("l{l}/small").into_boxed_str(),
        )));
        entries.extend(bufs.iter().map(|(p, d)| TarEntry::File(p, d)));
        layers.push(tar(&entries));
    }
    let layout = w.work().join("layout");
    write_oci_layout(&layout, &layers, "v1");
    let source = format!("oci:{}:v1", layout.display());
    let s = w
        .run(&["push", &source, "--tenant", "t", "--name", "streamed"])
        .ok()
        .summary();
    assert!(
        s.streamed * 2 >= s.chunks - s.holes,
        "most chunks should be uploaded while the image is written: {s:?}"
    );
    let flat = w.work().join("flat.ext4");
    w.flatten(&source, &flat);
    let again = w.push(&flat, "t", "file");
    assert_eq!(
        again.uploaded, 0,
        "every chunk was stored by the streamed push: {again:?}"
    );
    assert_eq!((again.chunks, again.holes), (s.chunks, s.holes));
    assert_eq!(again.streamed, 0);
    assert!(files_under(&w.home.join("tmp")).is_empty());
    let out = w.work().join("pulled.ext4");
    w.pull("t", "streamed", &out);
    assert_same(&flat, &out);
}

/// A push whose last layer turns out corrupt (its digest is checked at its
/// end, after the layers below were streamed to the store) fails naming the
/// layer, publishes nothing and leaves no temp file.
#[test]
fn streamed_push_of_a_corrupt_last_layer_publishes_nothing() {
    let w = World::local();
    let big = noise(7, 20 * MIB);
    let l1 = tar(&[TarEntry::Dir("opt"), TarEntry::File("opt/big", &big)]);
    let l2 = tar(&[TarEntry::File("opt/last", &noise(8, 3 * MIB))]);
    let layout = w.work().join("layout");
    write_oci_layout(&layout, &[l1, l2.clone()], "v1");
    // Flip one byte of the last layer's blob (found by its digest).
    let digest = {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(&l2))
    };
    let blob = layout.join("blobs/sha256").join(&digest);
    let mut bytes = std::fs::read(&blob).unwrap();
    let at = bytes.len() - 5000;
    bytes[at] ^= 0x55;
    std::fs::write(&blob, bytes).unwrap();
    let source = format!("oci:{}:v1", layout.display());
    let r = w.run(&["push", &source, "--tenant", "t", "--name", "bad"]);
    let err = r.err();
    assert!(
        err.contains(&digest[..12]),
        "the error names the layer: {err}"
    );
    assert!(
        !w.store_dir().join("tenants/t/images/bad").exists(),
        "no pointer for a failed push"
    );
    assert!(files_under(&w.home.join("tmp")).is_empty());
}
