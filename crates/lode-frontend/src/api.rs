//! The Lambda API operations, for one authenticated tenant.
//!
//! | operation | request |
//! |---|---|
//! | CreateFunction | `POST /2015-03-31/functions` |
//! | ListFunctions | `GET /2015-03-31/functions/` |
//! | GetFunction | `GET /2015-03-31/functions/{name}` |
//! | GetFunctionConfiguration | `GET /2015-03-31/functions/{name}/configuration` |
//! | UpdateFunctionConfiguration | `PUT /2015-03-31/functions/{name}/configuration` |
//! | UpdateFunctionCode | `PUT /2015-03-31/functions/{name}/code` |
//! | DeleteFunction | `DELETE /2015-03-31/functions/{name}` |
//! | Invoke | `POST /2015-03-31/functions/{name}/invocations` |
//!
//! `{name}` is a name, `ACCOUNT:function:NAME` or a full ARN, with at most
//! the qualifier `$LATEST` (lode keeps no published versions or aliases).

use crate::error::{refuse, Result};
use crate::functions::{self, FunctionRecord};
use crate::metrics::Outcome;
use crate::shapes::{self, FunctionConfiguration};
use crate::Frontend;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use lode_lambda::{
    ErrorKind, FunctionSpec, ImageConfig, ImageRef, InvokeOutcome, InvokeRequest, LambdaError,
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;

/// What an operation answers.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    fn json<T: Serialize>(status: u16, v: &T) -> Reply {
        Reply {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: Bytes::from(serde_json::to_vec(v).expect("a reply serializes")),
        }
    }

    fn empty(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// The answer to a refused request.
    pub fn error(e: &LambdaError) -> Reply {
        Reply {
            status: e.status(),
            headers: lode_lambda::http::error_headers(e)
                .iter()
                .map(|(k, v)| (*k, v.to_string()))
                .collect(),
            body: Bytes::from(e.body()),
        }
    }
}

/// One request, authenticated as `tenant`.
#[derive(Debug)]
pub struct Call<'a> {
    /// The caller's tenant.
    pub tenant: &'a str,
    /// HTTP method.
    pub method: &'a str,
    /// Path, percent-decoded.
    pub path: &'a str,
    /// Query parameters, percent-decoded.
    pub query: &'a BTreeMap<String, String>,
    /// Headers (name, value) as received.
    pub headers: &'a [(String, String)],
    /// Body.
    pub body: &'a [u8],
}

impl Call<'_> {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }
}

/// Lambda's limits on a function.
pub const MEMORY_MIB: std::ops::RangeInclusive<i64> = 128..=10240;
/// Lambda's limits on a timeout, seconds.
pub const TIMEOUT_S: std::ops::RangeInclusive<i64> = 1..=900;
/// Largest environment (all names and values), bytes.
pub const MAX_ENVIRONMENT: usize = 4096;
/// Largest image run settings accepted from an image.
pub const MAX_RUN_SETTINGS: u64 = 64 << 10;
/// Variables Lambda sets itself and refuses from a function.
pub const RESERVED_VARIABLES: &[&str] = &[
    "_HANDLER",
    "_X_AMZN_TRACE_ID",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_EXECUTION_ENV",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_INITIALIZATION_TYPE",
    "AWS_LAMBDA_LOG_GROUP_NAME",
    "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_LAMBDA_RUNTIME_API",
    "LAMBDA_TASK_ROOT",
    "LAMBDA_RUNTIME_DIR",
];

fn invalid(message: impl Into<String>) -> crate::FrontendError {
    refuse(ErrorKind::InvalidParameterValueException, message)
}

/// The 12-digit account id lode shows for a tenant in ARNs.
pub fn account_of(tenant: &str) -> String {
    let h = Sha256::new()
        .chain_update(b"lode-account\0")
        .chain_update(tenant.as_bytes())
        .finalize();
    let n = u64::from_be_bytes(h[..8].try_into().expect("8 bytes")) % 1_000_000_000_000;
    format!("{n:012}")
}

fn not_found(tenant: &str, region: &str, name: &str) -> crate::FrontendError {
    refuse(
        ErrorKind::ResourceNotFoundException,
        format!(
            "Function not found: arn:aws:lambda:{region}:{}:function:{name}",
            account_of(tenant)
        ),
    )
}

fn now_lambda() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}+0000",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

