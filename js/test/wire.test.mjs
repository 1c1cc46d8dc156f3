// hub.js's wire pieces: the MessagePack codec, the event-stream parser, and the three real
// transports over a fake WebSocket and a fake fetch (Node's own Response and ReadableStream),
// then the ES-module form of the file.
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { Hub, flush, fakeClock, fakeGlobal } from "./helpers.mjs";

const mp = Hub.codecs.msgpack;
const hex = (b) => (Buffer.from(b).toString("hex").match(/../g) || []).join(" ");

test("msgpack: PROTOCOL.md's example bytes, and round trips of every kind of value", () => {
  const frame = { type: "subscribe", topic: "scores/all", id: 1 };
  assert.equal(hex(mp.encode(frame)), "83 a4 74 79 70 65 a9 73 75 62 73 63 72 69 62 65 a5 74 6f 70 69 63 aa 73 63 6f 72 65 73 2f 61 6c 6c a2 69 64 01");
  const values = [null, true, false, 0, 1, 127, 128, 255, 256, 65535, 65536, 2 ** 32 - 1, 2 ** 32, 2 ** 53 - 1,
    -1, -32, -33, -128, -129, -32768, -32769, -(2 ** 31), -(2 ** 31) - 1, -(2 ** 53) + 1, 0.5, -1.25, 1e300,
    "", "a", "é€😀", "x".repeat(31), "x".repeat(32), "x".repeat(300), "x".repeat(70000),
    [], [1, [2, [3]]], new Array(20).fill(7), new Array(70000).fill(0), {}, { a: 1, b: { c: [null, "d"] } },
    Object.fromEntries(Array.from({ length: 20 }, (_, i) => ["k" + i, i]))];
  for (const v of values) assert.deepEqual(mp.decode(mp.encode(v)), v, JSON.stringify(v).slice(0, 60));
  assert.deepEqual(mp.decode(mp.encode(new Uint8Array([1, 2, 3]))), new Uint8Array([1, 2, 3]));
  assert.deepEqual(mp.decode(mp.encode({ u: undefined, f() {}, n: NaN })), { n: null }, "as JSON.stringify drops them");
  const proto = mp.decode(Uint8Array.from([0x81, 0xa9, ...Buffer.from("__proto__"), 0x01]));
  assert.equal(Object.getPrototypeOf(proto), Object.prototype, "never the prototype");
  assert.equal(proto.__proto__, 1);
});

test("msgpack: bad input throws (the transport reports it), never hangs or allocates wildly", () => {
  for (const bad of [[], [0xc1], [0x92, 0x01], [0xa5, 0x61], [0xdd, 0xff, 0xff, 0xff, 0xff], [0xdf, 0x7f, 0xff, 0xff, 0xff], [0x01, 0x02], new Array(600).fill(0x91)]) {
    assert.throws(() => mp.decode(Uint8Array.from(bad)), Error, hex(bad).slice(0, 30));
  }
  assert.throws(() => mp.decode("text"), /text frame/);
});

test("the event-stream parser: any chunking, CRLF or CR or LF, comments, multi-line data, a BOM", () => {
  const text = "\ufeffretry: 3000\r\n\r\nevent: welcome\r\ndata: {\"a\":1}\r\n\r\n: ping\n\nid: x=E:1\nevent: message\ndata: line1\ndata: line2\n\rdata:no-space\r\r\n";
  const want = [{ event: "welcome", data: "{\"a\":1}", id: null }, { event: "message", data: "line1\nline2", id: "x=E:1" }, { event: "message", data: "no-space", id: "x=E:1" }];
  for (let cut = 0; cut <= text.length; cut++) {
    for (const step of [1, 3, 1000]) {
      const events = [], comments = [];
      const p = new Hub._internal.SseParser((e) => events.push(e), (c) => comments.push(c));
      p.push(text.slice(0, cut));
      for (let i = cut; i < text.length; i += step) p.push(text.slice(i, i + step));
      assert.deepEqual(events, want, `cut at ${cut}, step ${step}`);
      assert.deepEqual(comments, [" ping"]);
    }
  }
  const p = new Hub._internal.SseParser(() => {}, null, 100);
  assert.throws(() => p.push("data: " + "x".repeat(200)), /over 100/);
});

