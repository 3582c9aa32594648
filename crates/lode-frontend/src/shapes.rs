//! The JSON shapes of the Lambda API operations lode serves (field names
//! as in the Lambda API reference; unknown request fields are ignored, as
//! AWS's own service does).

use crate::functions::FunctionRecord;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `Code` of CreateFunction.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Code {
    /// `TENANT/NAME[@sha256:HEX]`.
    pub image_uri: Option<String>,
    /// A zip package: refused (lode runs container images).
    pub zip_file: Option<String>,
    /// An S3 zip package: refused.
    pub s3_bucket: Option<String>,
}

/// `Environment`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Environment {
    /// `Variables`.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
}

/// `ImageConfig`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    /// `EntryPoint`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry_point: Option<Vec<String>>,
    /// `Command`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// `WorkingDirectory`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<String>,
}

/// CreateFunction's request.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateFunction {
    /// `FunctionName`.
    pub function_name: String,
    /// `Role`.
    #[serde(default)]
    pub role: String,
    /// `Code`.
    #[serde(default)]
    pub code: Code,
    /// `PackageType` (`Image`).
    pub package_type: Option<String>,
    /// `MemorySize`.
    pub memory_size: Option<i64>,
    /// `Timeout`.
    pub timeout: Option<i64>,
    /// `Environment`.
    pub environment: Option<Environment>,
    /// `ImageConfig`.
    pub image_config: Option<ImageConfig>,
    /// `Description`.
    #[serde(default)]
    pub description: String,
    /// `Architectures`.
    pub architectures: Option<Vec<String>>,
}

/// UpdateFunctionCode's request.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateFunctionCode {
    /// `ImageUri`.
    pub image_uri: Option<String>,
    /// `ZipFile` (refused).
    pub zip_file: Option<String>,
    /// `DryRun`: check, change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// `RevisionId`: change only that revision.
    pub revision_id: Option<String>,
}

/// UpdateFunctionConfiguration's request.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateFunctionConfiguration {
    /// `Role`.
    pub role: Option<String>,
    /// `Description`.
    pub description: Option<String>,
    /// `MemorySize`.
    pub memory_size: Option<i64>,
    /// `Timeout`.
    pub timeout: Option<i64>,
    /// `Environment`.
    pub environment: Option<Environment>,
    /// `ImageConfig`.
    pub image_config: Option<ImageConfig>,
    /// `RevisionId`: change only that revision.
    pub revision_id: Option<String>,
}

/// `FunctionConfiguration`, the answer of most operations.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct FunctionConfiguration {
    function_name: String,
    function_arn: String,
    role: String,
    code_size: u64,
    description: String,
    timeout: u32,
    memory_size: u32,
    last_modified: String,
    code_sha256: String,
    version: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    environment: Option<Environment>,
    package_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    image_config_response: Option<ImageConfigResponse>,
    state: &'static str,
    last_update_status: &'static str,
    revision_id: String,
    architectures: Vec<&'static str>,
    ephemeral_storage: EphemeralStorage,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ImageConfigResponse {
    image_config: ImageConfig,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct EphemeralStorage {
    size: u32,
}

impl FunctionConfiguration {
    /// The configuration of a stored function.
    pub fn of(rec: &FunctionRecord) -> FunctionConfiguration {
        let s = &rec.spec;
        let ic = ImageConfig {
            entry_point: s.entry_point.clone(),
            command: s.command.clone(),
            working_directory: s.working_directory.clone(),
        };
        let set =
            ic.entry_point.is_some() || ic.command.is_some() || ic.working_directory.is_some();
        FunctionConfiguration {
            function_name: s.name.clone(),
            function_arn: s.arn.clone(),
            role: rec.role.clone(),
            code_size: 0,
            description: rec.description.clone(),
            timeout: s.timeout_s,
            memory_size: s.memory_mib,
            last_modified: rec.last_modified.clone(),
            code_sha256: s
                .image
                .digest
                .as_deref()
                .and_then(|d| d.strip_prefix("sha256:"))
                .unwrap_or_default()
                .to_string(),
            version: "$LATEST",
            environment: (!s.environment.is_empty()).then(|| Environment {
                variables: s.environment.clone(),
            }),
            package_type: "Image",
            image_config_response: set.then_some(ImageConfigResponse { image_config: ic }),
            state: "Active",
            last_update_status: "Successful",
            revision_id: rec.revision_id.clone(),
            architectures: vec!["x86_64"],
            ephemeral_storage: EphemeralStorage { size: 512 },
        }
    }
}

/// GetFunction's answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetFunction {
    /// `Configuration`.
    pub configuration: FunctionConfiguration,
    /// `Code`.
    pub code: CodeLocation,
}

/// `Code` of GetFunction's answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CodeLocation {
    /// `RepositoryType` (`ECR` in Lambda; lode's store here).
    pub repository_type: &'static str,
    /// The image as named at create or update.
    pub image_uri: String,
    /// The image pinned to its digest.
    pub resolved_image_uri: String,
}

/// ListFunctions' answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListFunctions {
    /// `Functions`.
    pub functions: Vec<FunctionConfiguration>,
    /// `NextMarker`: pass as `Marker` for the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
}
