//! A small blocking NBD client (fixed newstyle, simple replies) for driving the
//! agent by hand: well-formed requests, and the malformed ones real clients
//! never send.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
pub const CFLAG_FIXED_NEWSTYLE: u32 = 1;
pub const CFLAG_NO_ZEROES: u32 = 2;

pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;

pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_ERR_POLICY: u32 = 0x8000_0002;
pub const REP_ERR_UNKNOWN: u32 = 0x8000_0006;

pub const INFO_EXPORT: u16 = 0;
pub const INFO_BLOCK_SIZE: u16 = 3;

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;

pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;

/// Time any single socket read or write may take before the test fails
/// instead of hanging.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection that has seen the server greeting and sent its client flags.
pub struct Handshake {
    pub s: UnixStream,
    pub server_flags: u16,
}

/// One option reply.
#[derive(Debug, Clone)]
pub struct OptReply {
    pub opt: u32,
    pub kind: u32,
    pub data: Vec<u8>,
}

fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes(b[..2].try_into().expect("2 bytes"))
}
fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
}
fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

/// Connects to a unix socket with read and write timeouts set.
pub fn connect(sock: &Path) -> io::Result<UnixStream> {
    let s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// Reads the 18-byte fixed-newstyle greeting and checks its magics.
pub fn read_greeting<S: Read>(s: &mut S) -> io::Result<u16> {
    let mut g = [0u8; 18];
    s.read_exact(&mut g)?;
    if be_u64(&g[0..8]) != NBDMAGIC || be_u64(&g[8..16]) != IHAVEOPT {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad greeting {g:02x?}"),
        ));
    }
    Ok(be_u16(&g[16..18]))
}

impl Handshake {
    /// Connects, reads the greeting and sends fixed-newstyle + no-zeroes.
    pub fn start(sock: &Path) -> io::Result<Handshake> {
        let mut s = connect(sock)?;
        let server_flags = read_greeting(&mut s)?;
        if server_flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(io::Error::other("server is not fixed newstyle"));
        }
        s.write_all(&(CFLAG_FIXED_NEWSTYLE | CFLAG_NO_ZEROES).to_be_bytes())?;
        Ok(Handshake { s, server_flags })
    }

    /// Sends one option.
    pub fn send_option(&mut self, opt: u32, data: &[u8]) -> io::Result<()> {
        let mut b = Vec::with_capacity(16 + data.len());
        b.extend_from_slice(&IHAVEOPT.to_be_bytes());
        b.extend_from_slice(&opt.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.s.write_all(&b)
    }

    /// Reads one option reply.
    pub fn read_reply(&mut self) -> io::Result<OptReply> {
        let mut h = [0u8; 20];
        self.s.read_exact(&mut h)?;
        if be_u64(&h[0..8]) != OPT_REPLY_MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad option reply magic {h:02x?}"),
            ));
        }
        let len = be_u32(&h[16..20]) as usize;
        if len > 1 << 20 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("option reply of {len} bytes"),
            ));
        }
        let mut data = vec![0u8; len];
        self.s.read_exact(&mut data)?;
        Ok(OptReply {
            opt: be_u32(&h[8..12]),
            kind: be_u32(&h[12..16]),
            data,
        })
    }

    /// Sends GO (or INFO) for `export` asking for block sizes; reads replies up
    /// to the final ACK or error. Returns every reply, the last one final.
    pub fn go_or_info(&mut self, opt: u32, export: &str) -> io::Result<Vec<OptReply>> {
        let mut d = (export.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(export.as_bytes());
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        self.send_option(opt, &d)?;
        let mut out = Vec::new();
        loop {
            let r = self.read_reply()?;
            if r.opt != opt {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("reply to option {} while waiting for {opt}", r.opt),
                ));
            }
            let done = r.kind != REP_INFO;
            out.push(r);
            if done {
                return Ok(out);
            }
        }
    }

    /// Sends LIST and returns the export names.
    pub fn list(&mut self) -> io::Result<Vec<String>> {
        self.send_option(OPT_LIST, &[])?;
        let mut names = Vec::new();
        loop {
            let r = self.read_reply()?;
            match r.kind {
                REP_SERVER => {
                    let n = be_u32(&r.data) as usize;
                    names.push(String::from_utf8_lossy(&r.data[4..4 + n]).into_owned());
                }
                REP_ACK => return Ok(names),
                k => return Err(io::Error::other(format!("LIST failed: reply type {k:#x}"))),
            }
        }
    }
}

/// Why GO failed.
#[derive(Debug)]
pub enum GoError {
    Io(io::Error),
    /// The server answered with this (error) reply type and message.
    Refused {
        kind: u32,
        message: String,
    },
}

/// A connection in the transmission phase.
pub struct Conn {
    pub s: UnixStream,
    pub size: u64,
    pub tflags: u16,
    /// Block sizes (min, preferred, max) if the server sent them.
    pub block_sizes: Option<(u32, u32, u32)>,
    next_handle: u64,
}

