//! Writing `newc` cpio archives (the initramfs format).

/// One archive member.
#[derive(Clone, Debug)]
pub enum Member {
    /// Directory with mode bits.
    Dir(String, u32),
    /// Regular file with mode bits and content.
    File(String, u32, Vec<u8>),
    /// Symbolic link to a target.
    Symlink(String, String),
    /// Character device `(path, mode, major, minor)`.
    CharDev(String, u32, u32, u32),
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
    let fields = [
        ino,
        mode,
        0,
        0,
        1,
        0,
        data.len() as u32,
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

/// Encodes members as one `newc` archive, trailer included.
pub fn archive(members: &[Member]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let ino = i as u32 + 1;
        match m {
            Member::Dir(p, mode) => entry(&mut out, ino, p, 0o040000 | mode, &[], (0, 0)),
            Member::File(p, mode, d) => entry(&mut out, ino, p, 0o100000 | mode, d, (0, 0)),
            Member::Symlink(p, t) => entry(&mut out, ino, p, 0o120777, t.as_bytes(), (0, 0)),
            Member::CharDev(p, mode, ma, mi) => {
                entry(&mut out, ino, p, 0o020000 | mode, &[], (*ma, *mi))
            }
        }
    }
    entry(&mut out, 0, "TRAILER!!!", 0, &[], (0, 0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout() {
        let a = archive(&[Member::File("init".into(), 0o755, b"#!/bin/sh\n".to_vec())]);
        assert!(a.starts_with(b"070701"));
        assert_eq!(a.len() % 4, 0);
        assert!(a.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
