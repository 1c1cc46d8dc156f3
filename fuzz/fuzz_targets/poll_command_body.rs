//! Fuzz target `poll_command_body`: see `hub_fuzz` (fuzz/src/lib.rs) and fuzz/README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hub_fuzz::poll_command_body(data));