impl Frontend {
    /// Answers one call (every error already a Lambda error reply).
    pub async fn call(&self, c: &Call<'_>) -> Reply {
        let started = std::time::Instant::now();
        let op = operation(c.method, c.path);
        let span = tracing::info_span!("lambda", operation = op, tenant = c.tenant);
        let reply = match tracing::Instrument::instrument(self.route(c), span).await {
            Ok(r) => r,
            Err(e) => {
                let e = e.to_lambda();
                if e.kind.fault() == "Service" {
                    tracing::warn!(tenant = c.tenant, path = c.path, error = %e, "request failed");
                }
                Reply::error(&e)
            }
        };
        let outcome = match reply.status {
            200..=299 => Outcome::Ok,
            400..=499 => Outcome::User,
            _ => Outcome::Service,
        };
        self.metrics.record(op, outcome, started.elapsed());
        reply
    }

    async fn route(&self, c: &Call<'_>) -> Result<Reply> {
        let rest = c
            .path
            .strip_prefix("/2015-03-31/functions")
            .ok_or_else(|| {
                refuse(
                    ErrorKind::ResourceNotFoundException,
                    format!("no operation at {}", c.path),
                )
            })?;
        let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
        match (c.method, parts.as_slice()) {
            ("POST", []) => self.create(c).await,
            ("GET", []) => self.list(c).await,
            ("GET", [name]) => {
                let rec = self.find(c, name).await?.0;
                Ok(Reply::json(200, &self.get_answer(&rec)))
            }
            ("GET", [name, "configuration"]) => {
                let rec = self.find(c, name).await?.0;
                Ok(Reply::json(200, &FunctionConfiguration::of(&rec)))
            }
            ("DELETE", [name]) => {
                let name = self.own_name(c, name)?;
                if !functions::delete(&self.store, self.keys.as_ref(), c.tenant, &name).await? {
                    return Err(not_found(c.tenant, &self.region, &name));
                }
                Ok(Reply::empty(204))
            }
            ("PUT", [name, "code"]) => self.update_code(c, name).await,
            ("PUT", [name, "configuration"]) => self.update_configuration(c, name).await,
            ("POST", [name, "invocations"]) => self.invoke(c, name).await,
            _ => Err(refuse(
                ErrorKind::ResourceNotFoundException,
                format!("no operation {} {}", c.method, c.path),
            )),
        }
    }

    /// The function name in `raw` (a name, a partial or a full ARN), if it
    /// is the caller's; the qualifier must be absent or `$LATEST`.
    fn own_name(&self, c: &Call<'_>, raw: &str) -> Result<String> {
        let mut parts: Vec<&str> = raw.split(':').collect();
        let qualifier = c.query.get("Qualifier").map(String::as_str);
        let mut account = None;
        let name = match parts.as_slice() {
            [n] => *n,
            [n, q] => {
                if *q != "$LATEST" {
                    return Err(not_found(c.tenant, &self.region, &format!("{n}:{q}")));
                }
                n
            }
            ["arn", _, "lambda", _, acct, "function", ..] => {
                account = Some(*acct);
                parts.drain(..6);
                match parts.as_slice() {
                    [n] => n,
                    [n, "$LATEST"] => n,
                    _ => return Err(not_found(c.tenant, &self.region, raw)),
                }
            }
            [acct, "function", n] | [acct, "function", n, "$LATEST"] => {
                account = Some(*acct);
                n
            }
            _ => {
                return Err(invalid(format!(
                    "FunctionName {raw:?} is not a name or an ARN"
                )))
            }
        };
        if qualifier.is_some_and(|q| q != "$LATEST")
            || account.is_some_and(|a| a != account_of(c.tenant))
        {
            return Err(not_found(c.tenant, &self.region, name));
        }
        if !functions::valid_name(name) {
            return Err(invalid(format!(
                "FunctionName {name:?}: 1-64 of [A-Za-z0-9_-]"
            )));
        }
        Ok(name.to_string())
    }

    async fn find(
        &self,
        c: &Call<'_>,
        raw: &str,
    ) -> Result<(FunctionRecord, object_store::UpdateVersion)> {
        let name = self.own_name(c, raw)?;
        functions::get(&self.store, self.keys.as_ref(), c.tenant, &name)
            .await?
            .ok_or_else(|| not_found(c.tenant, &self.region, &name))
    }

