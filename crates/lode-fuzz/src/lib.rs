//! Bodies of lode's fuzz targets, one function per parser of untrusted input.
//!
//! Both the `cargo fuzz` targets in `fuzz/` (nightly, libFuzzer) and the
//! stable test `tests/corpus.rs` (seed corpora plus proptest-generated
//! inputs) call these functions, so CI exercises the same code without
//! nightly. Every body takes arbitrary bytes, must never panic on its own,
//! and asserts the parser's contract (round trips, bounds, error-not-panic);
//! an assertion failure is a bug in the parser.
//!
//! [`TARGETS`] lists every target by its `cargo fuzz` name.

pub mod agent;
pub mod agent_host;
pub mod cache;
pub mod chunk;
pub mod ext4;
pub mod flatten;
pub mod fleet;
pub mod frontend;
pub mod oci;
pub mod store;
pub mod support;
pub mod worker;

/// A fuzz target body.
pub type Body = fn(&[u8]);

/// Every target: `(cargo fuzz name, body)`.
pub const TARGETS: &[(&str, Body)] = &[
    ("chunk_manifest_decode", chunk::manifest_decode),
    ("chunk_manifest_header", chunk::manifest_header),
    ("chunk_manifest_body", chunk::manifest_body),
    ("chunk_workingset_open", chunk::workingset_open),
    ("chunk_workingset_body", chunk::workingset_body),
    ("chunk_keyring", chunk::keyring),
    ("chunk_open", chunk::chunk_open),
    ("cache_page_file", cache::page_file),
    ("agent_export_name", agent::export_name),
    ("agent_nbd_info", agent::nbd_info),
    ("agent_nbd_meta_context", agent::nbd_meta_context),
    ("agent_nbd_session", agent::nbd_session),
    ("agent_vhost_chain", agent_host::vhost_chain),
    ("agent_vhost_inflight", agent_host::vhost_inflight),
    ("agent_overlay_journal", agent_host::overlay_journal),
    ("agent_control_request", agent_host::control_request),
    ("fleet_stripe", fleet::stripe),
    ("fleet_client_read", fleet::client_read),
    ("fleet_node_request", fleet::node_request),
    ("fleet_memcached_reply", fleet::memcached_reply),
    ("oci_source", oci::source),
    ("oci_registry_auth", oci::registry_auth),
    ("oci_registry_answers", oci::registry_answers),
    ("oci_docker_manifest", oci::docker_manifest),
    ("oci_layout", oci::layout),
    ("oci_docker_archive", oci::docker_archive),
    ("store_documents", store::documents),
    ("flatten_tar", flatten::tar),
    ("ext4_view_image", ext4::image),
    ("worker_runtime_api", worker::runtime_api),
    ("frontend_sigv4", frontend::sigv4),
    ("frontend_sealed_document", frontend::sealed_document),
];

/// The body of the target named `name`.
pub fn body(name: &str) -> Option<Body> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}
