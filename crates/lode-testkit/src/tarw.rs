//! Writes a [`LayerSpec`] as a tar stream with the `tar` crate's `Builder`.
//!
//! Headers are built by hand so that paths are written verbatim as raw
//! bytes (the `tar` crate's `set_path` would reject `..` and non-UTF-8 on
//! some platforms). Long names use PAX `path`/`linkpath` records or GNU
//! `L`/`K` entries; xattrs use PAX `SCHILY.xattr.NAME`; uid/gid beyond the
//! octal limit get both base-256 header fields and PAX `uid`/`gid`; sizes of
//! 8 GiB and more get base-256 plus PAX `size`. File content is streamed.

use crate::spec::{EntryKind, LayerSpec, LongNames};
use std::io::{self, Read, Write};

const NAME_LEN: usize = 100;
const OCTAL7_MAX: u64 = 0o7_777_777;
const OCTAL11_MAX: u64 = 0o77_777_777_777;

/// Appends one PAX record `"LEN KEY=VALUE\n"` to `out`.
pub fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    // "LEN KEY=VALUE\n", LEN counts itself.
    let rest = 3 + key.len() + value.len();
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

fn set_raw(field: &mut [u8], bytes: &[u8]) {
    field.fill(0);
    let n = bytes.len().min(field.len());
    field[..n].copy_from_slice(&bytes[..n]);
}

fn gnu_long<W: Write>(b: &mut tar::Builder<W>, typ: u8, data: &[u8]) -> io::Result<()> {
    let mut h = tar::Header::new_gnu();
    set_raw(&mut h.as_old_mut().name, b"././@LongLink");
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(data.len() as u64 + 1);
    h.set_entry_type(tar::EntryType::new(typ));
    h.set_cksum();
    let mut d = data.to_vec();
    d.push(0);
    b.append(&h, &d[..])
}

/// Write the layer as a complete tar stream (including the end-of-archive
/// blocks) into `w`, returning `w`.
pub fn write_layer_tar<W: Write>(spec: &LayerSpec, w: W) -> io::Result<W> {
    let mut b = tar::Builder::new(w);
    for e in &spec.entries {
        let path = e.tar_path();
        let (etype, size, link): (tar::EntryType, u64, Option<&[u8]>) = match &e.kind {
            EntryKind::Dir => (tar::EntryType::Directory, 0, None),
            EntryKind::File(c) => (tar::EntryType::Regular, c.size(), None),
            EntryKind::Whiteout | EntryKind::Opaque => (tar::EntryType::Regular, 0, None),
            EntryKind::Symlink(t) => (tar::EntryType::Symlink, 0, Some(t)),
            EntryKind::Hardlink(t) => (tar::EntryType::Link, 0, Some(t)),
            EntryKind::Fifo => (tar::EntryType::Fifo, 0, None),
            EntryKind::CharDev { .. } => (tar::EntryType::Char, 0, None),
            EntryKind::BlockDev { .. } => (tar::EntryType::Block, 0, None),
        };

        let mut pax = Vec::new();
        if spec.long_names == LongNames::Pax {
            if path.len() > NAME_LEN {
                pax_record(&mut pax, "path", &path);
            }
            if let Some(l) = link {
                if l.len() > NAME_LEN {
                    pax_record(&mut pax, "linkpath", l);
                }
            }
        }
        if e.meta.uid > OCTAL7_MAX {
            pax_record(&mut pax, "uid", e.meta.uid.to_string().as_bytes());
        }
        if e.meta.gid > OCTAL7_MAX {
            pax_record(&mut pax, "gid", e.meta.gid.to_string().as_bytes());
        }
        if size > OCTAL11_MAX {
            pax_record(&mut pax, "size", size.to_string().as_bytes());
        }
        for (k, v) in &e.meta.xattrs {
            pax_record(&mut pax, &format!("SCHILY.xattr.{k}"), v);
        }
        if !pax.is_empty() {
            let mut h = tar::Header::new_ustar();
            set_raw(&mut h.as_old_mut().name, b"PaxHeader");
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_size(pax.len() as u64);
            h.set_entry_type(tar::EntryType::XHeader);
            h.set_cksum();
            b.append(&h, &pax[..])?;
        }
        if spec.long_names == LongNames::Gnu {
            if path.len() > NAME_LEN {
                gnu_long(&mut b, b'L', &path)?;
            }
            if let Some(l) = link {
                if l.len() > NAME_LEN {
                    gnu_long(&mut b, b'K', l)?;
                }
            }
        }

        let mut h = match spec.long_names {
            LongNames::Pax => tar::Header::new_ustar(),
            LongNames::Gnu => tar::Header::new_gnu(),
        };
        set_raw(&mut h.as_old_mut().name, &path);
        if let Some(l) = link {
            set_raw(&mut h.as_old_mut().linkname, l);
        }
        h.set_mode(e.meta.mode & 0o7777);
        h.set_uid(e.meta.uid);
        h.set_gid(e.meta.gid);
        h.set_mtime(e.meta.mtime);
        h.set_size(size);
        h.set_entry_type(etype);
        match e.kind {
            EntryKind::CharDev { major, minor } | EntryKind::BlockDev { major, minor } => {
                h.set_device_major(major)?;
                h.set_device_minor(minor)?;
            }
            _ => {
                h.set_device_major(0)?;
                h.set_device_minor(0)?;
            }
        }
        h.set_cksum();
        match &e.kind {
            EntryKind::File(c) => {
                let r: Box<dyn Read> = Box::new(c.reader());
                b.append(&h, r)?;
            }
            _ => b.append(&h, io::empty())?,
        }
    }
    b.into_inner()
}

