//! The NBD handshake: fixed newstyle option haggling, STARTTLS, and the
//! choice of what the connection serves.

use super::proto::*;
use crate::exports::{ExportError, Exports};
use crate::volume::{Volume, VolumeError};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A byte stream a connection runs over (plain socket or TLS).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A boxed [`Stream`]: STARTTLS replaces the plain stream mid-handshake.
pub type BoxStream = Box<dyn Stream>;

/// What one NBD listener serves.
#[derive(Clone, Debug)]
pub enum Catalog {
    /// One volume, on its own socket: the export `""` and the volume's own
    /// name (`TENANT/NAME[@OVERLAY]`) open it; any other name is refused.
    Volume(Arc<Volume>),
    /// Development only (`lode agent --listen ... --dev-open-exports`): any
    /// export of the store by name, each connection with a private overlay.
    Open(Arc<Exports>),
}

/// Why an export name did not open.
enum Refusal {
    /// Not served here.
    Unknown(String),
    /// Served, but not now (a named overlay in use).
    Policy(String),
}

impl Catalog {
    fn volume_named(v: &Arc<Volume>, name: &str) -> bool {
        name.is_empty() || name == v.export.to_string()
    }

    /// Names for `LIST`.
    async fn list(&self) -> Result<Vec<String>, lode_store::StoreError> {
        match self {
            Catalog::Volume(v) => Ok(vec![v.export.to_string()]),
            Catalog::Open(e) => e.list().await,
        }
    }

    /// Size and read-only flag of `name`, for `INFO` (and `GO` before it opens).
    async fn describe(&self, name: &str) -> Result<(u64, bool), Refusal> {
        match self {
            Catalog::Volume(v) if Self::volume_named(v, name) => Ok((v.size(), v.read_only)),
            Catalog::Volume(_) => Err(Refusal::Unknown(format!(
                "this socket serves one volume: export '{name}' is not it"
            ))),
            Catalog::Open(e) => match e.open(name).await {
                Ok((_, image)) => Ok((image.size(), false)),
                Err(err) => {
                    if !matches!(err, ExportError::Unknown(_)) {
                        tracing::warn!(error = %err, "export failed to open");
                    }
                    Err(Refusal::Unknown(err.to_string()))
                }
            },
        }
    }

    /// The volume a `GO` or `EXPORT_NAME` of `name` attaches to.
    async fn choose(&self, name: &str) -> Result<Arc<Volume>, Refusal> {
        match self {
            Catalog::Volume(v) if Self::volume_named(v, name) => Ok(v.clone()),
            Catalog::Volume(_) => Err(Refusal::Unknown(format!(
                "this socket serves one volume: export '{name}' is not it"
            ))),
            Catalog::Open(e) => match Volume::for_client(e, name, false).await {
                Ok(v) => Ok(Arc::new(v)),
                Err(VolumeError::OverlayInUse(n)) => Err(Refusal::Policy(format!(
                    "named overlay {n} in use by another connection"
                ))),
                Err(err) => {
                    if !matches!(err, VolumeError::Export(ExportError::Unknown(_))) {
                        tracing::warn!(error = %err, "export failed to open");
                    }
                    Err(Refusal::Unknown(err.to_string()))
                }
            },
        }
    }
}