/** A WebSocket double: hub.js's WebSocket transport runs on it. */
function fakeWebSocket() {
  const sockets = [];
  class FakeWS {
    constructor(url, protocol) { this.url = url; this.protocol = protocol; this.sent = []; sockets.push(this); }
    send(d) { this.sent.push(d); }
    close(code, reason) { this.closedWith = [code, reason]; }
    serve(f) { this.onmessage({ data: typeof f === "string" || f instanceof ArrayBuffer ? f : JSON.stringify(f) }); }
  }
  return { FakeWS, sockets };
}

const WELCOME = { type: "welcome", session: "5f0e8c1d2a3b4c6d", protocol: 1, encoding: "json", heartbeat_ms: 25000, timeout_ms: 60000 };

test("WebSocket transport: URL, subprotocol, welcome, frames, a binary frame on JSON, the kicked close", async () => {
  const { FakeWS, sockets } = fakeWebSocket();
  const errors = [];
  const hub = new Hub({ ws: "/ws", base: "https://example.test/app/", query: { token: "t 1" }, global: fakeGlobal({ WebSocket: FakeWS }), clock: fakeClock() });
  hub.on("error", (e) => errors.push(e.code));
  const got = [];
  hub.subscribe("t", (d) => got.push(d));
  await flush();
  const ws = sockets[0];
  assert.equal(ws.url, "wss://example.test/ws?token=t+1");
  assert.equal(ws.protocol, "hub.v1.json");
  assert.equal(ws.binaryType, "arraybuffer");
  ws.serve(WELCOME);
  assert.equal(hub.state, "connected");
  assert.equal(hub.session, WELCOME.session);
  assert.deepEqual(JSON.parse(ws.sent[0]), { type: "subscribe", topic: "t", id: 1 });
  ws.serve({ type: "reply", id: 1, data: { topic: "t", epoch: "E", offset: 0 } });
  ws.serve(new ArrayBuffer(4));
  ws.serve("{not json");
  ws.serve({ type: "message", topic: "t", epoch: "E", offset: 1, data: "hi" });
  assert.deepEqual(got, ["hi"]);
  assert.deepEqual(errors, ["bad_frame", "bad_frame"]);
  ws.onclose({ code: 1008, reason: "kicked" });
  assert.equal(hub.state, "closed");
  assert.deepEqual(errors, ["bad_frame", "bad_frame", "kicked"]);
});

test("WebSocket transport with MessagePack: binary frames both ways", async () => {
  const { FakeWS, sockets } = fakeWebSocket();
  const hub = new Hub({ ws: "/ws", base: "http://h/", codec: Hub.codecs.msgpack, global: fakeGlobal({ WebSocket: FakeWS }), clock: fakeClock() });
  const got = [];
  hub.subscribe("t", (d, m) => got.push([m.offset, d]));
  await flush();
  const ws = sockets[0];
  assert.equal(ws.protocol, "hub.v1.msgpack");
  const bin = (f) => { const b = mp.encode(f); return b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength); };
  ws.serve(bin({ ...WELCOME, encoding: "msgpack" }));
  assert.deepEqual(mp.decode(ws.sent[0]), { type: "subscribe", topic: "t", id: 1 });
  ws.serve(bin({ type: "reply", id: 1, data: { topic: "t", epoch: "E", offset: 0 } }));
  ws.serve(bin({ type: "message", topic: "t", epoch: "E", offset: 1, data: { bytes: new Uint8Array([9]) } }));
  assert.deepEqual(got, [[1, { bytes: new Uint8Array([9]) }]]);
  hub.close();
  assert.deepEqual(ws.closedWith, [1000, "normal"]);
});

