//! NBD wire constants and the parsers of option payloads (untrusted input:
//! fuzzed by `agent_nbd_info` and `agent_nbd_meta_context`).

use tokio::io::{AsyncWrite, AsyncWriteExt};

pub(crate) const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub(crate) const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
pub(crate) const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub(crate) const REQUEST_MAGIC: u32 = 0x2560_9513;
pub(crate) const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub(crate) const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

pub(crate) const FLAG_FIXED_NEWSTYLE: u16 = 1;
pub(crate) const FLAG_NO_ZEROES: u16 = 2;
pub(crate) const CFLAG_NO_ZEROES: u32 = 2;

pub(crate) const OPT_EXPORT_NAME: u32 = 1;
pub(crate) const OPT_ABORT: u32 = 2;
pub(crate) const OPT_LIST: u32 = 3;
pub(crate) const OPT_STARTTLS: u32 = 5;
pub(crate) const OPT_INFO: u32 = 6;
pub(crate) const OPT_GO: u32 = 7;
pub(crate) const OPT_STRUCTURED_REPLY: u32 = 8;
pub(crate) const OPT_LIST_META_CONTEXT: u32 = 9;
pub(crate) const OPT_SET_META_CONTEXT: u32 = 10;

pub(crate) const REP_ACK: u32 = 1;
pub(crate) const REP_SERVER: u32 = 2;
pub(crate) const REP_INFO: u32 = 3;
pub(crate) const REP_META_CONTEXT: u32 = 4;
pub(crate) const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
pub(crate) const REP_ERR_POLICY: u32 = (1 << 31) + 2;
pub(crate) const REP_ERR_INVALID: u32 = (1 << 31) + 3;
pub(crate) const REP_ERR_TLS_REQD: u32 = (1 << 31) + 5;
pub(crate) const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;

pub(crate) const INFO_EXPORT: u16 = 0;
pub(crate) const INFO_BLOCK_SIZE: u16 = 3;

pub(crate) const TFLAG_HAS_FLAGS: u16 = 1;
pub(crate) const TFLAG_READ_ONLY: u16 = 2;
pub(crate) const TFLAG_SEND_FLUSH: u16 = 4;
pub(crate) const TFLAG_SEND_FUA: u16 = 8;
pub(crate) const TFLAG_SEND_TRIM: u16 = 32;

/// Transmission flags of a volume.
pub(crate) fn export_flags(read_only: bool) -> u16 {
    let base = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH;
    if read_only {
        base | TFLAG_READ_ONLY
    } else {
        base | TFLAG_SEND_FUA | TFLAG_SEND_TRIM
    }
}

pub(crate) const CMD_READ: u16 = 0;
pub(crate) const CMD_WRITE: u16 = 1;
pub(crate) const CMD_DISC: u16 = 2;
pub(crate) const CMD_FLUSH: u16 = 3;
pub(crate) const CMD_TRIM: u16 = 4;
pub(crate) const CMD_BLOCK_STATUS: u16 = 7;

/// Command flag: force unit access (the write is durable when answered).
pub(crate) const CMD_FLAG_FUA: u16 = 1;
/// Command flag of BLOCK_STATUS: one extent is enough.
pub(crate) const CMD_FLAG_REQ_ONE: u16 = 1 << 3;

pub(crate) const REPLY_FLAG_DONE: u16 = 1;
pub(crate) const REPLY_TYPE_NONE: u16 = 0;
pub(crate) const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub(crate) const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub(crate) const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub(crate) const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

/// The one metadata context served, and its id.
pub(crate) const BASE_ALLOCATION: &str = "base:allocation";
pub(crate) const BASE_ALLOCATION_ID: u32 = 1;
/// `base:allocation` flags of an extent that is a hole reading as zeros.
pub(crate) const STATE_HOLE_ZERO: u32 = 3;

pub(crate) const EPERM: u32 = 1;
pub(crate) const EIO: u32 = 5;
pub(crate) const EINVAL: u32 = 22;
pub(crate) const ENOTSUP: u32 = 95;

/// Largest option payload accepted during the handshake.
pub(crate) const MAX_OPTION: u32 = 64 << 10;

/// Parses INFO/GO data: `u32 name length, name, u16 count, count × u16`.
pub fn parse_info(d: &[u8]) -> Option<(String, Vec<u16>)> {
    let n = u32::from_be_bytes(d.get(..4)?.try_into().ok()?) as usize;
    let name = d.get(4..4usize.checked_add(n)?)?;
    let rest = &d[4 + n..];
    let count = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    let reqs = rest.get(2..)?;
    if reqs.len() != count * 2 {
        return None;
    }
    let list = reqs
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    Some((String::from_utf8_lossy(name).into_owned(), list))
}

/// Parses LIST/SET_META_CONTEXT data: `u32 export name length, name, u32
/// query count, count × (u32 length, query)`.
pub fn parse_meta_context(d: &[u8]) -> Option<(String, Vec<String>)> {
    let n = u32::from_be_bytes(d.get(..4)?.try_into().ok()?) as usize;
    let name = d.get(4..4usize.checked_add(n)?)?;
    let mut rest = &d[4 + n..];
    let count = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    rest = &rest[4..];
    // Every query takes at least 4 bytes: a bogus count cannot allocate.
    if count > rest.len() / 4 {
        return None;
    }
    let mut queries = Vec::with_capacity(count);
    for _ in 0..count {
        let l = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let q = rest.get(4..4usize.checked_add(l)?)?;
        queries.push(String::from_utf8_lossy(q).into_owned());
        rest = &rest[4 + l..];
    }
    if !rest.is_empty() {
        return None;
    }
    Some((String::from_utf8_lossy(name).into_owned(), queries))
}

/// Whether `base:allocation` answers these queries. LIST with no query, or
/// with the namespace query `base:`, lists every context; SET needs the exact
/// name.
pub(crate) fn meta_context_matches(list: bool, queries: &[String]) -> bool {
    if list && queries.is_empty() {
        return true;
    }
    queries
        .iter()
        .any(|q| q == BASE_ALLOCATION || (list && q == "base:"))
}

/// Writes one option reply.
pub(crate) async fn reply<W: AsyncWrite + Unpin + ?Sized>(
    wr: &mut W,
    opt: u32,
    kind: u32,
    data: &[u8],
) -> std::io::Result<()> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&opt.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    wr.write_all(&b).await?;
    wr.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_parsing() {
        let mut d = 3u32.to_be_bytes().to_vec();
        d.extend_from_slice(b"a/b");
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&3u16.to_be_bytes());
        assert_eq!(parse_info(&d), Some(("a/b".into(), vec![3])));
        assert_eq!(parse_info(&d[..5]), None);
        let mut huge = u32::MAX.to_be_bytes().to_vec();
        huge.extend_from_slice(b"xx");
        assert_eq!(parse_info(&huge), None);
    }

    #[test]
    fn flags() {
        assert_eq!(export_flags(true) & TFLAG_READ_ONLY, TFLAG_READ_ONLY);
        assert_eq!(export_flags(true) & TFLAG_SEND_TRIM, 0);
        assert_eq!(export_flags(false) & TFLAG_SEND_FUA, TFLAG_SEND_FUA);
    }
}