    fn get_answer(&self, rec: &FunctionRecord) -> shapes::GetFunction {
        shapes::GetFunction {
            configuration: FunctionConfiguration::of(rec),
            code: shapes::CodeLocation {
                repository_type: "lode",
                image_uri: rec.image_uri.clone(),
                resolved_image_uri: rec.spec.image.to_string(),
            },
        }
    }

    fn parse<'de, T: serde::Deserialize<'de>>(body: &'de [u8]) -> Result<T> {
        serde_json::from_slice(body).map_err(|e| {
            refuse(
                ErrorKind::InvalidRequestContentException,
                format!("Could not parse request body into json: {e}"),
            )
        })
    }

    async fn create(&self, c: &Call<'_>) -> Result<Reply> {
        let req: shapes::CreateFunction = Self::parse(c.body)?;
        if req.package_type.as_deref() != Some("Image")
            || req.code.zip_file.is_some()
            || req.code.s3_bucket.is_some()
        {
            return Err(invalid(
                "lode runs container images only: PackageType must be Image, with Code.ImageUri",
            ));
        }
        if let Some(a) = &req.architectures {
            if a.iter().any(|a| a != "x86_64") {
                return Err(invalid(format!(
                    "Architectures {a:?}: only x86_64 is supported"
                )));
            }
        }
        let name = req.function_name.clone();
        if !functions::valid_name(&name) {
            return Err(invalid(format!(
                "FunctionName {name:?}: 1-64 of [A-Za-z0-9_-]"
            )));
        }
        let uri = req
            .code
            .image_uri
            .clone()
            .ok_or_else(|| invalid("Code.ImageUri is required"))?;
        let (image, image_config) = self.resolve_image(c.tenant, &uri).await?;
        let env = req.environment.map(|e| e.variables).unwrap_or_default();
        check_environment(&env)?;
        let ic = req.image_config.unwrap_or_default();
        let spec = FunctionSpec {
            tenant: c.tenant.to_string(),
            name: name.clone(),
            arn: format!(
                "arn:aws:lambda:{}:{}:function:{name}",
                self.region,
                account_of(c.tenant)
            ),
            revision: 1,
            image,
            memory_mib: limit("MemorySize", req.memory_size.unwrap_or(128), MEMORY_MIB)?,
            timeout_s: limit("Timeout", req.timeout.unwrap_or(3), TIMEOUT_S)?,
            environment: env,
            entry_point: ic.entry_point,
            command: ic.command,
            working_directory: ic.working_directory,
            image_config,
        };
        let revision_id = self.revision_id()?;
        let pin = functions::pin(&self.store, self.keys.as_ref(), &spec.image, &name).await?;
        let rec = FunctionRecord {
            spec,
            role: req.role,
            description: req.description,
            image_uri: uri,
            last_modified: now_lambda(),
            revision_id,
            pin: Some(pin.holder.clone()),
        };
        if let Err(e) = functions::create(&self.store, self.keys.as_ref(), &rec).await {
            functions::unpin(&self.store, Some(pin)).await;
            return Err(e);
        }
        tracing::info!(tenant = c.tenant, function = name, image = %rec.spec.image, "function created");
        Ok(Reply::json(201, &FunctionConfiguration::of(&rec)))
    }

    async fn list(&self, c: &Call<'_>) -> Result<Reply> {
        let max = match c.query.get("MaxItems") {
            Some(m) => m
                .parse::<usize>()
                .ok()
                .filter(|m| (1..=10_000).contains(m))
                .ok_or_else(|| invalid(format!("MaxItems {m:?}: 1-10000")))?,
            None => 50,
        };
        let all = functions::list(&self.store, self.keys.as_ref(), c.tenant).await?;
        let after = c.query.get("Marker").cloned().unwrap_or_default();
        let page: Vec<&FunctionRecord> = all
            .iter()
            .filter(|r| r.spec.name > after)
            .take(max + 1)
            .collect();
        let next_marker = (page.len() > max).then(|| page[max - 1].spec.name.clone());
        Ok(Reply::json(
            200,
            &shapes::ListFunctions {
                functions: page
                    .iter()
                    .take(max)
                    .map(|r| FunctionConfiguration::of(r))
                    .collect(),
                next_marker,
            },
        ))
    }

