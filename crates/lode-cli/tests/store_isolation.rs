//! Tenants and tampering: cross-tenant dedup without cross-tenant access,
//! missing keys, flipped bytes in chunks and manifests, forged pointers.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "store_support/store_util.rs"]
mod util;

use lode_chunk::Manifest;
use std::path::PathBuf;
use util::*;

/// A world with the standard image pushed as alice/app.
fn pushed() -> (World, PathBuf, Summary) {
    let w = World::local();
    let src = w.work().join("image.ext4");
    write(&src, &standard_image());
    let s = w.push(&src, "alice", "app");
    (w, src, s)
}

#[test]
fn cross_tenant_dedup_but_no_cross_tenant_access() {
    let (w, src, a) = pushed();
    let (_, _, stored, unique) = expected_counts(&std::fs::read(&src).unwrap());

    // bob pushes the same image: every chunk is already there.
    let b = w.push(&src, "bob", "copy");
    assert_eq!(
        (b.uploaded, b.already, b.bytes_uploaded),
        (0, stored, 0),
        "{b:?}"
    );
    assert_eq!(w.chunk_files().len() as u64, unique);
    let out = w.work().join("bob.ext4");
    w.pull("bob", "copy", &out);
    assert_same(&src, &out);
    assert!(w.home.join("keys/bob.key").is_file());
    assert_ne!(
        std::fs::read(w.home.join("keys/alice.key")).unwrap(),
        std::fs::read(w.home.join("keys/bob.key")).unwrap()
    );

    // bob copies alice's manifest into his namespace and points an image at it.
    let store = w.store_dir().to_path_buf();
    let (_, abytes) = manifest_of(&store, "alice", "app");
    std::fs::write(
        store.join(format!("tenants/bob/manifests/{}", &a.manifest[7..])),
        &abytes,
    )
    .unwrap();
    std::fs::write(
        store.join("tenants/bob/images/stolen"),
        format!(r#"{{"version":1,"manifest":"{}"}}"#, a.manifest),
    )
    .unwrap();
    let stolen = w.work().join("stolen.ext4");
    let e = w
        .run(&[
            "pull",
            "stolen",
            "--tenant",
            "bob",
            "-o",
            stolen.to_str().unwrap(),
        ])
        .err();
    assert!(
        e.contains("tenant 'alice'") && e.contains("'bob/stolen'"),
        "error must say the manifest is alice's, not bob's: {e}"
    );
    assert!(!stolen.exists());
    let e = w.run(&["inspect", "stolen", "--tenant", "bob"]).err();
    assert!(e.contains("tenant 'alice'"), "{e}");

    // Same, with the tenant field rewritten to bob (re-stored under its new
    // digest): bob's key does not open alice's data key.
    let mut m = Manifest::decode(&abytes).unwrap();
    m.tenant = "bob".into();
    let forged = m.encode();
    let fd = Manifest::digest_of(&forged);
    std::fs::write(
        store.join(format!("tenants/bob/manifests/{}", &fd[7..])),
        &forged,
    )
    .unwrap();
    std::fs::write(
        store.join("tenants/bob/images/forged"),
        format!(r#"{{"version":1,"manifest":"{fd}"}}"#),
    )
    .unwrap();
    let e = w
        .run(&[
            "pull",
            "forged",
            "--tenant",
            "bob",
            "-o",
            stolen.to_str().unwrap(),
        ])
        .err();
    assert!(
        e.contains("key of tenant 'bob' does not open"),
        "error must be about bob's key: {e}"
    );
    assert!(!stolen.exists());
    let e = w
        .run(&["inspect", "forged", "--tenant", "bob", "--json"])
        .err();
    assert!(e.contains("key of tenant 'bob'"), "{e}");

    // And with bob's wrapped data key spliced in: the key opens, the table does not authenticate.
    let (_, bbytes) = manifest_of(&store, "bob", "copy");
    let bm = Manifest::decode(&bbytes).unwrap();
    m.wrapped_key = bm.wrapped_key.clone();
    let spliced = m.encode();
    let sd = Manifest::digest_of(&spliced);
    std::fs::write(
        store.join(format!("tenants/bob/manifests/{}", &sd[7..])),
        &spliced,
    )
    .unwrap();
    std::fs::write(
        store.join("tenants/bob/images/spliced"),
        format!(r#"{{"version":1,"manifest":"{sd}"}}"#),
    )
    .unwrap();
    let e = w
        .run(&[
            "pull",
            "spliced",
            "--tenant",
            "bob",
            "-o",
            stolen.to_str().unwrap(),
        ])
        .err();
    assert!(e.contains("does not authenticate"), "{e}");
    assert!(!stolen.exists());

    // alice's key gone: her image cannot be opened, and the error says why.
    std::fs::remove_file(w.home.join("keys/alice.key")).unwrap();
    let e = w
        .run(&[
            "pull",
            "app",
            "--tenant",
            "alice",
            "-o",
            stolen.to_str().unwrap(),
        ])
        .err();
    assert!(e.contains("no key for tenant 'alice'"), "{e}");
    assert!(!stolen.exists());
    let e = w.run(&["inspect", "app", "--tenant", "alice"]).err();
    assert!(e.contains("no key for tenant 'alice'"), "{e}");
    // bob is unaffected.
    w.pull("bob", "copy", &out);
}

/// A second machine (its own LODE_HOME) shares the store but not the key
/// provider: it cannot push into a root whose salt it lacks, nor read keys.
#[test]
fn other_home_without_salt_or_key() {
    let (w, src, _) = pushed();
    let other = w.other_home("elsewhere");
    let e = other
        .run(&[
            "push",
            &format!("ext4:{}", src.display()),
            "--tenant",
            "alice",
            "--name",
            "x",
        ])
        .err();
    assert!(e.contains("no salt"), "{e}");
    let out = w.work().join("o.ext4");
    let e = other
        .run(&[
            "pull",
            "app",
            "--tenant",
            "alice",
            "-o",
            out.to_str().unwrap(),
        ])
        .err();
    assert!(e.contains("no key for tenant 'alice'"), "{e}");
    assert!(!out.exists());
}

/// A second machine pointing `LODE_KEYS` at the first one's keyring (the
/// stand-in for a shared KMS) pushes into the same root: the same image
/// uploads nothing, and either machine pulls what the other pushed.
#[test]
fn second_machine_sharing_the_keyring_dedups_and_pulls() {
    let (w, src, _) = pushed();
    let (_, _, stored, _) = expected_counts(&std::fs::read(&src).unwrap());
    let mut other = w.other_home("builder2");
    other.env.push((
        "LODE_KEYS".into(),
        w.home.join("keys").display().to_string(),
    ));
    let s = other.push(&src, "alice", "again");
    assert_eq!((s.uploaded, s.already), (0, stored), "{s:?}");
    let out = other.work().join("from-first.ext4");
    other.pull("alice", "app", &out);
    assert_same(&src, &out);
    let out = w.work().join("from-second.ext4");
    w.pull("alice", "again", &out);
    assert_same(&src, &out);
    assert!(
        !other.home.join("keys").exists(),
        "the second machine wrote its own keyring"
    );
}

#[test]
fn tampered_chunk_fails_pull_naming_chunk() {
    let (w, src, _) = pushed();
    let img = std::fs::read(&src).unwrap();
    let (_, mbytes) = manifest_of(w.store_dir(), "alice", "app");
    let m = Manifest::decode(&mbytes).unwrap();
    let idx = 27usize; // its plaintext occurs once in the image
    assert_eq!(
        img.chunks(CS)
            .filter(|c| *c == &img[idx * CS..(idx + 1) * CS])
            .count(),
        1
    );
    let name = m.names[idx].unwrap().to_hex();
    let chunk = w
        .store_dir()
        .join(format!("roots/{}/chunks/{}/{name}", m.root, &name[..2]));
    flip_byte(&chunk, 4242);

    let outdir = w.work().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let out = outdir.join("image.ext4");
    let e = w
        .run(&[
            "pull",
            "app",
            "--tenant",
            "alice",
            "-o",
            out.to_str().unwrap(),
        ])
        .err();
    assert!(
        e.contains(&format!("chunk {idx}:")),
        "error must name chunk {idx}: {e}"
    );
    assert!(
        e.contains("mismatch") && e.contains("corrupt or tampered"),
        "{e}"
    );
    assert!(
        files_under(&outdir).is_empty(),
        "files left in OUT's directory: {:?}",
        files_under(&outdir)
    );

    // An existing OUT is left as it was.
    std::fs::write(&out, b"previous contents").unwrap();
    w.run(&[
        "pull",
        "app",
        "--tenant",
        "alice",
        "-o",
        out.to_str().unwrap(),
        "--concurrency",
        "1",
    ])
    .err();
    assert_eq!(std::fs::read(&out).unwrap(), b"previous contents");
    assert_eq!(files_under(&outdir), vec![PathBuf::from("image.ext4")]);

    // Restored, it pulls again; a truncated chunk fails too.
    flip_byte(&chunk, 4242);
    w.pull("alice", "app", &out);
    assert_same(&src, &out);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&chunk)
        .unwrap();
    f.set_len(1000).unwrap();
    let out2 = outdir.join("again.ext4");
    let e = w
        .run(&[
            "pull",
            "app",
            "--tenant",
            "alice",
            "-o",
            out2.to_str().unwrap(),
        ])
        .err();
    assert!(e.contains(&format!("chunk {idx}:")), "{e}");
    assert!(!out2.exists());

    // A chunk replaced by another valid chunk's ciphertext is caught as well.
    let other = m.names[28].unwrap().to_hex();
    let other_path = w
        .store_dir()
        .join(format!("roots/{}/chunks/{}/{other}", m.root, &other[..2]));
    std::fs::copy(&other_path, &chunk).unwrap();
    let e = w
        .run(&[
            "pull",
            "app",
            "--tenant",
            "alice",
            "-o",
            out2.to_str().unwrap(),
        ])
        .err();
    assert!(e.contains(&format!("chunk {idx}:")), "{e}");

    // A deleted chunk: clear error, no output.
    std::fs::remove_file(&chunk).unwrap();
    let e = w
        .run(&[
            "pull",
            "app",
            "--tenant",
            "alice",
            "-o",
            out2.to_str().unwrap(),
        ])
        .err();
    assert!(
        e.contains(&format!("chunk {idx} of the image"))
            && e.contains("missing from the store")
            && e.contains(&name),
        "{e}"
    );
    assert!(!out2.exists());
    assert_eq!(files_under(&outdir), vec![PathBuf::from("image.ext4")]);
}

#[test]
fn tampered_manifest_fails_pull_and_inspect() {
    let (w, src, s) = pushed();
    let (mpath, mbytes) = manifest_of(w.store_dir(), "alice", "app");
    let out = w.work().join("out.ext4");

    // A flipped byte in the stored manifest: its digest no longer matches.
    for off in [10usize, mbytes.len() / 2, mbytes.len() - 1] {
        flip_byte(&mpath, off as u64);
        let e = w
            .run(&[
                "pull",
                "app",
                "--tenant",
                "alice",
                "-o",
                out.to_str().unwrap(),
            ])
            .err();
        assert!(
            e.contains("corrupt") && e.contains(&s.manifest),
            "byte {off}: {e}"
        );
        let e = w
            .run(&["inspect", "app", "--tenant", "alice", "--json"])
            .err();
        assert!(e.contains("corrupt"), "byte {off}: {e}");
        assert!(!out.exists());
        flip_byte(&mpath, off as u64);
    }

    // Someone with write access re-stores a modified manifest under its new
    // digest and repoints the image. They cannot seal a pointer, so they
    // write a legacy (unsealed) one: this host, which has seen the image's
    // version 1, refuses it as a rollback; a host that has not (its record
    // of versions seen removed) reads on and finds the manifest does not
    // authenticate.
    let pointer = w.store_dir().join("tenants/alice/images/app");
    let sealed_pointer = std::fs::read(&pointer).unwrap();
    let forget = || {
        let _ = std::fs::remove_dir_all(w.home.join("seen"));
    };
    let m = Manifest::decode(&mbytes).unwrap();
    let names_at = mbytes.len() - (m.sealed.len() + 4) - m.names.len() * 32;
    for (what, off) in [
        ("a chunk name", names_at + 20 * 32 + 5),
        ("the sealed key table", mbytes.len() - 100),
        ("the GCM tag", mbytes.len() - 1),
    ] {
        let mut bad = mbytes.clone();
        bad[off] ^= 0x20;
        let d = Manifest::digest_of(&bad);
        std::fs::write(
            w.store_dir()
                .join(format!("tenants/alice/manifests/{}", &d[7..])),
            &bad,
        )
        .unwrap();
        std::fs::write(
            w.store_dir().join("tenants/alice/images/app"),
            format!(r#"{{"version":1,"manifest":"{d}"}}"#),
        )
        .unwrap();
        let pull = || {
            w.run(&[
                "pull",
                "app",
                "--tenant",
                "alice",
                "-o",
                out.to_str().unwrap(),
            ])
            .err()
        };
        if what == "a chunk name" {
            let e = pull();
            assert!(e.contains("rolled-back pointer"), "{what}: {e}");
        }
        forget();
        let e = pull();
        assert!(e.contains("does not authenticate"), "{what}: {e}");
        let e = w.run(&["inspect", "app", "--tenant", "alice"]).err();
        assert!(e.contains("does not authenticate"), "{what}: {e}");
        assert!(!out.exists());
    }
    // Garbage under a valid digest: a parse error, not a panic.
    let junk = b"LODEMANI\x01\x00\x00\x00garbage".to_vec();
    let d = Manifest::digest_of(&junk);
    std::fs::write(
        w.store_dir()
            .join(format!("tenants/alice/manifests/{}", &d[7..])),
        &junk,
    )
    .unwrap();
    std::fs::write(
        w.store_dir().join("tenants/alice/images/app"),
        format!(r#"{{"version":1,"manifest":"{d}"}}"#),
    )
    .unwrap();
    forget();
    let e = w
        .run(&[
            "pull",
            "app",
            "--tenant",
            "alice",
            "-o",
            out.to_str().unwrap(),
        ])
        .err();
    assert!(e.contains("manifest"), "{e}");
    // A pointer to a manifest that does not exist; a pointer that is not JSON.
    std::fs::write(
        w.store_dir().join("tenants/alice/images/app"),
        format!(r#"{{"version":1,"manifest":"sha256:{}"}}"#, "ab".repeat(32)),
    )
    .unwrap();
    let e = w
        .run(&[
            "pull",
            "app",
            "--tenant",
            "alice",
            "-o",
            out.to_str().unwrap(),
        ])
        .err();
    assert!(e.contains("missing manifest"), "{e}");
    std::fs::write(w.store_dir().join("tenants/alice/images/app"), b"\x00\x01").unwrap();
    let e = w.run(&["inspect", "app", "--tenant", "alice"]).err();
    assert!(e.contains("image pointer"), "{e}");
    // The original (sealed) pointer restored: all is well again.
    std::fs::write(&pointer, &sealed_pointer).unwrap();
    w.pull("alice", "app", &out);
    assert_same(&src, &out);
}