/// What the handshake settled.
pub(crate) struct Chosen {
    pub volume: Arc<Volume>,
    pub structured: bool,
    pub base_allocation: bool,
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// Runs the option haggling on `s`; returns the chosen volume (or `None`
/// when the client aborted or asked for an unknown export the old way) and
/// the stream to continue on (TLS after STARTTLS).
pub(crate) async fn handshake(
    catalog: &Catalog,
    tls: Option<&tokio_rustls::TlsAcceptor>,
    mut s: BoxStream,
) -> std::io::Result<(Option<Chosen>, BoxStream)> {
    s.write_u64(NBDMAGIC).await?;
    s.write_u64(IHAVEOPT).await?;
    s.write_u16(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).await?;
    s.flush().await?;
    let cflags = s.read_u32().await?;
    let no_zeroes = cflags & CFLAG_NO_ZEROES != 0;
    let mut structured = false;
    let mut base_allocation = false;
    let mut secure = tls.is_none();
    loop {
        if s.read_u64().await? != IHAVEOPT {
            return Err(invalid("bad option magic"));
        }
        let opt = s.read_u32().await?;
        let len = s.read_u32().await?;
        if len > MAX_OPTION {
            return Err(invalid("option too large"));
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data).await?;
        if !secure && !matches!(opt, OPT_STARTTLS | OPT_ABORT) {
            if opt == OPT_EXPORT_NAME {
                return Ok((None, s)); // no reply is possible: hang up
            }
            reply(
                &mut s,
                opt,
                REP_ERR_TLS_REQD,
                b"TLS is required: send STARTTLS",
            )
            .await?;
            continue;
        }
        match opt {
            OPT_ABORT => {
                let _ = reply(&mut s, opt, REP_ACK, &[]).await;
                return Ok((None, s));
            }
            OPT_STARTTLS => match tls {
                Some(acceptor) if !secure && len == 0 => {
                    reply(&mut s, opt, REP_ACK, &[]).await?;
                    let t = acceptor.accept(s).await?;
                    s = Box::new(t);
                    secure = true;
                }
                Some(_) => reply(&mut s, opt, REP_ERR_INVALID, b"TLS already active").await?,
                None => reply(&mut s, opt, REP_ERR_UNSUP, b"no TLS on this socket").await?,
            },
            OPT_LIST => {
                if len != 0 {
                    reply(&mut s, opt, REP_ERR_INVALID, b"LIST takes no data").await?;
                    continue;
                }
                match catalog.list().await {
                    Ok(names) => {
                        for n in names {
                            let mut d = (n.len() as u32).to_be_bytes().to_vec();
                            d.extend_from_slice(n.as_bytes());
                            reply(&mut s, opt, REP_SERVER, &d).await?;
                        }
                        reply(&mut s, opt, REP_ACK, &[]).await?;
                    }
                    Err(e) => {
                        let why = lode_common::errors::chain(&e);
                        reply(&mut s, opt, REP_ERR_POLICY, why.as_bytes()).await?
                    }
                }
            }
            OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(&data).into_owned();
                let Ok(volume) = catalog.choose(&name).await else {
                    return Ok((None, s));
                };
                s.write_u64(volume.size()).await?;
                s.write_u16(export_flags(volume.read_only)).await?;
                if !no_zeroes {
                    s.write_all(&[0u8; 124]).await?;
                }
                s.flush().await?;
                return Ok((
                    Some(Chosen {
                        volume,
                        structured,
                        base_allocation,
                    }),
                    s,
                ));
            }
            OPT_INFO | OPT_GO => {
                let Some((name, requests)) = parse_info(&data) else {
                    reply(&mut s, opt, REP_ERR_INVALID, b"malformed INFO/GO request").await?;
                    continue;
                };
                let (size, read_only) = match catalog.describe(&name).await {
                    Ok(x) => x,
                    Err(Refusal::Unknown(m)) | Err(Refusal::Policy(m)) => {
                        reply(&mut s, opt, REP_ERR_UNKNOWN, m.as_bytes()).await?;
                        continue;
                    }
                };
                let chosen = if opt == OPT_GO {
                    match catalog.choose(&name).await {
                        Ok(v) => Some(v),
                        Err(Refusal::Policy(m)) => {
                            reply(&mut s, opt, REP_ERR_POLICY, m.as_bytes()).await?;
                            continue;
                        }
                        Err(Refusal::Unknown(m)) => {
                            reply(&mut s, opt, REP_ERR_UNKNOWN, m.as_bytes()).await?;
                            continue;
                        }
                    }
                } else {
                    None
                };
                let mut info = INFO_EXPORT.to_be_bytes().to_vec();
                info.extend_from_slice(&size.to_be_bytes());
                info.extend_from_slice(&export_flags(read_only).to_be_bytes());
                reply(&mut s, opt, REP_INFO, &info).await?;
                if requests.contains(&INFO_BLOCK_SIZE) {
                    let mut b = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                    for v in [1u32, 4096, crate::range::MAX_REQUEST] {
                        b.extend_from_slice(&v.to_be_bytes());
                    }
                    reply(&mut s, opt, REP_INFO, &b).await?;
                }
                reply(&mut s, opt, REP_ACK, &[]).await?;
                if let Some(volume) = chosen {
                    return Ok((
                        Some(Chosen {
                            volume,
                            structured,
                            base_allocation,
                        }),
                        s,
                    ));
                }
            }
            OPT_STRUCTURED_REPLY => {
                if len != 0 {
                    reply(
                        &mut s,
                        opt,
                        REP_ERR_INVALID,
                        b"STRUCTURED_REPLY takes no data",
                    )
                    .await?;
                } else {
                    structured = true;
                    reply(&mut s, opt, REP_ACK, &[]).await?;
                }
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                let Some((_export, queries)) = parse_meta_context(&data) else {
                    reply(
                        &mut s,
                        opt,
                        REP_ERR_INVALID,
                        b"malformed META_CONTEXT request",
                    )
                    .await?;
                    continue;
                };
                if !structured {
                    reply(
                        &mut s,
                        opt,
                        REP_ERR_INVALID,
                        b"negotiate STRUCTURED_REPLY first",
                    )
                    .await?;
                    continue;
                }
                let matched = meta_context_matches(opt == OPT_LIST_META_CONTEXT, &queries);
                if opt == OPT_SET_META_CONTEXT {
                    base_allocation = matched;
                }
                if matched {
                    let mut d = BASE_ALLOCATION_ID.to_be_bytes().to_vec();
                    d.extend_from_slice(BASE_ALLOCATION.as_bytes());
                    reply(&mut s, opt, REP_META_CONTEXT, &d).await?;
                }
                reply(&mut s, opt, REP_ACK, &[]).await?;
            }
            _ => reply(&mut s, opt, REP_ERR_UNSUP, b"option not supported").await?,
        }
    }
}