    /// Reads a stored function, applies `change`, and writes it back only
    /// over the version read (retrying a few times when another frontend
    /// wrote in between).
    async fn change(
        &self,
        c: &Call<'_>,
        raw: &str,
        revision: Option<&str>,
        change: impl Fn(&mut FunctionRecord) -> Result<()>,
    ) -> Result<FunctionRecord> {
        for _ in 0..5 {
            let (mut rec, version) = self.find(c, raw).await?;
            if revision.is_some_and(|r| r != rec.revision_id) {
                return Err(refuse(
                    ErrorKind::ResourceConflictException,
                    "The RevisionId provided does not match the latest RevisionId for the Lambda function",
                ));
            }
            change(&mut rec)?;
            rec.last_modified = now_lambda();
            rec.revision_id = self.revision_id()?;
            if functions::replace(&self.store, self.keys.as_ref(), &rec, &version).await? {
                return Ok(rec);
            }
        }
        Err(refuse(
            ErrorKind::ResourceConflictException,
            format!("function {raw} is being changed by another request; try again"),
        ))
    }

    async fn update_code(&self, c: &Call<'_>, raw: &str) -> Result<Reply> {
        let req: shapes::UpdateFunctionCode = Self::parse(c.body)?;
        if req.zip_file.is_some() {
            return Err(invalid("lode runs container images only: give ImageUri"));
        }
        let uri = req
            .image_uri
            .ok_or_else(|| invalid("ImageUri is required"))?;
        let (image, image_config) = self.resolve_image(c.tenant, &uri).await?;
        if req.dry_run {
            let (rec, _) = self.find(c, raw).await?;
            return Ok(Reply::json(200, &FunctionConfiguration::of(&rec)));
        }
        let name = self.own_name(c, raw)?;
        let new_pin = functions::pin(&self.store, self.keys.as_ref(), &image, &name).await?;
        // The pin of the version the written record replaced.
        let replaced = std::sync::Mutex::new(None);
        let changed = self
            .change(c, raw, req.revision_id.as_deref(), |rec| {
                *replaced.lock().unwrap_or_else(|p| p.into_inner()) = rec.store_pin();
                rec.spec.image = image.clone();
                rec.spec.image_config = image_config.clone();
                rec.spec.revision += 1;
                rec.image_uri = uri.clone();
                rec.pin = Some(new_pin.holder.clone());
                Ok(())
            })
            .await;
        let rec = match changed {
            Ok(rec) => {
                let old = replaced.into_inner().unwrap_or_else(|p| p.into_inner());
                functions::unpin(&self.store, old).await;
                rec
            }
            Err(e) => {
                functions::unpin(&self.store, Some(new_pin)).await;
                return Err(e);
            }
        };
        tracing::info!(tenant = c.tenant, function = rec.spec.name, image = %rec.spec.image, "function code updated");
        Ok(Reply::json(200, &FunctionConfiguration::of(&rec)))
    }

    async fn update_configuration(&self, c: &Call<'_>, raw: &str) -> Result<Reply> {
        let req: shapes::UpdateFunctionConfiguration = Self::parse(c.body)?;
        let memory = req
            .memory_size
            .map(|m| limit("MemorySize", m, MEMORY_MIB))
            .transpose()?;
        let timeout = req
            .timeout
            .map(|t| limit("Timeout", t, TIMEOUT_S))
            .transpose()?;
        if let Some(e) = &req.environment {
            check_environment(&e.variables)?;
        }
        let rec = self
            .change(c, raw, req.revision_id.as_deref(), |rec| {
                let s = &mut rec.spec;
                if let Some(m) = memory {
                    s.memory_mib = m;
                }
                if let Some(t) = timeout {
                    s.timeout_s = t;
                }
                if let Some(e) = &req.environment {
                    s.environment = e.variables.clone();
                }
                if let Some(ic) = &req.image_config {
                    s.entry_point = ic.entry_point.clone();
                    s.command = ic.command.clone();
                    s.working_directory = ic.working_directory.clone();
                }
                if let Some(r) = &req.role {
                    rec.role = r.clone();
                }
                if let Some(d) = &req.description {
                    rec.description = d.clone();
                }
                // A new configuration is a new sandbox: warm ones keep the old.
                s.revision += 1;
                Ok(())
            })
            .await?;
        Ok(Reply::json(200, &FunctionConfiguration::of(&rec)))
    }

