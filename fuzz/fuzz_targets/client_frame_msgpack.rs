//! Fuzz target `client_frame_msgpack`: see `hub_fuzz::client_frame` (fuzz/src/protocol.rs) and fuzz/README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hub_fuzz::client_frame(
    livehub_protocol::Codec::MsgPack,
    data
));
