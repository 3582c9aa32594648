//! Property test: random valid layer stacks (2–4 layers of dirs, files,
//! symlinks, hard links, devices, whiteouts, opaque dirs, overwrites) flatten
//! to an e2fsck-clean image equal to the model, identically twice and via
//! both transports. Cases: PROPTEST_CASES (default 32).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::{lode_bin, tmp};
use lode_testkit::cli::files_identical;
use lode_testkit::gen::{arb_stack, GeneratedStack};
use lode_testkit::*;
use proptest::prelude::*;
use proptest::test_runner::Config;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32)
}

fn check(s: &GeneratedStack) -> Result<(), TestCaseError> {
    let expected = Model::apply_all(&s.layers)
        .map_err(|e| TestCaseError::fail(format!("generator produced an invalid stack: {e}")))?;
    let d = tmp();
    let layout = d.path().join("oci");
    write_oci_layout(&layout, &s.layers, &s.compression, Some("p")).unwrap();
    let archive = d.path().join("img.tar");
    write_docker_archive(&archive, &s.layers, &["lode/prop:1"]).unwrap();
    let out1 = d.path().join("1.ext4");
    let out2 = d.path().join("2.ext4");
    let out3 = d.path().join("3.ext4");
    Flatten::new(lode_bin(), oci_source(&layout, Some("p")), &out1).run_ok();
    verify_image(&out1, &expected, "random stack");
    Flatten::new(lode_bin(), oci_source(&layout, Some("p")), &out2).run_ok();
    prop_assert!(
        files_identical(&out1, &out2),
        "flattening twice gave different bytes"
    );
    Flatten::new(lode_bin(), docker_source(&archive, None), &out3).run_ok();
    prop_assert!(
        files_identical(&out1, &out3),
        "oci and docker-archive gave different bytes"
    );
    Ok(())
}

proptest! {
    #![proptest_config(Config { cases: cases(), failure_persistence: None, ..Config::default() })]

    #[test]
    fn random_stacks_match_model(s in arb_stack()) {
        check(&s)?;
    }
}