    fn revision_id(&self) -> Result<String> {
        let r = self.keys.random()?;
        let h = hex::encode(&r[..16]);
        Ok(format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        ))
    }

    /// A request id (UUID form).
    pub(crate) fn request_id(&self) -> Result<String> {
        self.revision_id()
    }

    /// Resolves `Code.ImageUri` to the pinned image and its run settings.
    async fn resolve_image(&self, tenant: &str, uri: &str) -> Result<(ImageRef, ImageConfig)> {
        let r: ImageRef = uri
            .parse()
            .map_err(|e: lode_lambda::ImageRefError| invalid(format!("Code.ImageUri: {e}")))?;
        if r.tenant != tenant {
            return Err(invalid(format!(
                "Code.ImageUri {uri}: images of tenant {} are not yours",
                r.tenant
            )));
        }
        let opened = match &r.digest {
            Some(d) => {
                lode_store::open_image_at(&self.store, self.keys.as_ref(), tenant, &r.name, d).await
            }
            None => lode_store::open_image(&self.store, self.keys.as_ref(), tenant, &r.name).await,
        }
        .map_err(|e| invalid(format!("Source image {uri} cannot be opened: {e}")))?;
        let pinned = ImageRef {
            digest: Some(opened.digest.clone()),
            ..r
        };
        let handle = std::sync::Arc::new(lode_agent::ImageHandle::new(
            format!("{tenant}/{}", pinned.name),
            opened,
            self.reader.clone(),
        ));
        let rt = tokio::runtime::Handle::current();
        let path = lode_flatten::runconfig::PATH;
        let read = tokio::task::spawn_blocking(move || {
            lode_agent::files::read_file(handle, rt, path, MAX_RUN_SETTINGS)
        })
        .await
        .map_err(|e| {
            refuse(
                ErrorKind::ServiceException,
                format!("reading {uri}'s settings: {e}"),
            )
        })?
        .map_err(|e| invalid(format!("Source image {uri}: {e}")))?;
        let config = match read {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                invalid(format!(
                    "Source image {uri}: its run settings are not valid: {e}"
                ))
            })?,
            None => {
                tracing::warn!(
                    image = uri,
                    "image has no run settings (flattened by an older lode); using none"
                );
                ImageConfig::default()
            }
        };
        Ok((pinned, config))
    }

    async fn invoke(&self, c: &Call<'_>, raw: &str) -> Result<Reply> {
        let kind = c
            .header("x-amz-invocation-type")
            .unwrap_or_else(|| "RequestResponse".into());
        if !matches!(kind.as_str(), "RequestResponse" | "Event" | "DryRun") {
            return Err(invalid(format!(
                "X-Amz-Invocation-Type {kind:?}: RequestResponse, Event or DryRun"
            )));
        }
        let tail = match c.header("x-amz-log-type").as_deref() {
            None | Some("None") => false,
            Some("Tail") => true,
            Some(other) => return Err(invalid(format!("X-Amz-Log-Type {other:?}: None or Tail"))),
        };
        if !c.body.is_empty() && serde_json::from_slice::<serde::de::IgnoredAny>(c.body).is_err() {
            return Err(refuse(
                ErrorKind::InvalidRequestContentException,
                "Could not parse request body into json: the payload is not JSON",
            ));
        }
        let (rec, _) = self.find(c, raw).await?;
        if kind == "DryRun" {
            return Ok(Reply::empty(204));
        }
        let req = InvokeRequest {
            request_id: self.request_id()?,
            function: rec.spec,
            payload: c.body.to_vec(),
            sandbox: None,
        };
        // The worker enforces the function's timeout; this bounds a cold
        // start and a lost manager on top of it.
        let wait = Duration::from_secs(u64::from(req.function.timeout_s) + 600);
        if kind == "Event" {
            if c.body.len() > crate::events::MAX_EVENT_PAYLOAD {
                return Err(refuse(
                    ErrorKind::RequestEntityTooLargeException,
                    format!(
                        "Request must be smaller than {} bytes for the Invoke operation with InvocationType Event ({} bytes sent)",
                        crate::events::MAX_EVENT_PAYLOAD,
                        c.body.len()
                    ),
                ));
            }
            // Durable before 202: any frontend runs it, even if this one dies.
            self.events
                .enqueue(c.tenant, &req.function.name, &req.request_id, c.body)
                .await?;
            self.metrics
                .async_accepted
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(Reply {
                status: 202,
                headers: vec![("x-amzn-requestid", req.request_id)],
                body: Bytes::new(),
            });
        }
        let res = self.managers.invoke(req, wait).await?;
        let t = &res.timings;
        let mut headers = vec![
            ("content-type", "application/json".to_string()),
            ("x-amz-executed-version", "$LATEST".to_string()),
            ("x-amzn-requestid", res.request_id.clone()),
            // lode's own: where it ran and where the time went (µs).
            ("x-lode-worker", res.worker.clone()),
            ("x-lode-sandbox", res.sandbox.clone()),
            ("x-lode-warm", res.warm.to_string()),
            (
                "x-lode-timings",
                format!(
                    "placement={} attach={} boot={} init={} invoke={}",
                    t.placement_us, t.attach_us, t.boot_us, t.init_us, t.invoke_us
                ),
            ),
        ];
        if let InvokeOutcome::FunctionError { .. } = &res.outcome {
            headers.push(("x-amz-function-error", "Unhandled".into()));
            self.metrics
                .function_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if tail {
            let from = res.log_tail.len().saturating_sub(4096);
            headers.push(("x-amz-log-result", B64.encode(&res.log_tail[from..])));
        }
        Ok(Reply {
            status: 200,
            headers,
            body: Bytes::from(res.payload),
        })
    }
}