/** A fetch double for SSE and long-polling: `route(req)` answers each request. */
function fakeFetch(route) {
  const calls = [];
  const fetch = async (url, init = {}) => {
    const req = { url: new URL(url), method: init.method || "GET", headers: init.headers || {}, body: init.body, signal: init.signal };
    calls.push(req);
    const res = await route(req);
    if (res instanceof Error) throw res;
    return res;
  };
  return { fetch, calls };
}

const json = (v, status = 200) => new Response(JSON.stringify(v), { status, headers: { "content-type": "application/json" } });

test("SSE transport: a stream with no topics, numbered commands with the token, and the close event", async () => {
  let push;
  const stream = new ReadableStream({ start(c) { push = (t) => c.enqueue(new TextEncoder().encode(t)); } });
  const { fetch, calls } = fakeFetch((req) => (req.method === "POST" ? new Response(null, { status: 202 }) :
    new Response(stream, { headers: { "content-type": "text/event-stream; charset=utf-8" } })));
  const clock = fakeClock();
  const hub = new Hub({ sse: "/events", base: "http://h/", query: { token: "k" }, global: fakeGlobal({ fetch, TextDecoder, AbortController }), clock });
  const got = [];
  hub.subscribe("a/b", (d) => got.push(d));
  await flush();
  assert.equal(calls[0].url.href, "http://h/events?token=k", "no topics in the URL: subscriptions are commands");
  assert.equal(calls[0].headers.Accept, "text/event-stream");
  push("retry: 3000\n\nevent: welcome\ndata: " + JSON.stringify(WELCOME) + "\n\n");
  push("event: session\ndata: " + JSON.stringify({ type: "session", session: WELCOME.session, token: "ab".repeat(32), commands: "/events?session=" + WELCOME.session }) + "\n\n");
  await flush();
  assert.equal(hub.state, "connected");
  assert.equal(hub.transport, "sse");
  const post = calls[1];
  assert.equal(post.method, "POST");
  assert.equal(post.url.href, `http://h/events?session=${WELCOME.session}&token=k`, "the stream's credentials go along");
  assert.equal(post.headers["Hub-Session-Token"], "ab".repeat(32));
  assert.equal(post.headers["Hub-Command-Seq"], "1");
  assert.deepEqual(JSON.parse(post.body), { type: "subscribe", topic: "a/b", id: 1 });
  push("event: reply\ndata: {\"type\":\"reply\",\"id\":1,\"data\":{\"topic\":\"a/b\",\"epoch\":\"E\",\"offset\":0}}\n\n");
  push(": ping\n\nevent: message\ndata: {\"type\":\"message\",\"topic\":\"a/b\",\"epoch\":\"E\",\"offset\":1,\"data\":7}\n\n");
  await flush();
  assert.deepEqual(got, [7]);
  const acked = hub.emit("x", 1);
  await flush();
  assert.equal(calls[2].headers["Hub-Command-Seq"], "2");
  push(`event: reply\ndata: {"type":"reply","id":${JSON.parse(calls[2].body).id},"data":"ok"}\n\n`);
  assert.equal(await acked, "ok");
  push("event: close\ndata: {\"type\":\"close\",\"code\":1001,\"reason\":\"shutdown\"}\n\n");
  await flush();
  assert.equal(hub.state, "reconnecting");
  const [d] = clock.pending().filter((x) => x > 0);
  assert.ok(d >= 500 && d <= 5500, "after a shutdown: a random spread");
});

test("SSE transport: a 403 refusal stops with the server's message; a 503 falls back to long-polling", async () => {
  {
    const { fetch } = fakeFetch(() => json({ code: "forbidden", message: "the name is taken" }, 403));
    const hub = new Hub({ sse: "/events", base: "http://h/", global: fakeGlobal({ fetch, TextDecoder, AbortController }), clock: fakeClock() });
    const states = [];
    hub.on("state", (s) => states.push(s));
    hub.on("error", () => {});
    await flush(); await flush();
    assert.equal(hub.state, "closed");
    assert.equal(states.at(-1).error.message, "the name is taken");
  }
  {
    const { fetch, calls } = fakeFetch((req) => (req.url.pathname === "/events" ? json({ code: "x" }, 503) : new Promise(() => {})));
    const hub = new Hub({ sse: "/events", poll: "/poll", base: "http://h/", global: fakeGlobal({ fetch, TextDecoder, AbortController }), clock: fakeClock() });
    await flush(); await flush();
    assert.equal(hub.transport, "poll");
    assert.equal(calls[1].method, "POST");
    assert.equal(calls[1].url.pathname, "/poll");
  }
});

