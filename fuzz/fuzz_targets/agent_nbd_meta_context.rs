#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| lode_fuzz::agent::nbd_meta_context(data));