/// The Lambda operation a request names (for metrics and spans).
pub fn operation(method: &str, path: &str) -> &'static str {
    let rest = path.strip_prefix("/2015-03-31/functions").unwrap_or("?");
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    match (method, parts.as_slice()) {
        ("POST", []) => "CreateFunction",
        ("GET", []) => "ListFunctions",
        ("GET", [_]) => "GetFunction",
        ("GET", [_, "configuration"]) => "GetFunctionConfiguration",
        ("PUT", [_, "configuration"]) => "UpdateFunctionConfiguration",
        ("PUT", [_, "code"]) => "UpdateFunctionCode",
        ("DELETE", [_]) => "DeleteFunction",
        ("POST", [_, "invocations"]) => "Invoke",
        _ => "Unknown",
    }
}

fn limit(what: &str, v: i64, range: std::ops::RangeInclusive<i64>) -> Result<u32> {
    if !range.contains(&v) {
        return Err(invalid(format!(
            "{what} {v} is outside {}-{}",
            range.start(),
            range.end()
        )));
    }
    Ok(v as u32)
}

fn check_environment(env: &BTreeMap<String, String>) -> Result<()> {
    let mut size = 0;
    for (k, v) in env {
        let ok = k.len() >= 2
            && k.as_bytes()[0].is_ascii_alphabetic()
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            return Err(invalid(format!(
                "Environment variable name {k:?}: [a-zA-Z][a-zA-Z0-9_]+"
            )));
        }
        if RESERVED_VARIABLES.contains(&k.as_str()) {
            return Err(invalid(format!(
                "Lambda was unable to configure your environment variables because the environment variables you have provided contains reserved keys that are currently not supported for modification. Reserved keys used in this request: {k}"
            )));
        }
        size += k.len() + v.len();
    }
    if size > MAX_ENVIRONMENT {
        return Err(invalid(format!(
            "Lambda was unable to configure your environment variables because the environment variables you have provided exceeded the 4KB limit. Size: {size}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_and_dates_look_like_aws() {
        let a = account_of("acme");
        assert_eq!(a.len(), 12);
        assert_eq!(a, account_of("acme"));
        assert_ne!(a, account_of("other"));
        let d = now_lambda();
        assert_eq!(d.len(), "2026-12-06T02:00:00.000+0000".len(), "{d}");
        assert!(d.ends_with("+0000") && d.as_bytes()[10] == b'T', "{d}");
    }

    #[test]
    fn environments_are_checked() {
        let env = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        check_environment(&env("GREETING", "hi")).unwrap();
        assert!(check_environment(&env("AWS_REGION", "x")).is_err());
        assert!(check_environment(&env("1A", "x")).is_err());
        assert!(check_environment(&env("A-B", "x")).is_err());
        assert!(check_environment(&env("BIG", &"x".repeat(5000))).is_err());
    }
}