test("long-polling transport: cursors, commands, and a failed poll repeated on the same session", async () => {
  const polls = [];
  const { fetch, calls } = fakeFetch((req) => {
    if (req.method === "POST" && !req.url.searchParams.has("session")) return json({ session: "5f0e8c1d2a3b4c6d.s3cret", cursor: "0", encoding: "json", wait_ms: 1000, timeout_ms: 60000 });
    if (req.method === "POST") return new Response(null, { status: 202 });
    if (req.method === "DELETE") return new Response(null, { status: 204 });
    return new Promise((resolve) => polls.push({ req, resolve }));
  });
  const clock = fakeClock();
  const hub = new Hub({ poll: "/poll", base: "http://h/", global: fakeGlobal({ fetch, AbortController }), clock });
  const got = [];
  hub.subscribe("t", (d, m) => got.push(m.offset));
  await flush(); await flush();
  assert.equal(polls[0].req.url.search, "?session=5f0e8c1d2a3b4c6d.s3cret&cursor=0");
  polls[0].resolve(json({ cursor: "1", frames: [WELCOME] }));
  await flush(); await flush();
  assert.equal(hub.state, "connected");
  const sub = calls.find((c) => c.method === "POST" && c.url.searchParams.has("session"));
  assert.equal(sub.headers["Hub-Command-Seq"], "1");
  assert.deepEqual(JSON.parse(sub.body), { type: "subscribe", topic: "t", id: 1 });
  assert.equal(polls[1].req.url.searchParams.get("cursor"), "1");
  polls[1].resolve(json({ cursor: "3", frames: [{ type: "reply", id: 1, data: { topic: "t", epoch: "E", offset: 0 } }, { type: "message", topic: "t", epoch: "E", offset: 1, data: 1 }] }));
  await flush(); await flush();
  assert.deepEqual(got, [1]);
  // The network fails: the same poll (same cursor) again, after a backoff.
  polls[2].resolve(new TypeError("network"));
  await flush(); await flush();
  assert.equal(hub.state, "reconnecting");
  await clock.advance(clock.pending().find((x) => x >= 500));
  await flush();
  assert.equal(polls[3].req.url.searchParams.get("cursor"), "3", "the same cursor: nothing acknowledged, nothing lost");
  polls[3].resolve(json({ cursor: "4", frames: [{ type: "message", topic: "t", epoch: "E", offset: 2, data: 2 }] }));
  await flush(); await flush();
  assert.equal(hub.state, "connected");
  assert.equal(hub.reconnects, 1);
  assert.deepEqual(got, [1, 2]);
  hub.close();
  await flush();
  assert.equal(calls.at(-1).method, "DELETE", "the server is told at once");
});

test("hub.mjs: the same file as an ES module, with a default export and no global", async () => {
  const src = fs.readFileSync(path.join(path.dirname(fileURLToPath(import.meta.url)), "../hub.js"), "utf8");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "hubjs-"));
  const file = path.join(dir, "hub.mjs");
  fs.writeFileSync(file, src + "\nexport default Hub;\nexport { Hub };\n"); // as livehub::js::HUB_MJS
  const m = await import(pathToFileURL(file));
  assert.equal(typeof m.default, "function");
  assert.equal(m.default, m.Hub);
  assert.equal(m.default.version, 1);
  assert.equal(globalThis.Hub, undefined, "module-scoped");
  fs.rmSync(dir, { recursive: true });
});
