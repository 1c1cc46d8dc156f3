#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into fuzz/corpus/<target>/.

Run from anywhere: `python3 fuzz/make_seeds.py`. Seeds are named after what they hold, so a
re-run rewrites the same files. Needs nothing but Python 3 (MessagePack is encoded here).
"""

import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")


class Raw(bytes):
    """Bytes spliced into a MessagePack encoding as they are."""


class Bin(bytes):
    """A MessagePack bin value."""


class Ext:
    def __init__(self, code, data):
        self.code, self.data = code, data


def mp(v):
    """A small MessagePack encoder (the formats the hub reads)."""
    if isinstance(v, Raw):
        return bytes(v)
    if v is None:
        return b"\xc0"
    if v is True:
        return b"\xc3"
    if v is False:
        return b"\xc2"
    if isinstance(v, int):
        if 0 <= v < 128:
            return bytes([v])
        if -32 <= v < 0:
            return struct.pack("b", v)
        if v >= 0:
            for marker, fmt, top in ((0xCC, ">B", 1 << 8), (0xCD, ">H", 1 << 16),
                                     (0xCE, ">I", 1 << 32), (0xCF, ">Q", 1 << 64)):
                if v < top:
                    return bytes([marker]) + struct.pack(fmt, v)
        for marker, fmt, lo in ((0xD0, ">b", -(1 << 7)), (0xD1, ">h", -(1 << 15)),
                                (0xD2, ">i", -(1 << 31)), (0xD3, ">q", -(1 << 63))):
            if v >= lo:
                return bytes([marker]) + struct.pack(fmt, v)
        raise ValueError(v)
    if isinstance(v, float):
        return b"\xcb" + struct.pack(">d", v)
    if isinstance(v, Bin):
        return b"\xc4" + bytes([len(v)]) + bytes(v)
    if isinstance(v, Ext):
        return b"\xd4" + struct.pack("b", v.code) + v.data if len(v.data) == 1 else \
            b"\xc7" + bytes([len(v.data)]) + struct.pack("b", v.code) + v.data
    if isinstance(v, (str, bytes)):
        b = v.encode() if isinstance(v, str) else v
        n = len(b)
        if n < 32:
            return bytes([0xA0 | n]) + b
        if n < 256:
            return b"\xd9" + bytes([n]) + b
        return b"\xda" + struct.pack(">H", n) + b
    if isinstance(v, (list, tuple)):
        n = len(v)
        head = bytes([0x90 | n]) if n < 16 else b"\xdc" + struct.pack(">H", n)
        return head + b"".join(mp(x) for x in v)
    if isinstance(v, dict):
        n = len(v)
        head = bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)
        return head + b"".join(mp(k) + mp(x) for k, x in v.items())
    raise TypeError(v)


def mp_map16(d):
    return b"\xde" + struct.pack(">H", len(d)) + b"".join(mp(k) + mp(x) for k, x in d.items())


def mp_map32(d):
    return b"\xdf" + struct.pack(">I", len(d)) + b"".join(mp(k) + mp(x) for k, x in d.items())


def js(v):
    return json.dumps(v, separators=(",", ":")).encode()


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- Client frames: the examples of PROTOCOL.md, then the rest of the protocol. -------------

PROTOCOL_CLIENT = {
    "subscribe": {"type": "subscribe", "topic": "scores/all", "id": 1},
    "subscribe-since": {"type": "subscribe", "topic": "scores/match-3",
                        "since": {"epoch": "9f1c2a7d3b4e5f60", "offset": 41}, "id": 2},
    "publish": {"type": "publish", "topic": "chat/lobby", "data": {"text": "hi"}, "id": 3},
    "event": {"type": "event", "event": "chat-message",
              "data": {"room": "chat:42", "text": "hello"}, "id": 4},
    "presence": {"type": "presence", "topic": "chat/lobby", "id": 5},
    "ping": {"type": "ping", "id": 6},
}

# Server frames of PROTOCOL.md: a client sending them gets `unknown_type`.
PROTOCOL_SERVER = {
    "srv-welcome": {"type": "welcome", "session": "5f0e8c1d2a3b4c6d", "protocol": 1,
                    "encoding": "json", "heartbeat_ms": 25000, "timeout_ms": 60000},
    "srv-reply": {"type": "reply", "id": 1,
                  "data": {"topic": "scores/all", "epoch": "9f1c2a7d3b4e5f60", "offset": 0}},
    "srv-message": {"type": "message", "topic": "scores/all", "epoch": "9f1c2a7d3b4e5f60",
                    "offset": 1, "data": {"match": 3, "home": 1, "away": 0}},
    "srv-event": {"type": "event", "event": "new-message", "data": {"from": "ana", "text": "hello"}},
    "srv-error": {"type": "error", "id": 7, "code": "forbidden",
                  "message": "not allowed to publish to scores/all"},
    "srv-gap": {"type": "gap", "topic": "scores/match-3", "epoch": "9f1c2a7d3b4e5f60",
                "from": 42, "to": 57, "reason": "history"},
    "srv-join": {"type": "join", "topic": "chat/lobby",
                 "member": {"session": "5f0e8c1d2a3b4c6d", "user": "ana", "meta": {"name": "Ana"}}},
    "srv-close": {"type": "close", "code": 1008, "reason": "kicked"},
}

# More single frames, valid and not, written in both encodings. The fuzz hub has handlers
# `echo`, `decode`, `join`, `fail`; the observer follows topic `t` and is in room `r`.
MORE = {
    "unsubscribe": {"type": "unsubscribe", "topic": "t", "id": 8},
    "join": {"type": "join", "room": "r", "id": 9},
    "leave": {"type": "leave", "room": "r", "id": 10},
    "presence-room": {"type": "presence", "room": "r", "id": 11},
    "presence-none": {"type": "presence", "id": 12},
    "ping-noid": {"type": "ping"},
    "subscribe-presence": {"type": "subscribe", "topic": "t", "presence": True, "id": 13},
    "subscribe-null-fields": {"type": "subscribe", "topic": "t", "since": None, "id": None,
                              "presence": None},
    "subscribe-since-zero": {"type": "subscribe", "topic": "t", "since": {"epoch": "x", "offset": 0}},
    "subscribe-bad-topic": {"type": "subscribe", "topic": "a b", "id": 14},
    "subscribe-long-topic": {"type": "subscribe", "topic": "t" * 33, "id": 15},
    "subscribe-empty-topic": {"type": "subscribe", "topic": "", "id": 16},
    "subscribe-topic-int": {"type": "subscribe", "topic": 5, "id": 3},
    "subscribe-since-bad": {"type": "subscribe", "topic": "t", "since": {"epoch": 1}, "id": 17},
    "publish-t": {"type": "publish", "topic": "t", "data": [1, -2, 3.5, "x", None, True,
                                                           {"k": {"n": []}}], "id": 18},
    "publish-no-data": {"type": "publish", "topic": "t"},
    "event-echo": {"type": "event", "event": "echo", "data": {"a": [1, 2]}, "id": 19},
    "event-decode": {"type": "event", "event": "decode", "data": {"b": "c"}, "id": 20},
    "event-join": {"type": "event", "event": "join", "data": "r2", "id": 21},
    "event-fail": {"type": "event", "event": "fail", "id": 22},
    "event-unknown": {"type": "event", "event": "nope", "id": 23},
    "event-empty-name": {"type": "event", "event": "", "id": 24},
    "unknown-type": {"type": "frobnicate", "id": 25},
    "no-type": {"topic": "a"},
    "type-int": {"type": 1, "id": 26},
    "id-negative": {"type": "ping", "id": -1},
    "id-max": {"type": "ping", "id": 18446744073709551615},
    "id-float": {"type": "ping", "id": 1.5},
    "empty-map": {},
}

# Sequences (one session, frames in order).
SEQUENCES = {
    "seq-subscribe-publish": [
        {"type": "subscribe", "topic": "t", "presence": True, "id": 1},
        {"type": "publish", "topic": "t", "data": {"x": 1}, "id": 2},
        {"type": "publish", "topic": "t", "data": "two", "id": 3},
        {"type": "presence", "topic": "t", "id": 4},
        {"type": "unsubscribe", "topic": "t", "id": 5},
    ],
    "seq-history-resume": [
        {"type": "publish", "topic": "h", "data": 1},
        {"type": "publish", "topic": "h", "data": 2},
        {"type": "publish", "topic": "h", "data": 3},
        {"type": "publish", "topic": "h", "data": 4},
        {"type": "publish", "topic": "h", "data": 5},
        {"type": "publish", "topic": "h", "data": 6},
        {"type": "subscribe", "topic": "h", "since": {"epoch": "whatever", "offset": 1}, "id": 1},
    ],
    "seq-rooms": [
        {"type": "join", "room": "r", "id": 1},
        {"type": "event", "event": "decode", "data": {"hello": "room"}, "id": 2},
        {"type": "presence", "room": "r", "id": 3},
        {"type": "leave", "room": "r", "id": 4},
        {"type": "leave", "room": "r", "id": 5},
    ],
    "seq-limits": [{"type": "subscribe", "topic": "t%d" % i, "id": i} for i in range(10)]
    + [{"type": "join", "room": "r%d" % i} for i in range(5)],
    "seq-twice": [
        {"type": "subscribe", "topic": "t", "id": 1},
        {"type": "subscribe", "topic": "t", "id": 2},
        {"type": "presence", "topic": "u", "id": 3},
        {"type": "unsubscribe", "topic": "u", "id": 4},
    ],
}


# Malformed and odd single frames (JSON), for the frame and protocol targets.
ODD_JSON = {
    "not-json": b"{nope",
    "array": b"[1,2]",
    "empty": b"",
    "whitespace": b" \t\r ",
    "leading-space": b'  {"type":"ping","id":1}',
    "trailing-garbage": b'{"type":"ping","id":1} x',
    "two-objects": b'{"type":"ping"}{"type":"ping"}',
    "dup-keys": b'{"type":"ping","type":"subscribe","id":1,"id":2}',
    "big-number-data": b'{"type":"publish","topic":"t","data":1e400,"id":1}',
    "big-int-data": b'{"type":"publish","topic":"t","data":123456789012345678901234567890}',
    "neg-zero-data": b'{"type":"publish","topic":"t","data":-0.0}',
    "id-too-big": b'{"type":"ping","id":18446744073709551616}',
    "id-exp": b'{"type":"ping","id":1e2}',
    "lone-surrogate": b'{"type":"publish","topic":"t","data":"\\ud800"}',
    "escaped-type": b'{"\\u0074ype":"p\\u0069ng","id":1}',
    "invalid-utf8": b'{"type":"publish","topic":"t","data":"\xff\xfe"}',
    "invalid-utf8-type": b'{"type":"\xc3\x28","id":1}',
    "nul-in-topic": b'{"type":"subscribe","topic":"a\\u0000b","id":1}',
    "deep-data": b'{"type":"publish","topic":"t","data":' + b"[" * 126 + b"]" * 126 + b"}",
    "too-deep": b'{"type":"publish","topic":"t","data":' + b"[" * 200 + b"]" * 200 + b"}",
    "deep-event": b'{"type":"event","event":"decode","data":' + b"{\"a\":" * 120 + b"1"
    + b"}" * 120 + b"}",
    "unterminated": b'{"type":"publish","topic":"t","data":{"a":',
    "data-unicode": '{"type":"publish","topic":"t","data":"h\u00e9llo \u2603 \U0001F600"}'.encode(),
}


# Malformed and odd single frames (MessagePack), for the frame and protocol targets.
ODD_MSGPACK = {
    "array": mp([1, 2, 3]),
    "nil": b"\xc0",
    "empty": b"",
    "reserved-c1": b"\x81\xa4type\xc1",
    "truncated": mp({"type": "publish", "topic": "t", "data": "abc"})[:-2],
    "trailing": mp({"type": "ping", "id": 1}) + b"\x00",
    "map16": mp_map16({"type": "ping", "id": 1}),
    "map32": mp_map32({"type": "subscribe", "topic": "t", "id": 2}),
    "map32-huge-len": b"\xdf\xff\xff\xff\xff\xa4type",
    "str32-huge-len": b"\x81\xa4type\xdb\xff\xff\xff\xff",
    "int-keys": Raw(b"\x82\x01\x02") + mp("type") + mp("ping"),
    "type-bin": Raw(b"\x82") + mp("type") + mp(Bin(b"ping")) + mp("id") + mp(1),
    "invalid-utf8-str": Raw(b"\x82") + mp("type") + b"\xa2\xc3\x28" + mp("id") + mp(1),
    "data-bin": mp({"type": "publish", "topic": "t", "data": Bin(b"\x00\x01\xff"), "id": 1}),
    "data-ext": mp({"type": "publish", "topic": "t", "data": Ext(5, b"\x01"), "id": 2}),
    "data-ext8": mp({"type": "publish", "topic": "t", "data": Ext(-1, b"\x00" * 12), "id": 3}),
    "data-int-keys": mp({"type": "publish", "topic": "t", "data": {1: "a", 2: "b"}, "id": 4}),
    "data-nested-int-keys": mp({"type": "event", "event": "echo",
                                "data": {"a": {7: [None]}}, "id": 5}),
    "data-float32": Raw(b"\x84") + mp("type") + mp("publish") + mp("topic") + mp("t") + mp("id") + mp(6)
    + mp("data") + b"\xca\x7f\xc0\x00\x00",
    "data-nan": mp({"type": "publish", "topic": "t", "data": float("nan"), "id": 7}),
    "data-neg-ints": mp({"type": "publish", "topic": "t",
                         "data": [-1, -33, -129, -40000, -(1 << 40), (1 << 64) - 1], "id": 8}),
    "data-bool-keys": mp({"type": "event", "event": "decode", "data": {True: 1}, "id": 9}),
    "deep-data": Raw(b"\x83") + mp("type") + mp("publish") + mp("topic") + mp("t")
    + mp("data") + b"\x91" * 126 + b"\xc0",
    "too-deep": Raw(b"\x83") + mp("type") + mp("publish") + mp("topic") + mp("t")
    + mp("data") + b"\x91" * 200 + b"\xc0",
    "id-negative-int8": Raw(b"\x82") + mp("type") + mp("ping") + mp("id") + b"\xd0\x80",
    "since-array": mp({"type": "subscribe", "topic": "t", "since": ["e", 1], "id": 10}),
    "presence-str": mp({"type": "subscribe", "topic": "t", "presence": "yes", "id": 11}),
    "topic-bin": Raw(b"\x83") + mp("type") + mp("subscribe") + mp("topic") + mp(Bin(b"t"))
    + mp("id") + mp(12),
}


def json_seeds():
    t = "frame_json"
    for name, v in {**PROTOCOL_CLIENT, **PROTOCOL_SERVER, **MORE}.items():
        write(t, name + ".json", js(v))
    for name, seq in SEQUENCES.items():
        write(t, name + ".json", b"\n".join(js(v) for v in seq))
    for name, b in ODD_JSON.items():
        write(t, name + ".json", b)


def msgpack_seeds():
    t = "frame_msgpack"
    for name, v in {**PROTOCOL_CLIENT, **PROTOCOL_SERVER, **MORE}.items():
        write(t, name + ".mp", mp(v))
    # The byte-for-byte example of PROTOCOL.md.
    write(t, "protocol-subscribe-bytes.mp", bytes.fromhex(
        "83a474797065a9737562736372696265a5746f706963aa73636f7265732f616c6ca2696401"))
    for name, seq in SEQUENCES.items():
        write(t, name + ".mp", b"\xc1".join(mp(v) for v in seq))
    for name, b in ODD_MSGPACK.items():
        write(t, name + ".mp", bytes(b))


def sse_seeds():
    t = "sse_last_event_id"
    ids = {
        "protocol-one": "metrics/api=9f1c2a7d3b4e5f60:41",
        "protocol-two": "metrics/api=9f1c2a7d3b4e5f60:41&metrics/db=77ab01c2d3e4f506:17",
        "module-doc": "metrics/api=9f1c2a7d3b4e5f60:41&x=77ab:3",
        "escaped": "a%3Db%3Ac%26d%25e=ep%3Aoch:7",
        "escaped-lower": "a%3db=e:1",
        "offset-zero": "t=e:0",
        "offset-max": "t=e:18446744073709551615",
        "colon-in-epoch-raw": "t=e:p:5",
        "utf8-escaped": "caf%C3%A9=e:1",
        # Refused ones (from livehub-sse's own tests and PROTOCOL.md's rules).
        "empty": "",
        "garbage": "garbage",
        "no-colon": "t=e",
        "offset-x": "t=e:x",
        "offset-neg": "t=e:-1",
        "offset-plus": "t=e:+1",
        "offset-overflow": "t=e:99999999999999999999999",
        "empty-topic": "=e:1",
        "empty-epoch": "t=:1",
        "dup-topic": "t=e:1&t=e:2",
        "dup-topic-escaped": "t=e:1&%74=e:2",
        "bad-escape": "t%zz=e:1",
        "short-escape": "t%2=e:1",
        "trailing-percent": "t%=e:1",
        "raw-utf8": "t\u00e9=e:1",
        "escaped-invalid-utf8": "t%FF=e:1",
        "escaped-multibyte-split": "t%C3=e:1",
        "trailing-amp": "t=e:1&",
        "double-amp": "t=e:1&&u=e:2",
        "two-equals": "t=e=f:1",
        "space": "t=e :1",
        "newline": "t=e:1\nu=e:2",
        "multibyte-after-percent": "t%\u00e9=e:1",
        "many-topics": "&".join("t%d=e:%d" % (i, i) for i in range(40)),
    }
    for name, s in ids.items():
        write(t, name + ".txt", s.encode())
    # Entries for the second check: topic \0 epoch \0 offset-bytes (little-endian).
    entries = {
        "entries-one": [(b"metrics/api", b"9f1c2a7d3b4e5f60", struct.pack("<Q", 41))],
        "entries-awkward": [(b"a=b:c&d%e", b"ep:och", b"\x07"),
                            ("caf\u00e9 \u2603".encode(), b"e/p@-_.", b"\xff" * 8)],
    }
    for name, es in entries.items():
        write(t, name + ".bin", b"\0".join(b"\0".join(e) for e in es))


def poll_seeds():
    t = "poll_cursor"
    cursors = {
        "zero": "0", "one": "1", "three": "3", "max": "18446744073709551615",
        "max-plus-one": "18446744073709551616", "twenty-digits-zeros": "00000000000000000001",
        "twenty-one-digits": "000000000000000000001", "neg": "-1", "plus": "+1",
        "space-before": " 1", "space-after": "1 ", "empty": "", "letters": "abc",
        "fullwidth": "\uff11", "hex": "0x10", "float": "1.0", "exp": "1e3",
        "arabic-indic": "\u0661", "twenty-nines": "99999999999999999999",
    }
    for name, s in cursors.items():
        write(t, name + ".txt", s.encode())

    t = "poll_command_body"
    bodies = {}
    for name, v in {**PROTOCOL_CLIENT, **MORE}.items():
        bodies[name + ".json"] = js(v)
        bodies[name + ".mp"] = mp(v)
    bodies.update({
        "not-json.json": b"{nope",
        "array.json": b"[1]",
        "empty.bin": b"",
        "space-object.json": b'\r\n {"type":"ping"}',
        "trailing.json": b'{"type":"ping"} {}',
        "big-number.json": b'{"type":"publish","topic":"t","data":1e400,"id":1}',
        "too-deep.json": b'{"a":' + b"[" * 200 + b"]" * 200 + b"}",
        "array.mp": mp([1]),
        "trailing.mp": mp({"type": "ping"}) + b"\xc0",
        "truncated.mp": mp({"type": "ping", "id": 1})[:-1],
        "too-deep.mp": Raw(b"\x81") + mp("a") + b"\x91" * 200 + b"\xc0",
        "map32-huge.mp": b"\xdf\xff\xff\xff\xff",
        "int-keys.mp": b"\x81\x01\x02",
        "data-bin.mp": mp({"type": "publish", "topic": "t", "data": Bin(b"\x01\x02"), "id": 1}),
        "data-ext.mp": mp({"type": "publish", "topic": "t", "data": Ext(1, b"\x01"), "id": 2}),
    })
    for name, b in bodies.items():
        write(t, name, bytes(b))


# Server frames beyond PROTOCOL.md's examples: every type, optional fields absent, new fields,
# unknown types and reasons, and fields missing or of the wrong type.
MEMBER = {"session": "5f0e8c1d2a3b4c6d", "user": "ana", "meta": {"name": "Ana"}}
SERVER_MORE = {
    "srv-welcome-msgpack": {"type": "welcome", "session": "0000000000000001", "protocol": 1,
                            "encoding": "msgpack", "heartbeat_ms": 1, "timeout_ms": 2},
    "srv-welcome-no-protocol": {"type": "welcome", "session": "0000000000000001",
                                "encoding": "json", "heartbeat_ms": 1, "timeout_ms": 2},
    "srv-welcome-v2": {"type": "welcome", "session": "0000000000000001", "protocol": 2,
                       "encoding": "json", "heartbeat_ms": 1, "timeout_ms": 2},
    "srv-welcome-bad-session": {"type": "welcome", "session": "+000000000000001", "protocol": 1,
                                "encoding": "json", "heartbeat_ms": 1, "timeout_ms": 2},
    "srv-welcome-bad-encoding": {"type": "welcome", "session": "0000000000000001",
                                 "protocol": 1, "encoding": "cbor", "heartbeat_ms": 1,
                                 "timeout_ms": 2},
    "srv-message-kinds": {"type": "message", "topic": "t", "epoch": "e", "offset": 18446744073709551615,
                          "data": [1, -2, 3.5, "x\n\u2603", None, True, {"k": {"n": []}}]},
    "srv-message-null": {"type": "message", "topic": "t", "epoch": "e", "offset": 1, "data": None},
    "srv-message-no-data": {"type": "message", "topic": "t", "epoch": "e", "offset": 1},
    "srv-message-no-offset": {"type": "message", "topic": "t", "epoch": "e", "data": 1},
    "srv-message-neg-offset": {"type": "message", "topic": "t", "epoch": "e", "offset": -1},
    "srv-message-new-field": {"type": "message", "topic": "t", "epoch": "e", "offset": 2,
                              "data": {}, "trace": {"span": [1, 2]}},
    "srv-event-no-data": {"type": "event", "event": "e"},
    "srv-reply-no-data": {"type": "reply", "id": 3},
    "srv-reply-id-str": {"type": "reply", "id": "3", "data": 1},
    "srv-error-no-id": {"type": "error", "code": "bad_frame", "message": "expected value"},
    "srv-error-unknown-code": {"type": "error", "id": 1, "code": "quota_exceeded", "message": "x"},
    "srv-error-no-message": {"type": "error", "code": "internal"},
    "srv-error-code-int": {"type": "error", "code": 500, "message": "x"},
    "srv-gap-epoch": {"type": "gap", "topic": "t", "epoch": "e", "from": 0, "to": 0,
                      "reason": "epoch"},
    "srv-gap-lagged": {"type": "gap", "topic": "t", "epoch": "e", "from": 3, "to": 9,
                       "reason": "lagged"},
    "srv-gap-new-reason": {"type": "gap", "topic": "t", "epoch": "e", "from": 1, "to": 1,
                           "reason": "engine"},
    "srv-dropped": {"type": "dropped", "count": 12},
    "srv-leave-room": {"type": "leave", "room": "chat:42", "member": MEMBER},
    "srv-join-no-meta": {"type": "join", "topic": "t",
                         "member": {"session": "0000000000000002", "user": ""}},
    "srv-join-no-scope": {"type": "join", "member": MEMBER},
    "srv-join-bad-member": {"type": "join", "topic": "t", "member": {"session": 1, "user": "u"}},
    "srv-pong": {"type": "pong", "id": 6},
    "srv-pong-noid": {"type": "pong"},
    "srv-close-shutdown": {"type": "close", "code": 1001, "reason": "shutdown"},
    "srv-close-no-reason": {"type": "close", "code": 4000},
    "srv-close-code-big": {"type": "close", "code": 65536, "reason": "x"},
    "srv-session": {"type": "session", "session": "5f0e8c1d2a3b4c6d", "token": "ab" * 32,
                    "commands": "/events?session=5f0e8c1d2a3b4c6d"},
    "srv-resume": {"type": "resume", "resumed": True, "topics": ["a"], "failed": []},
    "srv-unknown-odd-fields": {"type": "hologram", "code": {"x": 1}, "id": "no", "data": [[[]]]},
    "srv-type-int": {"type": 1},
    "srv-no-type": {"code": 1008},
}


def protocol_seeds():
    """livehub-protocol's decoders, one frame per input: client frames (what the server decodes)
    and server frames (what a client decodes), each in both encodings."""
    client = {**PROTOCOL_CLIENT, **MORE}
    server = {**PROTOCOL_SERVER, **SERVER_MORE}
    for name, v in {**client, **PROTOCOL_SERVER}.items():
        write("client_frame_json", name + ".json", js(v))
        write("client_frame_msgpack", name + ".mp", mp(v))
    for name, v in {**server, **PROTOCOL_CLIENT}.items():
        write("server_frame_json", name + ".json", js(v))
        write("server_frame_msgpack", name + ".mp", mp(v))
    write("client_frame_msgpack", "protocol-subscribe-bytes.mp", bytes.fromhex(
        "83a474797065a9737562736372696265a5746f706963aa73636f7265732f616c6ca2696401"))
    for name, b in ODD_JSON.items():
        write("client_frame_json", name + ".json", b)
        write("server_frame_json", name + ".json", b.replace(b'"publish","topic":"t"',
                                                             b'"event","event":"e"'))
    for name, b in ODD_MSGPACK.items():
        write("client_frame_msgpack", name + ".mp", bytes(b))
        write("server_frame_msgpack", name + ".mp", bytes(b))
    extra_mp = {
        "srv-data-bin": mp({"type": "event", "event": "e", "data": Bin(b"\x00\xff")}),
        "srv-data-ext": mp({"type": "reply", "id": 1, "data": Ext(5, b"\x01")}),
        "srv-data-int-keys": mp({"type": "event", "event": "e", "data": {1: "a"}}),
        "srv-meta-bin": mp({"type": "join", "topic": "t",
                            "member": {"session": "0000000000000001", "user": "u",
                                       "meta": Bin(b"\x01")}}),
        "srv-meta-float32": Raw(b"\x83") + mp("type") + mp("join") + mp("topic") + mp("t")
        + mp("member") + Raw(b"\x83") + mp("session") + mp("0000000000000001") + mp("user")
        + mp("u") + mp("meta") + b"\xca\x3f\xc0\x00\x00",
        "srv-map16": mp_map16({"type": "pong", "id": 1}),
        "srv-map32": mp_map32({"type": "dropped", "count": 2}),
    }
    for name, b in extra_mp.items():
        write("server_frame_msgpack", name + ".mp", bytes(b))
    extra_json = {
        "srv-welcome-spaces": b' { "type" : "welcome" , "session" : "5f0e8c1d2a3b4c6d" , '
        b'"protocol" : 1 , "encoding" : "json" , "heartbeat_ms" : 25000 , "timeout_ms" : 60000 } ',
        "srv-data-spaces": b'{"type":"event","event":"e","data": [ 1 , { "a" : "b" } ] }',
        "srv-escapes": b'{"type":"message","topic":"\\u0074\\n","epoch":"\\ud83d\\ude00",'
        b'"offset":1,"data":"\\u0000"}',
        "srv-meta-deep": b'{"type":"join","topic":"t","member":{"session":"0000000000000001",'
        b'"user":"u","meta":' + b"[" * 200 + b"]" * 200 + b"}}",
        "srv-dup-type": b'{"type":"pong","type":"gap"}',
    }
    for name, b in extra_json.items():
        write("server_frame_json", name + ".json", b)


if __name__ == "__main__":
    json_seeds()
    msgpack_seeds()
    sse_seeds()
    poll_seeds()
    protocol_seeds()
    for target in sorted(os.listdir(CORPUS)):
        files = os.listdir(os.path.join(CORPUS, target))
        size = sum(os.path.getsize(os.path.join(CORPUS, target, f)) for f in files)
        print(f"{target}: {len(files)} seeds, {size} bytes")
