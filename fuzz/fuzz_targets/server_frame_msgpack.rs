//! Fuzz target `server_frame_msgpack`: see `hub_fuzz::server_frame` (fuzz/src/protocol.rs) and fuzz/README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hub_fuzz::server_frame(
    livehub_protocol::Codec::MsgPack,
    data
));