/// Convenience: the layer tar in memory (small layers only).
pub fn layer_tar_bytes(spec: &LayerSpec) -> Vec<u8> {
    write_layer_tar(spec, Vec::new()).expect("writing to a Vec cannot fail")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::spec::Entry;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn pax_record_lengths() {
        let mut v = Vec::new();
        pax_record(&mut v, "path", b"abc");
        assert_eq!(v, b"12 path=abc\n");
        let mut v = Vec::new();
        pax_record(&mut v, "k", &[b'x'; 94]);
        // 3 + 1 + 94 = 98 -> "100 k=..." is 101? rest=98, len=98+3=101
        let s = String::from_utf8(v.clone()).unwrap();
        let n: usize = s.split(' ').next().unwrap().parse().unwrap();
        assert_eq!(n, v.len());
    }

    #[test]
    fn roundtrip_with_tar_reader() {
        let long: Vec<u8> = {
            let mut n = b"d/".to_vec();
            n.extend(std::iter::repeat_n(0xffu8, 200));
            n.extend_from_slice(b"\xfe-tail");
            n
        };
        for style in [LongNames::Pax, LongNames::Gnu] {
            let mut spec = LayerSpec::with(vec![
                Entry::dir("d").mode(0o1777).owner(3_000_000, 4_000_000_000),
                Entry::file(&long, "hello").xattr("user.a", b"\x00\x01v"),
                Entry::symlink("d/ln", "x".repeat(150)),
                Entry::hardlink("d/hl", &long),
                Entry::char_dev("d/c", 4, 64),
                Entry::block_dev("d/b", 8, 1),
                Entry::fifo("d/f"),
                Entry::whiteout("d/gone"),
                Entry::opaque("d"),
            ]);
            spec.long_names = style;
            let bytes = layer_tar_bytes(&spec);
            let mut ar = tar::Archive::new(&bytes[..]);
            let mut seen = Vec::new();
            for ent in ar.entries().unwrap() {
                let mut ent = ent.unwrap();
                let p = ent.path().unwrap().as_os_str().as_bytes().to_vec();
                let mut xat = Vec::new();
                if let Some(ex) = ent.pax_extensions().unwrap() {
                    for x in ex {
                        let x = x.unwrap();
                        if let Some(k) = x.key().unwrap().strip_prefix("SCHILY.xattr.") {
                            xat.push((k.to_string(), x.value_bytes().to_vec()));
                        }
                    }
                }
                let link = ent.link_name_bytes().map(|c| c.to_vec());
                let h = ent.header();
                seen.push((
                    p,
                    h.entry_type(),
                    h.uid().unwrap(),
                    h.gid().unwrap(),
                    link,
                    xat,
                    h.device_major().unwrap(),
                ));
            }
            assert_eq!(seen.len(), 9);
            assert_eq!(seen[0].0, b"d/");
            assert_eq!(seen[0].2, 3_000_000);
            assert_eq!(seen[0].3, 4_000_000_000);
            assert_eq!(seen[1].0, long);
            assert_eq!(
                seen[1].5,
                vec![("user.a".to_string(), b"\x00\x01v".to_vec())]
            );
            assert_eq!(seen[2].4.as_deref(), Some("x".repeat(150).as_bytes()));
            assert_eq!(seen[3].4.as_deref(), Some(&long[..]));
            assert_eq!(seen[4].6, Some(4));
            assert_eq!(seen[7].0, b"d/.wh.gone");
            assert_eq!(seen[8].0, b"d/.wh..wh..opq");
        }
    }
}
