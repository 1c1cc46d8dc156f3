//! Replays every seed (`corpus/<target>/`) and every saved reproducer
//! (`artifacts-regress/<target>/`) through the fuzz harnesses, on stable Rust and without
//! libFuzzer: `cargo test --manifest-path fuzz/Cargo.toml`.

use std::path::Path;

use livehub_core::Codec;

fn replay(target: &str, run: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut count = 0;
    for dir in ["corpus", "artifacts-regress"] {
        let dir = root.join(dir).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            if !path.is_file() || path.extension().is_some_and(|e| e == "md") {
                continue;
            }
            let data = std::fs::read(&path).expect("readable input");
            eprintln!("{target}: {}", path.display());
            run(&data);
            count += 1;
        }
    }
    assert!(count > 0, "no inputs for {target}");
}

#[test]
fn frame_json() {
    replay("frame_json", |d| hub_fuzz::frames(Codec::Json, d));
}

#[test]
fn frame_msgpack() {
    replay("frame_msgpack", |d| hub_fuzz::frames(Codec::MsgPack, d));
}

#[test]
fn sse_last_event_id() {
    replay("sse_last_event_id", hub_fuzz::sse_last_event_id);
}

#[test]
fn poll_cursor() {
    replay("poll_cursor", hub_fuzz::poll_cursor);
}

#[test]
fn poll_command_body() {
    replay("poll_command_body", hub_fuzz::poll_command_body);
}

#[test]
fn client_frame_json() {
    replay("client_frame_json", |d| {
        hub_fuzz::client_frame(livehub_protocol::Codec::Json, d)
    });
}

#[test]
fn client_frame_msgpack() {
    replay("client_frame_msgpack", |d| {
        hub_fuzz::client_frame(livehub_protocol::Codec::MsgPack, d)
    });
}

#[test]
fn server_frame_json() {
    replay("server_frame_json", |d| {
        hub_fuzz::server_frame(livehub_protocol::Codec::Json, d)
    });
}

#[test]
fn server_frame_msgpack() {
    replay("server_frame_msgpack", |d| {
        hub_fuzz::server_frame(livehub_protocol::Codec::MsgPack, d)
    });
}