/// A simple reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub error: u32,
    pub handle: u64,
}

impl Conn {
    /// Full handshake with NBD_OPT_GO for `export`.
    pub fn go(sock: &Path, export: &str) -> Result<Conn, GoError> {
        let mut h = Handshake::start(sock).map_err(GoError::Io)?;
        let replies = h.go_or_info(OPT_GO, export).map_err(GoError::Io)?;
        let last = replies.last().expect("at least one reply");
        if last.kind != REP_ACK {
            return Err(GoError::Refused {
                kind: last.kind,
                message: String::from_utf8_lossy(&last.data).into_owned(),
            });
        }
        let mut size = None;
        let mut tflags = 0;
        let mut block_sizes = None;
        for r in &replies {
            if r.kind != REP_INFO || r.data.len() < 2 {
                continue;
            }
            match be_u16(&r.data) {
                INFO_EXPORT if r.data.len() == 12 => {
                    size = Some(be_u64(&r.data[2..10]));
                    tflags = be_u16(&r.data[10..12]);
                }
                INFO_BLOCK_SIZE if r.data.len() == 14 => {
                    block_sizes = Some((
                        be_u32(&r.data[2..6]),
                        be_u32(&r.data[6..10]),
                        be_u32(&r.data[10..14]),
                    ));
                }
                _ => {}
            }
        }
        let size = size.ok_or_else(|| {
            GoError::Io(io::Error::other("GO acknowledged without NBD_INFO_EXPORT"))
        })?;
        Ok(Conn {
            s: h.s,
            size,
            tflags,
            block_sizes,
            next_handle: 1,
        })
    }

    /// Like [`Conn::go`] but panics with context on failure.
    pub fn go_ok(sock: &Path, export: &str) -> Conn {
        match Conn::go(sock, export) {
            Ok(c) => c,
            Err(e) => panic!("NBD_OPT_GO {export} on {} failed: {e:?}", sock.display()),
        }
    }

    /// Sends one request header (and payload, if any) without waiting.
    pub fn send_request(
        &mut self,
        cmd: u16,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> io::Result<u64> {
        let handle = self.next_handle;
        self.next_handle += 1;
        let mut b = Vec::with_capacity(28 + payload.len());
        b.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b.extend_from_slice(&0u16.to_be_bytes());
        b.extend_from_slice(&cmd.to_be_bytes());
        b.extend_from_slice(&handle.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(payload);
        self.s.write_all(&b)?;
        Ok(handle)
    }

    /// Reads one simple reply header.
    pub fn read_reply(&mut self) -> io::Result<Reply> {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h)?;
        if be_u32(&h[0..4]) != SIMPLE_REPLY_MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad simple reply magic {h:02x?}"),
            ));
        }
        Ok(Reply {
            error: be_u32(&h[4..8]),
            handle: be_u64(&h[8..16]),
        })
    }

    /// A request answered by a header only (errors, WRITE, FLUSH, TRIM):
    /// returns the error code (0 = success) after checking the handle.
    pub fn command(&mut self, cmd: u16, offset: u64, len: u32, payload: &[u8]) -> io::Result<u32> {
        let handle = self.send_request(cmd, offset, len, payload)?;
        let r = self.read_reply()?;
        if r.handle != handle {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("reply for handle {} while waiting for {handle}", r.handle),
            ));
        }
        Ok(r.error)
    }

    /// READ: `Ok(Ok(bytes))`, or `Ok(Err(errno))` for an error reply.
    pub fn read(&mut self, offset: u64, len: u32) -> io::Result<Result<Vec<u8>, u32>> {
        let handle = self.send_request(CMD_READ, offset, len, &[])?;
        let r = self.read_reply()?;
        if r.handle != handle {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("reply for handle {} while waiting for {handle}", r.handle),
            ));
        }
        if r.error != 0 {
            return Ok(Err(r.error));
        }
        let mut buf = vec![0u8; len as usize];
        self.s.read_exact(&mut buf)?;
        Ok(Ok(buf))
    }

    /// READ that must succeed.
    pub fn read_ok(&mut self, offset: u64, len: u32) -> Vec<u8> {
        match self.read(offset, len) {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => panic!("READ {len} bytes at {offset}: error {e}"),
            Err(e) => panic!("READ {len} bytes at {offset}: {e}"),
        }
    }

    /// WRITE: the error code (0 = success).
    pub fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<u32> {
        self.command(CMD_WRITE, offset, data.len() as u32, data)
    }

    /// Polite disconnect.
    pub fn disconnect(mut self) {
        let _ = self.send_request(CMD_DISC, 0, 0, &[]);
    }
}

/// True if the peer closed the connection (EOF or reset) within the socket's
/// read timeout; false if it sent something or the read timed out.
pub fn peer_closes<S: Read>(s: &mut S) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}
