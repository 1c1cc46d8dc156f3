//! Fuzz target `frame_json`: see `hub_fuzz` (fuzz/src/lib.rs) and fuzz/README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hub_fuzz::frames(livehub_core::Codec::Json, data));
