#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| lode_fuzz::cache::page_file(data));
