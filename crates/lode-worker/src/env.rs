//! The environment a function runs with, as Lambda sets it, and small
//! helpers for the values Lambda prints (timestamps, trace ids).

use lode_lambda::FunctionSpec;
use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where Lambda puts a function's code (`LAMBDA_TASK_ROOT` unless the
/// image sets it).
pub const TASK_ROOT: &str = "/var/task";
/// Where Lambda puts its runtime (`LAMBDA_RUNTIME_DIR` unless set).
pub const RUNTIME_DIR: &str = "/var/runtime";
/// `PATH` when neither the image nor the function sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The region of a function ARN (`arn:aws:lambda:REGION:...`), else `us-east-1`.
pub fn region_of(arn: &str) -> String {
    arn.split(':')
        .nth(3)
        .filter(|r| !r.is_empty())
        .unwrap_or("us-east-1")
        .to_string()
}

/// The environment of `spec`'s sandbox: the image's and the function's
/// variables ([`FunctionSpec::launch`]), defaults where neither sets them
/// (`PATH`, `LANG`, `TZ`, `LAMBDA_TASK_ROOT`, `LAMBDA_RUNTIME_DIR`), and
/// Lambda's reserved variables, which always win (`AWS_LAMBDA_RUNTIME_API`,
/// `AWS_LAMBDA_FUNCTION_NAME`, `..._MEMORY_SIZE`, `..._VERSION`,
/// `AWS_REGION`, `AWS_DEFAULT_REGION`, `_HANDLER`, log group and stream,
/// `AWS_LAMBDA_INITIALIZATION_TYPE`).
pub fn lambda_env(
    spec: &FunctionSpec,
    launch_env: &BTreeMap<String, String>,
    command: &[String],
    runtime_api: &str,
    sandbox: &str,
) -> BTreeMap<String, String> {
    let mut env = launch_env.clone();
    for (k, v) in [
        ("PATH", DEFAULT_PATH),
        ("LANG", "en_US.UTF-8"),
        ("TZ", ":UTC"),
        ("LAMBDA_TASK_ROOT", TASK_ROOT),
        ("LAMBDA_RUNTIME_DIR", RUNTIME_DIR),
        ("HOME", "/root"),
    ] {
        env.entry(k.to_string()).or_insert_with(|| v.to_string());
    }
    let region = region_of(&spec.arn);
    let reserved = [
        ("AWS_LAMBDA_RUNTIME_API", runtime_api.to_string()),
        ("AWS_LAMBDA_FUNCTION_NAME", spec.name.clone()),
        (
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
            spec.memory_mib.to_string(),
        ),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".to_string()),
        ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand".to_string()),
        (
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/{}", spec.name),
        ),
        (
            "AWS_LAMBDA_LOG_STREAM_NAME",
            format!("{}/[$LATEST]{sandbox}", today()),
        ),
        ("AWS_REGION", region.clone()),
        ("AWS_DEFAULT_REGION", region),
        ("AWS_EXECUTION_ENV", "AWS_Lambda_Image".to_string()),
        ("_HANDLER", command.first().cloned().unwrap_or_default()),
    ];
    for (k, v) in reserved {
        env.insert(k.to_string(), v);
    }
    env
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `(year, month, day)` of a count of days since 1970-01-01 (proleptic
/// Gregorian; Howard Hinnant's `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` of `ms` since the epoch (how Lambda stamps
/// its messages).
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (y, mo, d) = civil(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        ms % 1000
    )
}

/// Today as `YYYY/MM/DD` (the log stream's prefix).
fn today() -> String {
    let (y, m, d) = civil((now_ms() / 86_400_000) as i64);
    format!("{y:04}/{m:02}/{d:02}")
}

/// `n` random bytes as hex (ids); falls back to the clock if the system
/// has no randomness to give.
pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    if getrandom::getrandom(&mut b).is_err() {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        for (i, x) in b.iter_mut().enumerate() {
            *x = (t >> ((i % 16) * 8)) as u8 ^ (std::process::id() as u8);
        }
    }
    hex::encode(b)
}

/// An X-Ray style trace header (`Lambda-Runtime-Trace-Id`).
pub fn trace_id() -> String {
    format!(
        "Root=1-{:08x}-{};Parent={};Sampled=0",
        now_ms() / 1000,
        random_hex(12),
        random_hex(8)
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_regions() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339_ms(1_704_067_199_999), "2023-12-31T23:59:59.999Z");
        assert_eq!(
            region_of("arn:aws:lambda:eu-west-1:acme:function:f"),
            "eu-west-1"
        );
        assert_eq!(region_of("nonsense"), "us-east-1");
        let t = trace_id();
        assert!(t.starts_with("Root=1-") && t.ends_with(";Sampled=0"), "{t}");
    }

    #[test]
    fn reserved_variables_win_and_defaults_do_not() {
        let spec: FunctionSpec = serde_json::from_value(serde_json::json!({
            "tenant": "acme", "name": "hello",
            "arn": "arn:aws:lambda:eu-west-1:acme:function:hello", "revision": 1,
            "image": format!("acme/py@sha256:{}", "0".repeat(64)),
            "memory_mib": 256, "timeout_s": 3
        }))
        .unwrap();
        let mine: BTreeMap<String, String> = [
            ("AWS_REGION".to_string(), "mars-1".to_string()),
            ("TZ".to_string(), "Europe/Paris".to_string()),
            ("LAMBDA_TASK_ROOT".to_string(), "/app".to_string()),
        ]
        .into();
        let env = lambda_env(
            &spec,
            &mine,
            &["app.handler".into()],
            "10.0.2.100:9001",
            "s1",
        );
        let get = |k: &str| env.get(k).map(String::as_str);
        assert_eq!(get("AWS_REGION"), Some("eu-west-1"));
        assert_eq!(get("AWS_DEFAULT_REGION"), Some("eu-west-1"));
        assert_eq!(get("TZ"), Some("Europe/Paris"));
        assert_eq!(get("LAMBDA_TASK_ROOT"), Some("/app"));
        assert_eq!(get("_HANDLER"), Some("app.handler"));
        assert_eq!(get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"), Some("256"));
        assert_eq!(get("AWS_LAMBDA_RUNTIME_API"), Some("10.0.2.100:9001"));
        assert_eq!(get("PATH"), Some(DEFAULT_PATH));
    }
}
