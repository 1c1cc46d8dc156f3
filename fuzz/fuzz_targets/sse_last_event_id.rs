//! Fuzz target `sse_last_event_id`: see `hub_fuzz` (fuzz/src/lib.rs) and fuzz/README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hub_fuzz::sse_last_event_id(data));
