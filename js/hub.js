/*!
 * hub.js: the browser client of hub (wire protocol v1, PROTOCOL.md).
 *
 * One file, no dependencies, no build step. The hub serves it (Rust: `livehub::js::HubJs`):
 *
 *   <script src="/hub.js"></script>                 defines the global `Hub`
 *   import Hub from "/hub.mjs";                      the same file as an ES module
 *   const Hub = require("./hub.js");                 CommonJS (Node, bundlers)
 *
 *   const hub = new Hub({ ws: "/ws", sse: "/events", poll: "/poll" });
 *   hub.subscribe("scores/all", (data, msg) => console.log(msg.offset, data));
 *
 * What it does, in order of the protocol's promises:
 * - connects over WebSocket; when that cannot connect, over server-sent events, then
 *   long-polling; remembers for the page (sessionStorage) what worked; `transport` forces one;
 * - reconnects with full-jitter exponential backoff between `minDelay` and `maxDelay`; honours
 *   the server's close reasons (`kicked` and authentication refusals stop it; `shutdown`
 *   reconnects after a random delay; `slow_consumer` reconnects at once and resumes) and its
 *   reconnect hint (`shutdown;retry_ms=2350`, or a `close` frame's `retry_ms`: that long, at
 *   most `maxDelay`); notices
 *   a dead connection by missed heartbeats; follows the browser's `online`/`offline` events and
 *   the page's visibility;
 * - resumes every subscription from its last position after any reconnect: the application
 *   sees each message once, in order; when the server says that messages are lost, the
 *   subscription says so (`recovered: false` with the gap);
 * - wildcard subscriptions (`hub.psubscribe("scores/*", fn)`): every matching topic keeps
 *   its own position, and the pattern resumes with them after reconnects;
 * - `last` and `conflate` subscriptions, messages' `key`/`delete`, and answers to the
 *   server's events that ask for one (`onEvent(name, (data, reply) => ...)`);
 * - never throws on a malformed or unknown frame: it reports an `error` event and goes on.
 */
var Hub = (function () {
  "use strict";

  /** Transports in the order `auto` tries them. */
  var TRANSPORTS = ["ws", "sse", "poll"];

  /** Where the transports are mounted when no path is given (README's layout). */
  var DEFAULT_PATHS = { ws: "/ws", sse: "/events", poll: "/poll" };

  /** A line of an event stream longer than this ends the stream (the server's frames are at
   * most its frame size limit, 64 KiB by default, so this is far above any real line). */
  var MAX_SSE_BUFFER = 4 * 1024 * 1024;

  /** Nesting deeper than this in a MessagePack value is refused, not recursed into. */
  var MAX_DEPTH = 512;

  /** Retries of one command over SSE or long-polling when its answer is lost (the command's
   * number makes a retry safe: it never runs twice). */
  var COMMAND_RETRIES = 4;

  // ------------------------------------------------------------------------------------------
  // Small helpers
  // ------------------------------------------------------------------------------------------

  function isObj(v) { return v !== null && typeof v === "object" && !Array.isArray(v); }
  function isStr(v) { return typeof v === "string"; }
  function isCount(v) { return typeof v === "number" && v >= 0 && Math.floor(v) === v; }
  function num(v, dflt) { return typeof v === "number" && v >= 0 ? v : dflt; }
  function noop() {}

  /**
   * An error with a stable `code` (the server's error codes, PROTOCOL.md "Error codes", or one
   * of hub.js's own: `timeout`, `queue_full`, `disconnected`, `closed`, `kicked`, `bad_frame`,
   * `unknown_frame`, `network`, `callback_threw`, ...).
   */
  function HubError(code, message, extra) {
    var e = new Error(message || code);
    e.name = "HubError";
    e.code = code;
    if (extra) for (var k in extra) if (Object.prototype.hasOwnProperty.call(extra, k)) e[k] = extra[k];
    return e;
  }

  /**
   * The delay before reconnection attempt `attempt` (0 for the first): full jitter, uniform
   * between `floor` and the attempt's cap, which doubles from `2 * floor` up to `ceiling`.
   */
  function backoff(attempt, floor, ceiling, random) {
    var n = Math.min(Math.max(0, attempt | 0), 30);
    var cap = Math.min(ceiling, floor * Math.pow(2, n + 1));
    if (cap < floor) cap = floor;
    return floor + (random || Math.random)() * (cap - floor);
  }

  /**
   * Why a server frame cannot be used, or "" if it can. Checks the fields hub.js reads, so
   * that a malformed frame is reported instead of breaking anything further on.
   */
  function checkFrame(f) {
    if (!isObj(f)) return "a frame must be a map";
    if (!isStr(f.type)) return "a frame needs a string `type`";
    switch (f.type) {
      case "message":
        if (!isStr(f.topic) || !isStr(f.epoch) || !isCount(f.offset)) return "message: needs topic, epoch and offset";
        return "";
      case "reply":
        if (!isCount(f.id)) return "reply: needs an integer id";
        return "";
      case "error":
        if (!isStr(f.code)) return "error: needs a code";
        if (f.id != null && !isCount(f.id)) return "error: id must be an integer";
        return "";
      case "gap":
        if (!isStr(f.topic) || !isStr(f.epoch) || !isCount(f.from) || !isCount(f.to)) return "gap: needs topic, epoch, from and to";
        if (f.reason != null && !isStr(f.reason)) return "gap: reason must be a string";
        return "";
      case "event":
        if (!isStr(f.event)) return "event: needs an event name";
        if (f.ack != null && !isCount(f.ack)) return "event: ack must be an integer";
        return "";
      case "join":
      case "leave":
        if (!isObj(f.member) || (!isStr(f.topic) && !isStr(f.room))) return f.type + ": needs a member and a topic or room";
        return "";
      case "dropped":
        if (!isCount(f.count)) return "dropped: needs a count";
        return "";
      default:
        return "";
    }
  }

  /** Adds `params` (an object; arrays repeat the name) to the query of URL `u` (a URL). */
  function addParams(u, params) {
    if (!params) return u;
    for (var k in params) {
      if (!Object.prototype.hasOwnProperty.call(params, k)) continue;
      var v = params[k];
      if (v === undefined || v === null) continue;
      if (Array.isArray(v)) for (var i = 0; i < v.length; i++) u.searchParams.append(k, String(v[i]));
      else u.searchParams.set(k, String(v));
    }
    return u;
  }

  /**
   * Splits a close reason text into the reason and its parameters (PROTOCOL.md, "The browser
   * client", reconnect hints): `shutdown;retry_ms=2350` is the reason `shutdown` with
   * `retryMs: 2350`. The reason is the part before the first `;`; the parameters are
   * `name=value` pairs separated by `;`; a `retry_ms` that is not a whole number is ignored.
   */
  function parseReason(text) {
    var out = { reason: "", retryMs: null, params: {} };
    if (!isStr(text)) return out;
    var parts = text.split(";");
    out.reason = parts[0].trim();
    for (var i = 1; i < parts.length; i++) {
      var eq = parts[i].indexOf("=");
      if (eq < 0) continue;
      var k = parts[i].slice(0, eq).trim(), v = parts[i].slice(eq + 1).trim();
      if (!k) continue;
      out.params[k] = v;
      if (k === "retry_ms" && /^[0-9]{1,15}$/.test(v)) out.retryMs = Number(v);
    }
    return out;
  }

  /** The reason and retry hint of a `close` frame (SSE, long-polling): its `reason` (which may
   * carry parameters as a WebSocket reason does) and its `retry_ms` field, which wins. */
  function closeFrameEvent(f) {
    var r = parseReason(isStr(f.reason) ? f.reason : "");
    var ev = { opened: true, code: f.code, reason: r.reason || "closed", retryMs: r.retryMs };
    if (isCount(f.retry_ms)) ev.retryMs = f.retry_ms;
    return ev;
  }

  // ------------------------------------------------------------------------------------------
  // Codecs: JSON (every transport), MessagePack (WebSocket only)
  // ------------------------------------------------------------------------------------------

  var json = {
    name: "json",
    subprotocol: "hub.v1.json",
    binary: false,
    encode: function (frame) { return JSON.stringify(frame); },
    decode: function (data) {
      if (typeof data !== "string") throw new Error("a binary frame on a JSON session");
      return JSON.parse(data);
    },
  };

  /** A small MessagePack codec: every type of the spec; integers beyond 2^53 lose precision
   * (as they would in JSON); `bin` decodes to a Uint8Array; extension types to
   * `{ext: type, data: Uint8Array}`. */
  var msgpack = (function () {
    var enc8 = typeof TextEncoder !== "undefined" ? new TextEncoder() : null;
    var dec8 = typeof TextDecoder !== "undefined" ? new TextDecoder("utf-8") : null;
    var TWO32 = 4294967296;

    function Writer() { this.buf = new Uint8Array(256); this.view = new DataView(this.buf.buffer); this.len = 0; }
    Writer.prototype.room = function (n) {
      if (this.len + n <= this.buf.length) return;
      var size = this.buf.length * 2;
      while (size < this.len + n) size *= 2;
      var b = new Uint8Array(size);
      b.set(this.buf.subarray(0, this.len));
      this.buf = b;
      this.view = new DataView(b.buffer);
    };
    Writer.prototype.u8 = function (v) { this.room(1); this.buf[this.len++] = v; };
    Writer.prototype.tag16 = function (t, v) { this.room(3); this.buf[this.len] = t; this.view.setUint16(this.len + 1, v); this.len += 3; };
    Writer.prototype.tag32 = function (t, v) { this.room(5); this.buf[this.len] = t; this.view.setUint32(this.len + 1, v); this.len += 5; };
    Writer.prototype.raw = function (bytes) { this.room(bytes.length); this.buf.set(bytes, this.len); this.len += bytes.length; };

    function encode(value) {
      var w = new Writer();
      put(w, value, 0);
      return w.buf.slice(0, w.len);
    }

    function put(w, v, depth) {
      if (depth > MAX_DEPTH) throw new Error("value nested too deep");
      if (v === null || v === undefined) return w.u8(0xc0);
      switch (typeof v) {
        case "boolean": return w.u8(v ? 0xc3 : 0xc2);
        case "number": return putNumber(w, v);
        case "bigint": return putBig(w, v);
        case "string": return putStr(w, v);
        case "object": return putObject(w, v, depth);
        default: return w.u8(0xc0); // functions, symbols: nothing, as JSON.stringify does
      }
    }

    function putNumber(w, v) {
      if (!isFinite(v)) return w.u8(0xc0); // NaN and infinities have no JSON form
      if (Math.floor(v) === v && Math.abs(v) <= Number.MAX_SAFE_INTEGER) {
        if (v >= 0) {
          if (v < 0x80) return w.u8(v);
          if (v <= 0xff) { w.u8(0xcc); return w.u8(v); }
          if (v <= 0xffff) return w.tag16(0xcd, v);
          if (v <= 0xffffffff) return w.tag32(0xce, v);
          w.tag32(0xcf, Math.floor(v / TWO32));
          return putU32(w, v >>> 0);
        }
        if (v >= -32) return w.u8(v & 0xff);
        if (v >= -128) { w.u8(0xd0); return w.u8(v & 0xff); }
        if (v >= -32768) { w.room(3); w.buf[w.len] = 0xd1; w.view.setInt16(w.len + 1, v); w.len += 3; return; }
        if (v >= -2147483648) { w.room(5); w.buf[w.len] = 0xd2; w.view.setInt32(w.len + 1, v); w.len += 5; return; }
        var hi = Math.floor(v / TWO32);
        w.room(9); w.buf[w.len] = 0xd3; w.view.setInt32(w.len + 1, hi); w.view.setUint32(w.len + 5, v - hi * TWO32); w.len += 9;
        return;
      }
      w.room(9); w.buf[w.len] = 0xcb; w.view.setFloat64(w.len + 1, v); w.len += 9;
    }

    function putU32(w, v) { w.room(4); w.view.setUint32(w.len, v); w.len += 4; }

    function putBig(w, v) {
      w.room(9);
      if (v >= 0) { w.buf[w.len] = 0xcf; w.view.setBigUint64(w.len + 1, BigInt.asUintN(64, v)); }
      else { w.buf[w.len] = 0xd3; w.view.setBigInt64(w.len + 1, BigInt.asIntN(64, v)); }
      w.len += 9;
    }

    function putStr(w, s) {
      var b = enc8.encode(s), n = b.length;
      if (n < 32) w.u8(0xa0 | n);
      else if (n <= 0xff) { w.u8(0xd9); w.u8(n); }
      else if (n <= 0xffff) w.tag16(0xda, n);
      else w.tag32(0xdb, n);
      w.raw(b);
    }

    function putBin(w, b) {
      var n = b.length;
      if (n <= 0xff) { w.u8(0xc4); w.u8(n); }
      else if (n <= 0xffff) w.tag16(0xc5, n);
      else w.tag32(0xc6, n);
      w.raw(b);
    }

    function putObject(w, v, depth) {
      if (v instanceof Uint8Array) return putBin(w, v);
      if (typeof ArrayBuffer !== "undefined") {
        if (v instanceof ArrayBuffer) return putBin(w, new Uint8Array(v));
        if (ArrayBuffer.isView(v)) return putBin(w, new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
      }
      var i, n;
      if (Array.isArray(v)) {
        n = v.length;
        if (n < 16) w.u8(0x90 | n); else if (n <= 0xffff) w.tag16(0xdc, n); else w.tag32(0xdd, n);
        for (i = 0; i < n; i++) put(w, v[i], depth + 1);
        return;
      }
      if (typeof v.toJSON === "function") return put(w, v.toJSON(), depth + 1);
      var keys = Object.keys(v).filter(function (k) { return v[k] !== undefined && typeof v[k] !== "function"; });
      n = keys.length;
      if (n < 16) w.u8(0x80 | n); else if (n <= 0xffff) w.tag16(0xde, n); else w.tag32(0xdf, n);
      for (i = 0; i < n; i++) { putStr(w, keys[i]); put(w, v[keys[i]], depth + 1); }
    }

    function decode(input) {
      var bytes;
      if (input instanceof Uint8Array) bytes = input;
      else if (typeof ArrayBuffer !== "undefined" && input instanceof ArrayBuffer) bytes = new Uint8Array(input);
      else if (typeof ArrayBuffer !== "undefined" && ArrayBuffer.isView(input)) bytes = new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
      else throw new Error("MessagePack needs binary data");
      var r = { b: bytes, v: new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength), p: 0 };
      var out = get(r, 0);
      if (r.p !== bytes.length) throw new Error("trailing bytes after a MessagePack value");
      return out;
    }

    function need(r, n) { if (r.p + n > r.b.length) throw new Error("truncated MessagePack value"); }
    function u8(r) { need(r, 1); return r.b[r.p++]; }
    function u16(r) { need(r, 2); var x = r.v.getUint16(r.p); r.p += 2; return x; }
    function u32(r) { need(r, 4); var x = r.v.getUint32(r.p); r.p += 4; return x; }
    function str(r, n) { need(r, n); var s = dec8.decode(r.b.subarray(r.p, r.p + n)); r.p += n; return s; }
    function bin(r, n) { need(r, n); var b = r.b.slice(r.p, r.p + n); r.p += n; return b; }
    function ext(r, n) {
      need(r, 1);
      var t = r.v.getInt8(r.p);
      r.p += 1;
      return { ext: t, data: bin(r, n) };
    }

    function arr(r, n, depth) {
      if (n > r.b.length - r.p) throw new Error("MessagePack array longer than its data");
      var a = new Array(n);
      for (var i = 0; i < n; i++) a[i] = get(r, depth + 1);
      return a;
    }

    function map(r, n, depth) {
      if (n * 2 > r.b.length - r.p) throw new Error("MessagePack map longer than its data");
      var o = {};
      for (var i = 0; i < n; i++) {
        var k = get(r, depth + 1);
        if (typeof k !== "string") k = String(k);
        var val = get(r, depth + 1);
        // An own property, as JSON.parse makes it, never the prototype.
        if (k === "__proto__") Object.defineProperty(o, k, { value: val, enumerable: true, writable: true, configurable: true });
        else o[k] = val;
      }
      return o;
    }

    function get(r, depth) {
      if (depth > MAX_DEPTH) throw new Error("MessagePack value nested too deep");
      var t = u8(r), x;
      if (t < 0x80) return t;
      if (t < 0x90) return map(r, t & 0x0f, depth);
      if (t < 0xa0) return arr(r, t & 0x0f, depth);
      if (t < 0xc0) return str(r, t & 0x1f);
      if (t >= 0xe0) return t - 0x100;
      switch (t) {
        case 0xc0: return null;
        case 0xc2: return false;
        case 0xc3: return true;
        case 0xc4: return bin(r, u8(r));
        case 0xc5: return bin(r, u16(r));
        case 0xc6: return bin(r, u32(r));
        case 0xc7: return ext(r, u8(r));
        case 0xc8: return ext(r, u16(r));
        case 0xc9: return ext(r, u32(r));
        case 0xca: need(r, 4); x = r.v.getFloat32(r.p); r.p += 4; return x;
        case 0xcb: need(r, 8); x = r.v.getFloat64(r.p); r.p += 8; return x;
        case 0xcc: return u8(r);
        case 0xcd: return u16(r);
        case 0xce: return u32(r);
        case 0xcf: x = u32(r); return x * TWO32 + u32(r);
        case 0xd0: need(r, 1); x = r.v.getInt8(r.p); r.p += 1; return x;
        case 0xd1: need(r, 2); x = r.v.getInt16(r.p); r.p += 2; return x;
        case 0xd2: need(r, 4); x = r.v.getInt32(r.p); r.p += 4; return x;
        case 0xd3: need(r, 8); x = r.v.getInt32(r.p) * TWO32 + r.v.getUint32(r.p + 4); r.p += 8; return x;
        case 0xd4: return ext(r, 1);
        case 0xd5: return ext(r, 2);
        case 0xd6: return ext(r, 4);
        case 0xd7: return ext(r, 8);
        case 0xd8: return ext(r, 16);
        case 0xd9: return str(r, u8(r));
        case 0xda: return str(r, u16(r));
        case 0xdb: return str(r, u32(r));
        case 0xdc: return arr(r, u16(r), depth);
        case 0xdd: return arr(r, u32(r), depth);
        case 0xde: return map(r, u16(r), depth);
        case 0xdf: return map(r, u32(r), depth);
        default: throw new Error("0xc1 is not a MessagePack type");
      }
    }

    return {
      name: "msgpack",
      subprotocol: "hub.v1.msgpack",
      binary: true,
      encode: encode,
      decode: function (data) {
        if (typeof data === "string") throw new Error("a text frame on a MessagePack session");
        return decode(data);
      },
    };
  })();

  // ------------------------------------------------------------------------------------------
  // The server-sent events parser (the WHATWG event stream format)
  // ------------------------------------------------------------------------------------------

  /**
   * Parses an event stream fed in chunks of text. Calls `onEvent({event, data, id})` for each
   * event and `onComment(text)` for each comment line (the hub's `: ping` keep-alive). Throws
   * when a line or an event grows past `max` characters (the caller ends the stream).
   */
  function SseParser(onEvent, onComment, max) {
    this.onEvent = onEvent;
    this.onComment = onComment || noop;
    this.max = max || MAX_SSE_BUFFER;
    this.buf = "";
    this.data = [];
    this.size = 0;
    this.event = "";
    this.id = null;
    this.started = false;
  }

  SseParser.prototype.push = function (text) {
    var buf = this.buf + text;
    if (!this.started && buf.length) {
      this.started = true;
      if (buf.charCodeAt(0) === 0xfeff) buf = buf.slice(1);
    }
    var start = 0;
    for (;;) {
      var lf = buf.indexOf("\n", start), cr = buf.indexOf("\r", start);
      var end = lf < 0 ? cr : cr < 0 ? lf : Math.min(lf, cr);
      if (end < 0) break;
      var next = end + 1;
      if (buf.charCodeAt(end) === 13) {
        if (next === buf.length) break; // "\r" last: a "\n" may follow in the next chunk
        if (buf.charCodeAt(next) === 10) next++;
      }
      this.line(buf.slice(start, end));
      start = next;
    }
    this.buf = buf.slice(start);
    if (this.buf.length > this.max) throw new Error("event stream line over " + this.max + " characters");
  };

  SseParser.prototype.line = function (line) {
    if (line === "") return this.dispatch();
    if (line.charCodeAt(0) === 58) return this.onComment(line.slice(1)); // ":"
    var c = line.indexOf(":");
    var field = c < 0 ? line : line.slice(0, c);
    var value = c < 0 ? "" : line.slice(c + 1);
    if (value.charCodeAt(0) === 32) value = value.slice(1);
    if (field === "event") this.event = value;
    else if (field === "data") {
      this.size += value.length + 1;
      if (this.size > this.max) throw new Error("event stream event over " + this.max + " characters");
      this.data.push(value);
    } else if (field === "id") { if (value.indexOf("\0") < 0) this.id = value; }
    // `retry` and unknown fields: hub.js schedules its own reconnections.
  };

  SseParser.prototype.dispatch = function () {
    var data = this.data, event = this.event || "message";
    this.data = [];
    this.size = 0;
    this.event = "";
    if (data.length) this.onEvent({ event: event, data: data.join("\n"), id: this.id });
  };

  // ------------------------------------------------------------------------------------------
  // Transports. A transport is made by `factory(ctx)` and reports through `ctx.cb`:
  //   open(info)        the session is ready: {session, livenessMs, ping}
  //   frame(frame)      a server frame (any type but the transport's own)
  //   alive()           something arrived (a frame, a keep-alive comment, a poll answer)
  //   bad(error)        something arrived that is not a frame (reported, the connection stays)
  //   refused(frame, e) a command the server would not take (HTTP 4xx on SSE/poll)
  //   interrupted()     long-polling only: a poll failed, retrying on the same session
  //   resumed()         long-polling only: polls work again (nothing was lost)
  //   close(ev)         the end: {opened, code, reason, message, auth, retryMs}; `auth` is set
  //                     when the server refused the credentials (hub.js then stops); `retryMs`
  //                     when the server said when to come back (a reconnect hint)
  // It offers send(frame) and close() (close never calls cb.close). Callbacks never fire
  // synchronously from the factory.
  // ------------------------------------------------------------------------------------------

  /** The reason text of WebSocket close codes without one (PROTOCOL.md, "Closing"). */
  var CLOSE_CODES = { 1000: "normal", 1001: "shutdown", 1006: "abnormal", 1007: "bad_data", 1009: "frame_too_large", 1011: "internal", 4000: "heartbeat_timeout" };

  /** Whether an HTTP refusal is about credentials (then hub.js stops instead of retrying). */
  function authRefusal(status, body) {
    if (status === 401) return true;
    return status === 403 && isObj(body) && (body.code === "forbidden" || body.code === "unauthorized" || body.code === "origin_not_allowed");
  }

  /** Reads a refusal's `{code, message}` body (anything else gives `{}`). */
  function readRefusal(res) {
    return res.text().then(function (text) {
      try { var b = JSON.parse(text); return isObj(b) ? b : {}; } catch (e) { return {}; }
    }, function () { return {}; });
  }

  function wsTransport(ctx) {
    var cb = ctx.cb, codec = ctx.codec, clock = ctx.clock;
    var opened = false, done = false, ws = null;
    var timer = clock.setTimeout(function () { finish({ opened: false, reason: "connect_timeout" }); }, ctx.connectTimeout);

    function detach() {
      if (!ws) return;
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    }
    function finish(ev) {
      if (done) return;
      done = true;
      clock.clearTimeout(timer);
      detach();
      try { if (ws) ws.close(); } catch (e) { /* already closed */ }
      cb.close(ev);
    }

    try {
      ws = new ctx.global.WebSocket(ctx.url(), codec.subprotocol);
      ws.binaryType = "arraybuffer";
    } catch (e) {
      Promise.resolve().then(function () { finish({ opened: false, reason: "ws_unavailable", message: String(e && e.message) }); });
      return { send: noop, close: function () { done = true; clock.clearTimeout(timer); } };
    }
    ws.onmessage = function (ev) {
      var f;
      try { f = codec.decode(ev.data); } catch (e) {
        cb.bad(HubError("bad_frame", "undecodable frame: " + (e && e.message)));
        return;
      }
      if (!opened) {
        if (isObj(f) && f.type === "welcome" && isStr(f.session)) {
          opened = true;
          clock.clearTimeout(timer);
          var hb = num(f.heartbeat_ms, 25000);
          cb.open({ session: f.session, livenessMs: hb, ping: true });
        } else {
          cb.bad(HubError("bad_frame", "the first frame is not a welcome"));
        }
        return;
      }
      cb.frame(f);
    };
    ws.onerror = noop; // a close event follows, with what there is to know
    ws.onclose = function (ev) {
      var r = parseReason(ev.reason);
      var reason = r.reason || CLOSE_CODES[ev.code] || "closed";
      finish({ opened: opened, code: ev.code, reason: reason, retryMs: r.retryMs });
    };
    return {
      send: function (frame) {
        if (done) { cb.refused(frame, HubError("disconnected", "the connection is closed")); return; }
        try { ws.send(codec.encode(frame)); } catch (e) { cb.refused(frame, HubError("bad_request", "cannot send: " + (e && e.message))); }
      },
      close: function () {
        if (done) return;
        done = true;
        clock.clearTimeout(timer);
        detach();
        try { ws.close(1000, "normal"); } catch (e) { /* already closed */ }
      },
    };
  }

  /**
   * HTTP plumbing shared by SSE and long-polling: requests with a timeout that the transport
   * can abort all at once, and numbered commands sent one after another (PROTOCOL.md,
   * "Command numbers": a command whose answer was lost is sent again with the same number
   * and never runs twice).
   */
  function Http(ctx) {
    this.ctx = ctx;
    this.live = [];
    this.done = false;
  }

  Http.prototype.fetch = function (url, init, ms) {
    var g = this.ctx.global, clock = this.ctx.clock, self = this;
    var ctrl = typeof g.AbortController === "function" ? new g.AbortController() : null;
    if (ctrl) { init.signal = ctrl.signal; this.live.push(ctrl); }
    init.credentials = this.ctx.withCredentials ? "include" : "same-origin";
    init.cache = "no-store";
    var timer = ms > 0 && ctrl ? clock.setTimeout(function () { ctrl.abort(); }, ms) : null;
    function forget() {
      clock.clearTimeout(timer);
      if (ctrl) { var i = self.live.indexOf(ctrl); if (i >= 0) self.live.splice(i, 1); }
    }
    var p;
    try { p = g.fetch(url, init); } catch (e) { p = Promise.reject(e); }
    return p.then(function (res) { forget(); return res; }, function (e) { forget(); throw e; });
  };

  Http.prototype.abortAll = function () {
    this.done = true;
    var live = this.live;
    this.live = [];
    for (var i = 0; i < live.length; i++) { try { live[i].abort(); } catch (e) { /* gone */ } }
  };

  /**
   * A numbered command channel. `target()` gives `{url, headers}` for the current session;
   * `gone(reason)` is called when the server no longer knows the session.
   */
  function Commands(http, target, gone) {
    this.http = http;
    this.target = target;
    this.gone = gone;
    this.seq = 0;
    this.chain = Promise.resolve();
  }

  Commands.prototype.send = function (frame) {
    var self = this;
    this.chain = this.chain.then(function () { return self.post(frame); });
  };

  Commands.prototype.post = function (frame) {
    var self = this, http = this.http, ctx = http.ctx, cb = ctx.cb;
    var n = ++this.seq, tries = 0, body;
    try { body = JSON.stringify(frame); } catch (e) {
      this.seq--;
      cb.refused(frame, HubError("bad_request", "cannot encode: " + (e && e.message)));
      return Promise.resolve();
    }
    function attempt() {
      if (http.done) { cb.refused(frame, HubError("disconnected", "the connection is closed")); return undefined; }
      var t = self.target();
      var headers = { "Content-Type": "application/json", "Hub-Command-Seq": String(n) };
      for (var k in t.headers) headers[k] = t.headers[k];
      return http.fetch(t.url, { method: "POST", headers: headers, body: body }, ctx.timeout).then(function (res) {
        if (res.status === 202) return undefined;
        return readRefusal(res).then(function (err) {
          if (res.status >= 500 && tries++ < COMMAND_RETRIES) return later();
          // Refused: nothing ran and the number is still free (or the server says which is).
          if (res.status === 409 && isCount(err.expected) && err.expected > 0) self.seq = err.expected - 1;
          else if (self.seq === n) self.seq = n - 1;
          var e = HubError(err.code || "http_" + res.status, err.message || "the server refused the command (" + res.status + ")", { status: res.status });
          cb.refused(frame, e);
          if (res.status === 404) self.gone("unknown_session");
          return undefined;
        });
      }, function () {
        if (http.done) { cb.refused(frame, HubError("disconnected", "the connection is closed")); return undefined; }
        if (tries++ < COMMAND_RETRIES) return later();
        cb.refused(frame, HubError("network", "the command could not be sent"));
        self.gone("network");
        return undefined;
      });
    }
    function later() {
      return new Promise(function (ok) { ctx.clock.setTimeout(ok, Math.min(ctx.backoff(tries - 1), 5000)); }).then(attempt);
    }
    return attempt();
  };

  /**
   * Server-sent events over `fetch` and a streamed body (not `EventSource`): hub.js then sees
   * why a stream was refused (status and `{code, message}`: an authentication refusal stops it
   * instead of retrying forever), sees the `: ping` keep-alives (missed heartbeats), and
   * schedules its own reconnections. The stream is opened with no topics: every subscription,
   * first or resumed, is a `subscribe` command with `since` (PROTOCOL.md, "The browser
   * client"), the same on every transport.
   */
  function sseTransport(ctx) {
    var cb = ctx.cb, g = ctx.global, clock = ctx.clock;
    var http = new Http(ctx);
    var opened = false, done = false, welcome = null, session = null;
    var timer = clock.setTimeout(function () { finish({ opened: false, reason: "connect_timeout" }); }, ctx.connectTimeout);
    var commands = new Commands(http, function () {
      return { url: session.url, headers: { "Hub-Session-Token": session.token } };
    }, function (reason) { finish({ opened: true, reason: reason }); });

    function finish(ev) {
      if (done) return;
      done = true;
      clock.clearTimeout(timer);
      http.abortAll();
      cb.close(ev);
    }

    function onEvent(ev) {
      if (done) return;
      var f;
      try { f = JSON.parse(ev.data); } catch (e) {
        cb.bad(HubError("bad_frame", "an event whose data is not JSON (" + ev.event + ")"));
        return;
      }
      if (!isObj(f) || !isStr(f.type)) { cb.bad(HubError("bad_frame", "an event that is not a frame")); return; }
      if (!opened) {
        if (f.type === "welcome") { welcome = f; return; }
        if (f.type === "session") {
          if (!isStr(f.token) || !isStr(f.commands)) { finish({ opened: false, reason: "bad_session", message: "a session event without token or commands" }); return; }
          var u;
          try { u = addParams(new URL(f.commands, ctx.url()), ctx.params()); } catch (e) { finish({ opened: false, reason: "bad_session", message: "bad commands URL" }); return; }
          session = { url: u.toString(), token: f.token };
          opened = true;
          clock.clearTimeout(timer);
          var hb = num(welcome && welcome.heartbeat_ms, 25000);
          cb.open({ session: isStr(f.session) ? f.session : welcome && welcome.session, livenessMs: hb, ping: false });
          return;
        }
        cb.bad(HubError("bad_frame", "a " + f.type + " event before the session event"));
        return;
      }
      if (f.type === "resume" || f.type === "session" || f.type === "welcome") return; // hub.js sends no Last-Event-ID
      if (f.type === "close") { finish(closeFrameEvent(f)); return; }
      cb.frame(f);
    }

    http.fetch(ctx.url(), { headers: { Accept: "text/event-stream" } }, 0).then(function (res) {
      if (done) return undefined;
      var type = (res.headers && res.headers.get("content-type")) || "";
      if (res.status !== 200 || type.indexOf("text/event-stream") !== 0) {
        return readRefusal(res).then(function (body) {
          finish({ opened: false, status: res.status, reason: body.code || "http_" + res.status, message: body.message,
                   auth: authRefusal(res.status, body) ? HubError(body.code || "unauthorized", body.message || "refused", { status: res.status }) : null });
        });
      }
      if (!res.body || typeof res.body.getReader !== "function") { finish({ opened: false, reason: "no_streaming" }); return undefined; }
      var reader = res.body.getReader();
      var text = new g.TextDecoder("utf-8");
      var parser = new SseParser(onEvent, function () { if (opened) cb.alive(); });
      function pump() {
        return reader.read().then(function (r) {
          if (done) { try { reader.cancel(); } catch (e) { /* gone */ } return undefined; }
          if (r.done) { finish({ opened: opened, reason: "stream_ended" }); return undefined; }
          if (opened) cb.alive();
          try { parser.push(text.decode(r.value, { stream: true })); } catch (e) {
            finish({ opened: opened, reason: "bad_stream", message: String(e && e.message) });
            return undefined;
          }
          return pump();
        });
      }
      return pump();
    }).catch(function (e) {
      finish({ opened: opened, reason: "network", message: String(e && e.message) });
    });

    return {
      send: function (frame) {
        if (!opened || done) { cb.refused(frame, HubError("disconnected", "the stream is closed")); return; }
        commands.send(frame);
      },
      close: function () {
        if (done) return;
        done = true;
        clock.clearTimeout(timer);
        http.abortAll();
      },
    };
  }

  /**
   * Long-polling: open by POST, poll by GET with the cursor, commands by POST, close by
   * DELETE. A failed poll is repeated with the same cursor on the same session (a lost answer
   * is safe: PROTOCOL.md, "Cursors"), so an interruption loses and repeats nothing; only when
   * the server no longer knows the session (404, or no poll for `timeout_ms`) is it a new
   * connection, with every subscription resumed.
   */
  function pollTransport(ctx) {
    var cb = ctx.cb, clock = ctx.clock;
    var http = new Http(ctx);
    var opened = false, done = false, sid = null, cursor = "0";
    var waitMs = 25000, timeoutMs = 60000, lastOk = 0, tries = 0, interrupted = false;
    var commands = new Commands(http, function () {
      return { url: addParams(ctx.urlObj(), { session: sid }).toString(), headers: {} };
    }, function (reason) { finish({ opened: opened, reason: reason }); });

    function finish(ev) {
      if (done) return;
      done = true;
      http.abortAll();
      cb.close(ev);
    }

    function refused(res, body) {
      finish({ opened: opened, status: res.status, reason: body.code || "http_" + res.status, message: body.message,
               auth: authRefusal(res.status, body) ? HubError(body.code || "unauthorized", body.message || "refused", { status: res.status }) : null });
    }

    function retry(why) {
      if (done) return;
      if (!opened) { finish({ opened: false, reason: why }); return; }
      if (clock.now() - lastOk > timeoutMs) { finish({ opened: true, reason: "heartbeat_timeout" }); return; }
      if (!interrupted) { interrupted = true; cb.interrupted(); }
      clock.setTimeout(poll, ctx.backoff(tries++));
    }

    function batch(b) {
      if (!isObj(b) || !Array.isArray(b.frames) || !isStr(b.cursor)) {
        cb.bad(HubError("bad_frame", "a poll answer that is not a batch"));
        retry("bad_batch");
        return;
      }
      lastOk = clock.now();
      tries = 0;
      if (interrupted) { interrupted = false; cb.resumed(); }
      if (opened) cb.alive();
      for (var i = 0; i < b.frames.length && !done; i++) {
        var f = b.frames[i];
        if (!opened) {
          if (isObj(f) && f.type === "welcome" && isStr(f.session)) {
            opened = true;
            cb.open({ session: f.session, livenessMs: 0, ping: false });
          } else {
            cb.bad(HubError("bad_frame", "the first frame is not a welcome"));
          }
          continue;
        }
        if (isObj(f) && f.type === "close") {
          // Acknowledge it, so that the server lets the session go at once.
          http.fetch(addParams(ctx.urlObj(), { session: sid, cursor: b.cursor }).toString(), { headers: { Accept: "application/json" } }, 5000).catch(noop);
          finish(closeFrameEvent(f));
          return;
        }
        cb.frame(f);
      }
      cursor = b.cursor;
      if (!done) poll();
    }

    function poll() {
      if (done) return;
      var u = addParams(ctx.urlObj(), { session: sid, cursor: cursor });
      http.fetch(u.toString(), { headers: { Accept: "application/json" } }, waitMs + 10000).then(function (res) {
        if (done) return undefined;
        if (res.status === 200) {
          return res.json().then(batch, function () { cb.bad(HubError("bad_frame", "a poll answer that is not JSON")); retry("bad_batch"); });
        }
        return readRefusal(res).then(function (body) {
          if (res.status === 404 || res.status === 400 || authRefusal(res.status, body)) refused(res, body);
          else retry("http_" + res.status);
        });
      }, function () { retry("network"); });
    }

    http.fetch(ctx.url(), { method: "POST", headers: { Accept: "application/json" } }, ctx.connectTimeout).then(function (res) {
      if (done) return undefined;
      if (res.status !== 200) return readRefusal(res).then(function (body) { refused(res, body); });
      return res.json().then(function (o) {
        if (!isObj(o) || !isStr(o.session) || !isStr(o.cursor)) { finish({ opened: false, reason: "bad_open", message: "an open answer without session or cursor" }); return; }
        sid = o.session;
        cursor = o.cursor;
        waitMs = num(o.wait_ms, waitMs);
        timeoutMs = num(o.timeout_ms, timeoutMs);
        lastOk = clock.now();
        poll();
      });
    }).catch(function (e) {
      finish({ opened: false, reason: "network", message: String(e && e.message) });
    });

    return {
      send: function (frame) {
        if (!opened || done) { cb.refused(frame, HubError("disconnected", "the session is closed")); return; }
        commands.send(frame);
      },
      close: function () {
        if (done) return;
        done = true;
        http.abortAll();
        if (sid) {
          // Tell the server at once (it would notice after `timeout_ms` anyway).
          try {
            ctx.global.fetch(addParams(ctx.urlObj(), { session: sid }).toString(),
              { method: "DELETE", keepalive: true, credentials: ctx.withCredentials ? "include" : "same-origin" }).catch(noop);
          } catch (e) { /* best effort */ }
        }
      },
    };
  }

  var FACTORIES = { ws: wsTransport, sse: sseTransport, poll: pollTransport };

  // ------------------------------------------------------------------------------------------
  // Events
  // ------------------------------------------------------------------------------------------

  function Emitter() { this._l = Object.create(null); }

  /** Calls `fn` on each `name` event; returns a function that stops it. */
  Emitter.prototype.on = function (name, fn) {
    if (typeof fn !== "function") throw new TypeError("on(" + name + "): a function is needed");
    (this._l[name] || (this._l[name] = [])).push(fn);
    var self = this;
    return function () { self.off(name, fn); };
  };

  /** Stops calling `fn` on `name` events. */
  Emitter.prototype.off = function (name, fn) {
    var list = this._l[name];
    if (!list) return;
    var i = list.indexOf(fn);
    if (i >= 0) list.splice(i, 1);
  };

  /** Calls the listeners; one that throws is reported (`error`, code `callback_threw`) and the
   * others still run. Returns how many listeners there were. */
  Emitter.prototype._emit = function (name, a, b, c) {
    var list = this._l[name];
    if (!list || !list.length) return 0;
    list = list.slice();
    for (var i = 0; i < list.length; i++) {
      try { list[i](a, b, c); } catch (e) { this._threw(name, e); }
    }
    return list.length;
  };

  Emitter.prototype._threw = function (name, e) {
    if (typeof console !== "undefined" && console.error) console.error("hub.js: a " + name + " listener threw", e);
  };

  // ------------------------------------------------------------------------------------------
  // Subscription
  // ------------------------------------------------------------------------------------------

  /**
   * A subscription to one topic, made by `hub.subscribe`. Its events:
   * - `subscribed` `{resumed, recovered, missed, gap, gaps, position}` after each (re)subscribe,
   *   once what was missed has been delivered: `resumed` when it continued from a position,
   *   `recovered: false` when the server said that messages are lost (then `gap` says which;
   *   reload the state the page shows), `missed` the messages delivered to catch up;
   * - `gap` `{topic, epoch, from, to, reason, recovered: false}` whenever messages are lost:
   *   `history`, `lagged`, `epoch` (the stream was recreated: what follows is the new one's),
   *   `ahead` (the position held was ahead of the stream: forget what was delivered after
   *   offset `from - 1`; new messages take those offsets), `hole` (the server skipped offsets
   *   without a gap), or a reason this version does not know (taken as loss, as PROTOCOL.md
   *   says);
   * - `conflated` `{topic, epoch, from, to}` on a conflated subscription: messages of offsets
   *   `from`..`to` were superseded by newer ones of the same key, which follow. Not a loss: the
   *   page still ends up with the newest value of every key;
   * - `join` / `leave` (member) when subscribed with `{presence: true}` (one per session) or
   *   `{presence: "users"}` (one per user: when its first session arrives, when its last goes);
   * - `error` (HubError) when the server refused the subscription (it is then over).
   */
  function Subscription(hub, topic, onMessage, opts) {
    Emitter.call(this);
    this.topic = topic;
    /** The last position delivered: `{epoch, offset}` (null before the first reply). */
    this.position = opts.since && isStr(opts.since.epoch) && isCount(opts.since.offset) ? { epoch: opts.since.epoch, offset: opts.since.offset } : null;
    /** `last`: how many of the newest messages to start with while no position is held. */
    this._lastN = !this.position && isCount(opts.last) && opts.last > 0 ? opts.last : 0;
    /** `conflate`: true or false asks for it (or against the topic's default); else unsaid. */
    this._conflate = typeof opts.conflate === "boolean" ? opts.conflate : null;
    /** After a `last` reply: the topic's position then, to check the first message against. */
    this._expect = null;
    /** Offsets of an epoch that may be missing without it being a hole: `{epoch, to}` after a
     * `conflated` gap (superseded messages), `{epoch, to: Infinity, once: true}` after the
     * stream was recreated (its messages start at whatever its history still holds). */
    this._window = null;
    /** `pending`, `subscribing`, `recovering`, `subscribed`, `failed` or `closed`. */
    this.state = "pending";
    /** Messages dropped because they were already delivered (after a resume). */
    this.duplicates = 0;
    this._hub = hub;
    this._fn = onMessage;
    // `true` (a join/leave per session) or "users" (per user: the first session in, the last out).
    this._presence = opts.presence === "users" ? "users" : !!opts.presence;
    this._rec = null;
    var self = this;
    /** Settles with the first `subscribed` info, or rejects if the server refuses. */
    this.ready = new Promise(function (ok, fail) { self._ready = { ok: ok, fail: fail }; });
    this.ready.catch(noop); // awaiting it is optional
  }
  Subscription.prototype = Object.create(Emitter.prototype);
  Subscription.prototype.constructor = Subscription;

  Subscription.prototype._threw = function (name, e) { this._hub._callbackThrew("subscription " + name, e); };

  /** Stops the subscription (the server is told when connected). */
  Subscription.prototype.unsubscribe = function () {
    if (this.state === "closed") return;
    var wasOn = this.state !== "pending" && this.state !== "failed";
    this.state = "closed";
    this._rec = null;
    this._hub._dropSub(this, wasOn);
  };

  Subscription.prototype._begin = function (since) {
    this.state = "subscribing";
    this._since = since;
  };

  Subscription.prototype._replied = function (data) {
    var since = this._since;
    var rec = { resumed: !!since, target: null, reply: null, missed: 0, gaps: [] };
    if (isObj(data) && isStr(data.epoch) && isCount(data.offset)) rec.reply = { epoch: data.epoch, offset: data.offset };
    this._rec = rec;
    this.state = "recovering";
    this._window = null;
    if (!rec.reply) { // a reply without a position: follow live, nothing to check against
      this._hub._report(HubError("bad_frame", "a subscribe reply without a position"));
      return this._finish();
    }
    if (!since && this._sentLast) {
      // The newest messages held (at most `last`, up to the reply's offset) follow, then live
      // ones: the first one sets the position. How many the history holds is not said, so the
      // subscription is ready now and they arrive as it goes on.
      this.position = null;
      this._expect = rec.reply;
      return this._finish();
    }
    if (!since) {
      this.position = rec.reply;
      return this._finish();
    }
    if (since.epoch === rec.reply.epoch && since.offset <= rec.reply.offset) {
      if (since.offset === rec.reply.offset) return this._finish();
      rec.target = rec.reply.offset; // the missed messages follow, up to there
      return undefined;
    }
    // Another epoch: the server's `gap` (reason `epoch`) comes next, then live messages.
    return undefined;
  };

  Subscription.prototype._message = function (f) {
    var pos = this.position, rec = this._rec, win = this._window, exp = this._expect;
    var base = pos, lenient = false; // what the hole check compares against, and whether it runs
    if (win) {
      if (win.epoch !== f.epoch) this._window = null;
      else if (win.once) { lenient = true; this._window = null; } // a recreated stream's first
      else if (f.offset <= win.to) lenient = true; // superseded offsets may be missing
      else {
        this._window = null;
        if (pos && pos.epoch === f.epoch && win.to > pos.offset) base = { epoch: pos.epoch, offset: win.to };
      }
    }
    if (pos && f.epoch === pos.epoch) {
      if (f.offset <= pos.offset) { this.duplicates++; return; }
      if (!lenient && f.offset > base.offset + 1) this._gap({ topic: this.topic, epoch: f.epoch, from: base.offset + 1, to: f.offset - 1, reason: "hole" });
    } else if (pos) {
      this._gap({ topic: this.topic, epoch: f.epoch, from: 0, to: 0, reason: "epoch", previous: pos });
    } else if (exp) {
      // The first message after a `last` subscribe: one of the newest held (at or before the
      // reply's offset) or the next live one; anything further skipped some.
      if (f.epoch === exp.epoch && f.offset > exp.offset + 1) this._gap({ topic: this.topic, epoch: f.epoch, from: exp.offset + 1, to: f.offset - 1, reason: "hole" });
    }
    this._expect = null;
    this.position = { epoch: f.epoch, offset: f.offset };
    if (rec) rec.missed++;
    var meta = { topic: f.topic, epoch: f.epoch, offset: f.offset, recovered: !!rec };
    if (isStr(f.key)) meta.key = f.key;
    if (f.delete === true) meta.delete = true;
    try {
      this._fn(f.data, meta);
    } catch (e) { this._hub._callbackThrew("subscribe(" + this.topic + ") callback", e); }
    if (rec && this._rec === rec && (rec.target === null || f.offset >= rec.target)) this._finish();
  };

  /**
   * A `gap` frame, by reason (PROTOCOL.md, "Server to client"):
   * - `epoch` answering a `since` of another epoch (the reply named the new one): nothing is
   *   recovered, live messages follow the reply's offset, so that is the position; while
   *   following (the stream was recreated): the new epoch's messages follow from the start of
   *   what its history holds, so the position is the new epoch's offset 0 and its first
   *   message is taken wherever it starts;
   * - `ahead`: the position held was ahead of the stream; it goes back to `from - 1` (the
   *   offsets after it will be given to new messages);
   * - `conflated`: not a loss; the superseded offsets may be missing from what follows;
   * - `history`, `lagged` and any other (unknown) reason: lost; the position moves past `to`.
   */
  Subscription.prototype._gapFrame = function (f) {
    var rec = this._rec, pos = this.position;
    var reason = isStr(f.reason) ? f.reason : "unknown";
    this._expect = null;
    if (reason === "epoch") {
      var answer = rec && rec.reply && rec.reply.epoch === f.epoch && (!pos || pos.epoch !== f.epoch);
      if (answer) {
        this.position = rec.reply;
        this._window = null;
      } else {
        this.position = { epoch: f.epoch, offset: 0 };
        this._window = { epoch: f.epoch, to: Infinity, once: true };
      }
      this._gap({ topic: this.topic, epoch: f.epoch, from: 0, to: 0, reason: "epoch", previous: pos });
      if (rec && this._rec === rec) this._finish();
      return;
    }
    if (reason === "conflated") {
      if (pos && pos.epoch === f.epoch && f.to <= pos.offset) return; // already past it
      this._window = { epoch: f.epoch, to: f.to };
      var c = { topic: this.topic, epoch: f.epoch, from: f.from, to: f.to, reason: "conflated" };
      this._emit("conflated", c);
      this._hub._emit("conflated", c);
      return;
    }
    if (reason === "ahead") {
      var back = f.from > 0 ? f.from - 1 : 0;
      this.position = { epoch: f.epoch, offset: back };
      this._window = null;
      this._gap({ topic: this.topic, epoch: f.epoch, from: f.from, to: f.to, reason: "ahead", previous: pos });
      if (rec && this._rec === rec && (rec.target === null || back >= rec.target)) this._finish();
      return;
    }
    if (pos && pos.epoch === f.epoch && f.to <= pos.offset) return; // already past it
    this.position = { epoch: f.epoch, offset: f.to };
    this._gap({ topic: this.topic, epoch: f.epoch, from: f.from, to: f.to, reason: reason });
    if (rec && this._rec === rec && rec.target !== null && f.to >= rec.target) this._finish();
  };

  Subscription.prototype._gap = function (g) {
    g.recovered = false;
    if (this._rec) this._rec.gaps.push(g);
    this._emit("gap", g);
    this._hub._emit("gap", g);
  };

  Subscription.prototype._finish = function () {
    var rec = this._rec;
    this._rec = null;
    this.state = "subscribed";
    var info = {
      topic: this.topic,
      resumed: rec.resumed,
      recovered: rec.gaps.length === 0,
      missed: rec.missed,
      gap: rec.gaps.length ? rec.gaps[0] : null,
      gaps: rec.gaps,
      position: this.position,
    };
    this._emit("subscribed", info);
    this._ready.ok(info);
  };

  Subscription.prototype._failed = function (err) {
    this.state = "failed";
    this._rec = null;
    this._emit("error", err);
    this._ready.fail(err);
  };

  Subscription.prototype._interrupted = function () {
    if (this.state === "closed" || this.state === "failed") return;
    this.state = "pending";
    this._rec = null;
  };

  // ------------------------------------------------------------------------------------------
  // Pattern subscription
  // ------------------------------------------------------------------------------------------

  /** The topics whose positions one pattern subscription keeps at most; a topic past this is
   * still delivered, without a position kept (no resume, no duplicate check). The server's own
   * limit of subscriptions per session is far lower by default. */
  var MAX_PATTERN_TOPICS = 4096;

  /** Whether `topic` matches `pattern` (PROTOCOL.md, "Wildcard subscriptions"): `*` is exactly
   * one segment, a last `**` one or more. */
  function matchPattern(pattern, topic) {
    var p = pattern.split("/"), t = topic.split("/");
    for (var i = 0; i < p.length; i++) {
      if (p[i] === "**") return i === p.length - 1 && t.length > i;
      if (i >= t.length) return false;
      if (p[i] !== "*" && p[i] !== t[i]) return false;
    }
    return p.length === t.length;
  }

  /**
   * A subscription to every topic that matches a pattern, made by `hub.psubscribe`. Each topic
   * keeps its own position (`positions()`); after a reconnect the pattern is sent again with
   * them (`psubscribe` with `positions`), so that every topic recovers what it missed: each
   * message once per topic, in order. Its events:
   * - `subscribed` `{pattern, resumed, recovered, missed, gaps, topics}` after each
   *   (re)psubscribe, once the server has answered (the missed messages came before):
   *   `resumed` when it continued from positions, `topics` how many, `recovered: false` when
   *   some topic lost messages (`gaps` says which);
   * - `gap` `{topic, epoch, from, to, reason, recovered: false}` whenever messages of a topic
   *   are lost (the reasons of a subscription's `gap`);
   * - `conflated` `{topic, epoch, from, to}`: superseded messages of a topic that conflates;
   * - `error` (HubError) when the server refused the pattern (`bad_pattern`, `forbidden`,
   *   `too_many_patterns`, `already_subscribed`): it is then over.
   */
  function PatternSubscription(hub, pattern, onMessage, opts) {
    Emitter.call(this);
    this.pattern = pattern;
    /** topic -> {position: {epoch, offset} | null, window}: see Subscription's `_window`. */
    this._topics = new Map();
    var given = isObj(opts.positions) ? opts.positions : {};
    for (var t in given) {
      var p = given[t];
      if (Object.prototype.hasOwnProperty.call(given, t) && isObj(p) && isStr(p.epoch) && isCount(p.offset) && this._topics.size < MAX_PATTERN_TOPICS) {
        this._topics.set(t, { position: { epoch: p.epoch, offset: p.offset }, window: null });
      }
    }
    /** `pending`, `subscribing`, `subscribed`, `failed` or `closed`. */
    this.state = "pending";
    /** Messages dropped because they were already delivered (after a resume). */
    this.duplicates = 0;
    this._hub = hub;
    this._fn = onMessage;
    this._rec = null;
    var self = this;
    /** Settles with the first `subscribed` info, or rejects if the server refuses. */
    this.ready = new Promise(function (ok, fail) { self._ready = { ok: ok, fail: fail }; });
    this.ready.catch(noop);
  }
  PatternSubscription.prototype = Object.create(Emitter.prototype);
  PatternSubscription.prototype.constructor = PatternSubscription;

  PatternSubscription.prototype._threw = function (name, e) { this._hub._callbackThrew("pattern subscription " + name, e); };

  /** The last position delivered of `topic` (`{epoch, offset}`), or null. */
  PatternSubscription.prototype.position = function (topic) {
    var t = this._topics.get(topic);
    return t && t.position ? { epoch: t.position.epoch, offset: t.position.offset } : null;
  };

  /** The last position delivered of every topic so far: `{topic: {epoch, offset}}` (what a
   * later `psubscribe(pattern, fn, {positions})` can resume from). */
  PatternSubscription.prototype.positions = function () {
    var out = {};
    this._topics.forEach(function (t, topic) {
      if (t.position) out[topic] = { epoch: t.position.epoch, offset: t.position.offset };
    });
    return out;
  };

  /** Stops it: `punsubscribe` (sent when connected). */
  PatternSubscription.prototype.unsubscribe = function () {
    if (this.state === "closed") return;
    var wasOn = this.state !== "pending" && this.state !== "failed";
    this.state = "closed";
    this._rec = null;
    this._hub._dropPattern(this, wasOn);
  };

  PatternSubscription.prototype._begin = function (count) {
    this.state = "subscribing";
    this._rec = { resumed: count > 0, topics: count, missed: 0, gaps: [] };
    this._topics.forEach(function (t) { t.window = null; });
  };

  PatternSubscription.prototype._replied = function () {
    var rec = this._rec || { resumed: false, topics: 0, missed: 0, gaps: [] };
    this._rec = null;
    this.state = "subscribed";
    var info = {
      pattern: this.pattern,
      resumed: rec.resumed,
      recovered: rec.gaps.length === 0,
      missed: rec.missed,
      gaps: rec.gaps,
      topics: rec.topics,
    };
    this._emit("subscribed", info);
    this._ready.ok(info);
  };

  /** The state of `topic`, made if there is room (null past the bound). */
  PatternSubscription.prototype._topic = function (topic) {
    var t = this._topics.get(topic);
    if (!t && this._topics.size < MAX_PATTERN_TOPICS) {
      t = { position: null, window: null };
      this._topics.set(topic, t);
    }
    return t || null;
  };

  PatternSubscription.prototype._message = function (f) {
    var t = this._topic(f.topic);
    if (t) {
      var pos = t.position, win = t.window, base = pos, lenient = false;
      if (win) {
        if (win.epoch !== f.epoch) t.window = null;
        else if (win.once) { lenient = true; t.window = null; }
        else if (f.offset <= win.to) lenient = true;
        else {
          t.window = null;
          if (pos && pos.epoch === f.epoch && win.to > pos.offset) base = { epoch: pos.epoch, offset: win.to };
        }
      }
      if (pos && f.epoch === pos.epoch) {
        if (f.offset <= pos.offset) { this.duplicates++; return; }
        if (!lenient && f.offset > base.offset + 1) this._gap({ topic: f.topic, epoch: f.epoch, from: base.offset + 1, to: f.offset - 1, reason: "hole" });
      } else if (pos) {
        this._gap({ topic: f.topic, epoch: f.epoch, from: 0, to: 0, reason: "epoch", previous: pos });
      }
      t.position = { epoch: f.epoch, offset: f.offset };
    }
    var rec = this._rec;
    if (rec) rec.missed++;
    var meta = { topic: f.topic, epoch: f.epoch, offset: f.offset, pattern: this.pattern, recovered: !!rec };
    if (isStr(f.key)) meta.key = f.key;
    if (f.delete === true) meta.delete = true;
    try {
      this._fn(f.data, meta);
    } catch (e) { this._hub._callbackThrew("psubscribe(" + this.pattern + ") callback", e); }
  };

  /** A `gap` frame of a matching topic: the rules of Subscription's `_gapFrame`, per topic. */
  PatternSubscription.prototype._gapFrame = function (f) {
    var t = this._topic(f.topic) || { position: null, window: null };
    var pos = t.position;
    var reason = isStr(f.reason) ? f.reason : "unknown";
    if (reason === "epoch") {
      // A `since` of another epoch, or the stream recreated: its messages follow from what
      // its history holds (a resume before the first one asks from offset 0).
      t.position = { epoch: f.epoch, offset: 0 };
      t.window = { epoch: f.epoch, to: Infinity, once: true };
      this._gap({ topic: f.topic, epoch: f.epoch, from: 0, to: 0, reason: "epoch", previous: pos });
      return;
    }
    if (reason === "conflated") {
      if (pos && pos.epoch === f.epoch && f.to <= pos.offset) return;
      t.window = { epoch: f.epoch, to: f.to };
      var c = { topic: f.topic, epoch: f.epoch, from: f.from, to: f.to, reason: "conflated" };
      this._emit("conflated", c);
      this._hub._emit("conflated", c);
      return;
    }
    if (reason === "ahead") {
      t.position = { epoch: f.epoch, offset: f.from > 0 ? f.from - 1 : 0 };
      t.window = null;
      this._gap({ topic: f.topic, epoch: f.epoch, from: f.from, to: f.to, reason: "ahead", previous: pos });
      return;
    }
    if (pos && pos.epoch === f.epoch && f.to <= pos.offset) return; // already past it
    t.position = { epoch: f.epoch, offset: f.to };
    this._gap({ topic: f.topic, epoch: f.epoch, from: f.from, to: f.to, reason: reason });
  };

  PatternSubscription.prototype._gap = function (g) {
    g.recovered = false;
    g.pattern = this.pattern;
    if (this._rec) this._rec.gaps.push(g);
    this._emit("gap", g);
    this._hub._emit("gap", g);
  };

  PatternSubscription.prototype._failed = function (err) {
    this.state = "failed";
    this._rec = null;
    this._emit("error", err);
    this._ready.fail(err);
  };

  PatternSubscription.prototype._interrupted = function () {
    if (this.state === "closed" || this.state === "failed") return;
    this.state = "pending";
    this._rec = null;
  };

  // ------------------------------------------------------------------------------------------
  // Hub
  // ------------------------------------------------------------------------------------------

  /**
   * A connection to a hub, kept up until `close()`. Options (all optional):
   * - `ws`, `sse`, `poll`: the paths or URLs of the transports (default `/ws`, `/events`,
   *   `/poll` when none is given; when some are given, only those are used; `false` drops one);
   * - `transport`: `"auto"` (default: WebSocket, then SSE, then long-polling) or one of
   *   `"ws"`, `"sse"`, `"poll"` to use only that one;
   * - `query`: an object (or a function returning one, called at each connection) added to the
   *   query of every request: credentials such as `{token: "..."}`;
   * - `codec`: `Hub.codecs.json` (default) or `Hub.codecs.msgpack` (WebSocket only; SSE and
   *   long-polling always speak JSON), or your own `{name, subprotocol, binary, encode, decode}`;
   * - `minDelay`, `maxDelay`: the reconnection backoff's floor and ceiling (500, 20000 ms;
 *   `maxDelay` also caps the server's `retry_ms` hint);
   * - `shutdownJitter`: after a server `shutdown`, reconnect within this much more (5000 ms);
   * - `maxQueue`: requests kept while offline (256); one more is refused with `queue_full`;
   * - `timeout`: default timeout of `publish`, `emit`, `presence` (10000 ms, counting queued
   *   time; 0 for none); `connectTimeout`: per connection attempt (10000 ms);
   * - `remember`: remember for the page (sessionStorage) which transport worked (true);
   * - `withCredentials`: send cookies to another origin (false);
   * - `autoConnect`: connect at once (true); otherwise call `connect()`.
   */
  function Hub(options) {
    if (!(this instanceof Hub)) return new Hub(options);
    Emitter.call(this);
    var o = options || {};
    var g = o.global || (typeof globalThis !== "undefined" ? globalThis : typeof self !== "undefined" ? self : {});
    this._g = g;
    var c = o.clock || {};
    this._clock = {
      now: c.now || function () { return Date.now(); },
      setTimeout: c.setTimeout || function (f, ms) { return g.setTimeout(f, ms); },
      clearTimeout: c.clearTimeout || function (t) { if (t != null) g.clearTimeout(t); },
      random: c.random || Math.random,
    };
    this._o = {
      transport: o.transport || "auto",
      query: o.query || null,
      codec: o.codec || json,
      minDelay: num(o.minDelay, 500),
      maxDelay: num(o.maxDelay, 20000),
      shutdownJitter: num(o.shutdownJitter, 5000),
      maxQueue: num(o.maxQueue, 256),
      timeout: num(o.timeout, 10000),
      connectTimeout: num(o.connectTimeout, 10000),
      remember: o.remember !== false,
      withCredentials: !!o.withCredentials,
    };
    if (this._o.maxDelay < this._o.minDelay) this._o.maxDelay = this._o.minDelay;
    var given = o.ws !== undefined || o.sse !== undefined || o.poll !== undefined;
    this._paths = {};
    for (var i = 0; i < TRANSPORTS.length; i++) {
      var name = TRANSPORTS[i];
      var p = given ? o[name] : DEFAULT_PATHS[name];
      if (p) this._paths[name] = String(p);
    }
    this._base = o.base || (g.location && g.location.href) || undefined;
    this._factories = {};
    for (var k in FACTORIES) this._factories[k] = FACTORIES[k];
    if (o.transports) for (var t in o.transports) this._factories[t] = o.transports[t];

    this._subs = new Map();      // topic -> Subscription
    this._patterns = new Map();  // pattern -> PatternSubscription
    this._pending = new Map();   // request id -> {frame, resolve, reject, timer, sub, sent}
    this._queue = [];            // requests waiting for a connection, oldest first
    this._nextId = 1;
    this._state = "idle";
    this._t = null;              // the current transport, while one is open or opening
    this._tName = null;
    this._open = false;          // the current transport has a session
    this._token = null;          // identifies the current transport's callbacks
    this._session = null;
    this._attempt = 0;
    this._reconnects = 0;
    this._everConnected = false;
    this._round = [];
    this._roundAt = 0;
    this._retryTimer = null;
    this._retryAt = 0;
    this._live = null;           // liveness checking of the open transport
    this._working = this._recall();
    this._listening = false;
    this._onWindow = this._onWindow.bind(this);
    if (o.autoConnect !== false) {
      var self = this;
      // After the caller's synchronous setup (listeners, subscriptions).
      Promise.resolve().then(function () { if (self._state === "idle") self.connect(); });
    }
  }
  Hub.prototype = Object.create(Emitter.prototype);
  Hub.prototype.constructor = Hub;

  Object.defineProperties(Hub.prototype, {
    /** `idle`, `connecting`, `connected`, `reconnecting`, `offline` or `closed`. */
    state: { get: function () { return this._state; } },
    /** The transport in use or being tried (`ws`, `sse`, `poll`), or null. */
    transport: { get: function () { return this._tName; } },
    /** The session id of the current connection (what presence shows), or null. */
    session: { get: function () { return this._open ? this._session : null; } },
    /** How many times a lost connection was established again. */
    reconnects: { get: function () { return this._reconnects; } },
    /** Requests waiting for a connection. */
    queued: { get: function () { return this._queue.length; } },
  });

  // ---------- public API ----------

  /** Starts connecting (done by the constructor unless `autoConnect: false`). */
  Hub.prototype.connect = function () {
    if (this._state !== "idle" && this._state !== "closed") return this;
    this._listen(true);
    var nav = this._g.navigator;
    if (nav && nav.onLine === false) { this._setState("offline", { reason: "offline" }); return this; }
    this._attempt = 0;
    this._startRound();
    return this;
  };

  /** Closes the connection and stops; pending and queued requests fail with `closed`. */
  Hub.prototype.close = function () {
    this._stop(null);
    return this;
  };

  /** Uses only `name` from now on (`auto` to try them all again), reconnecting at once;
   * subscriptions resume where they were. */
  Hub.prototype.setTransport = function (name) {
    if (name !== "auto" && !this._paths[name]) throw new TypeError("no " + name + " transport configured");
    this._o.transport = name;
    if (name !== "auto") this._working = name;
    if (this._state === "closed" || this._state === "idle" || this._state === "offline") return this;
    this._drop("transport_switch");
    this._attempt = 0;
    this._startRound();
    return this;
  };

  /**
   * Subscribes to `topic`; `onMessage(data, {topic, epoch, offset, recovered, key, delete})`
   * gets each message once, in order, across reconnections (`key` and `delete` when the
   * publisher gave them). Options:
   * - `since` (`{epoch, offset}`): start after this position, e.g. the one a snapshot of the
   *   page's state reflects;
   * - `last` (a count): while the subscription holds no position, start with the newest `last`
   *   messages the history holds (the current state: `last: 1` is the latest message), then
   *   live ones. Once a message has been delivered, reconnections resume from it instead;
   * - `conflate` (true, or false against a topic that conflates by default): when this page
   *   falls behind, the server keeps only the newest message per key, and a resume recovers
   *   only the newest per key; what was superseded is told by a `conflated` event, not as loss;
   * - `presence`: `join`/`leave` events of the topic: `true` one per session, `"users"` one
   *   per user (however many tabs and devices it has).
   * Returns a Subscription (`unsubscribe()`, events).
   */
  Hub.prototype.subscribe = function (topic, onMessage, opts) {
    if (!isStr(topic) || !topic) throw new TypeError("subscribe: a topic name is needed");
    if (typeof onMessage !== "function") throw new TypeError("subscribe: a callback is needed");
    if (this._subs.has(topic)) throw new Error("subscribe: already subscribed to " + topic + " (unsubscribe first)");
    var sub = new Subscription(this, topic, onMessage, opts || {});
    this._subs.set(topic, sub);
    if (this._open) this._wireSubscribe(sub);
    return sub;
  };

  /**
   * Follows every topic that matches `pattern` (`scores/*`: one segment; `scores/**`: one or
   * more, last only; PROTOCOL.md, "Wildcard subscriptions"); `onMessage(data, {topic, epoch,
   * offset, pattern, recovered, key, delete})` gets each message of each topic once, in order
   * per topic, across reconnections: each topic keeps its own position, and the pattern is
   * resumed with them. A topic is delivered from the first message the server sees after the
   * `psubscribe` (nothing older is replayed; `subscribe` with `last` to catch up on one).
   * Options:
   * - `positions` (`{topic: {epoch, offset}}`, e.g. a saved `positions()`): resume those topics
   *   of the pattern after these positions (their missed messages come first).
   * Returns a PatternSubscription (`unsubscribe()`, `positions()`, events).
   */
  Hub.prototype.psubscribe = function (pattern, onMessage, opts) {
    if (!isStr(pattern) || !pattern) throw new TypeError("psubscribe: a pattern is needed");
    if (typeof onMessage !== "function") throw new TypeError("psubscribe: a callback is needed");
    if (this._patterns.has(pattern)) throw new Error("psubscribe: already subscribed to the pattern " + pattern + " (unsubscribe first)");
    var ps = new PatternSubscription(this, pattern, onMessage, opts || {});
    this._patterns.set(pattern, ps);
    if (this._open) this._wirePSubscribe(ps);
    return ps;
  };

  /** Publishes `data` to `topic` (if the server allows it); resolves with its `{epoch, offset}`.
   * Options: `key` (what the message is the latest value of, e.g. `"match:7"`: conflated
   * subscriptions keep the newest per key), `delete: true` (with a `key`: the key's deletion),
   * `timeout`. */
  Hub.prototype.publish = function (topic, data, opts) {
    var f = { type: "publish", topic: topic, data: data === undefined ? null : data };
    if (opts && opts.key != null) f.key = opts.key;
    if (opts && opts.delete === true) f.delete = true;
    return this._request(f, opts);
  };

  /** Sends the custom event `event` to the server's handler; resolves with the handler's answer
   * (the ack), rejects with its error, or with `timeout` after `opts.timeout` ms. */
  Hub.prototype.emit = function (event, data, opts) {
    var f = { type: "event", event: event };
    if (data !== undefined) f.data = data;
    return this._request(f, opts);
  };

  /** The `topic` or `room` field of a presence request, or null. */
  function presenceTarget(type, target) {
    var f = { type: type };
    if (isStr(target)) f.topic = target;
    else if (isObj(target) && isStr(target.room)) f.room = target.room;
    else if (isObj(target) && isStr(target.topic)) f.topic = target.topic;
    else return null;
    return f;
  }

  /** The most members `presence` gathers over all pages (a server that keeps answering with a
   * cursor cannot make it loop for ever). */
  var MAX_MEMBERS = 1000000;

  /** Who is here: resolves with every member (`{session, user, meta}`) of a topic you are
   * subscribed to (`presence("chat/lobby")`) or a room you are in (`presence({room: "x"})`),
   * following the server's pages (at most its page size per request) to the end. */
  Hub.prototype.presence = function (target, opts) {
    var self = this, all = [];
    if (!presenceTarget("presence", target)) return Promise.reject(HubError("bad_field", "presence: a topic or {room}"));
    function page(cursor) {
      return self.presencePage(target, cursor ? { cursor: cursor, timeout: opts && opts.timeout } : opts).then(function (p) {
        for (var i = 0; i < p.members.length; i++) all.push(p.members[i]);
        if (all.length > MAX_MEMBERS) throw HubError("bad_frame", "a presence list over " + MAX_MEMBERS + " members");
        // An empty page with a cursor would not move: the list is complete.
        return p.cursor && p.members.length ? page(p.cursor) : all;
      });
    }
    return page(null);
  };

  /** One page of members: resolves with `{members, cursor}`; `opts.limit` (1 to the server's
   * page size) and `opts.cursor` (the previous page's `cursor`; null when there is no more). */
  Hub.prototype.presencePage = function (target, opts) {
    var f = presenceTarget("presence", target);
    if (!f) return Promise.reject(HubError("bad_field", "presence: a topic or {room}"));
    if (opts && opts.limit != null) f.limit = opts.limit;
    if (opts && isStr(opts.cursor)) f.cursor = opts.cursor;
    return this._request(f, opts).then(function (d) {
      return {
        members: isObj(d) && Array.isArray(d.members) ? d.members : [],
        cursor: isObj(d) && isStr(d.cursor) ? d.cursor : null,
      };
    });
  };

  /** How many are here, without the list (the server counts in O(1)): resolves with
   * `{count, users}`, sessions and distinct users of a topic you follow or a room you are in. */
  Hub.prototype.presenceCount = function (target, opts) {
    var f = presenceTarget("presence_count", target);
    if (!f) return Promise.reject(HubError("bad_field", "presenceCount: a topic or {room}"));
    return this._request(f, opts).then(function (d) {
      return { count: isObj(d) ? +d.count || 0 : 0, users: isObj(d) ? +d.users || 0 : 0 };
    });
  };

  /** Asks to join a room (servers refuse by default: rooms are server-managed). */
  Hub.prototype.join = function (room, opts) { return this._request({ type: "join", room: room }, opts); };

  /** Leaves a room. */
  Hub.prototype.leave = function (room, opts) { return this._request({ type: "leave", room: room }, opts); };

  /**
   * Calls `fn(data, reply)` on each server event named `name` (sent to you or a room you are
   * in); returns a function that stops it. All events also reach `on("event", fn(name, data,
   * reply))`.
   *
   * When the server asks for an answer (its `emit_with_ack`: an event with an `ack` number),
   * `reply` is a function: `reply(answer)` sends it (once; a second call rejects with
   * `already_answered`) and returns a promise of the server's receipt (rejected with
   * `unknown_ack` when the server no longer waits: too late, or already answered; with
   * `disconnected` when the connection that asked is gone). A listener of `onEvent` may instead
   * return the answer, or a promise of it: the first to return something other than
   * `undefined` answers (a catch-all `on("event")` listener answers only by calling `reply`). Without an `ack`, `reply` is null. An event that asks, with no listener at all,
   * is reported (`error` event, code `no_handler`) and left unanswered: the server's wait
   * times out.
   */
  Hub.prototype.onEvent = function (name, fn) { return this.on("event:" + name, fn); };

  // ---------- requests ----------

  Hub.prototype._request = function (frame, opts) {
    var self = this;
    var timeout = opts && typeof opts.timeout === "number" ? opts.timeout : this._o.timeout;
    return new Promise(function (resolve, reject) {
      if (self._state === "closed") { reject(HubError("closed", "the hub connection is closed")); return; }
      var p = { id: self._nextId++, frame: frame, resolve: resolve, reject: reject, timer: null, sent: false };
      frame.id = p.id;
      if (!self._open && self._queue.length >= self._o.maxQueue) {
        reject(HubError("queue_full", "offline, and " + self._o.maxQueue + " requests are already waiting"));
        return;
      }
      self._pending.set(p.id, p);
      if (timeout > 0 && isFinite(timeout)) {
        p.timer = self._clock.setTimeout(function () {
          self._settle(p, HubError("timeout", frame.type + " not answered within " + timeout + " ms"));
        }, timeout);
      }
      if (self._open) self._transmit(p); else self._queue.push(p);
    });
  };

  Hub.prototype._transmit = function (p) {
    p.sent = true;
    this._t.send(p.frame);
  };

  Hub.prototype._settle = function (p, err, data) {
    if (this._pending.get(p.id) !== p) return;
    this._pending.delete(p.id);
    this._clock.clearTimeout(p.timer);
    var i = this._queue.indexOf(p);
    if (i >= 0) this._queue.splice(i, 1);
    if (p.sub || p.pat) return;
    if (err) p.reject(err); else p.resolve(data);
  };

  /** Fire-and-forget with an id (its answer, even an error, is swallowed). */
  Hub.prototype._fire = function (frame) {
    if (!this._open) return;
    var p = { id: this._nextId++, frame: frame, sub: null, internal: true, timer: null };
    frame.id = p.id;
    this._pending.set(p.id, p);
    this._t.send(frame);
  };

  Hub.prototype._wireSubscribe = function (sub) {
    var frame = { type: "subscribe", topic: sub.topic };
    if (sub.position) frame.since = { epoch: sub.position.epoch, offset: sub.position.offset };
    else if (sub._lastN) frame.last = sub._lastN;
    sub._sentLast = !!frame.last;
    if (sub._presence) frame.presence = sub._presence;
    if (sub._conflate !== null) frame.conflate = sub._conflate;
    var p = { id: this._nextId++, frame: frame, sub: sub, timer: null };
    frame.id = p.id;
    this._pending.set(p.id, p);
    sub._begin(frame.since || null);
    this._t.send(frame);
  };

  Hub.prototype._wirePSubscribe = function (ps) {
    var frame = { type: "psubscribe", pattern: ps.pattern };
    var positions = ps.positions(), count = Object.keys(positions).length;
    if (count) frame.positions = positions;
    var p = { id: this._nextId++, frame: frame, pat: ps, timer: null };
    frame.id = p.id;
    this._pending.set(p.id, p);
    ps._begin(count);
    this._t.send(frame);
  };

  Hub.prototype._dropPattern = function (ps, wasOn) {
    if (this._patterns.get(ps.pattern) === ps) this._patterns.delete(ps.pattern);
    if (wasOn && this._open) this._fire({ type: "punsubscribe", pattern: ps.pattern });
  };

  Hub.prototype._dropSub = function (sub, wasOn) {
    if (this._subs.get(sub.topic) === sub) this._subs.delete(sub.topic);
    // Frames of one connection are handled in order: an unsubscribe sent while the subscribe
    // is still unanswered undoes it all the same.
    if (wasOn && this._open) this._fire({ type: "unsubscribe", topic: sub.topic });
  };

  // ---------- connection lifecycle ----------

  Hub.prototype._available = function () {
    var g = this._g, out = [];
    for (var i = 0; i < TRANSPORTS.length; i++) {
      var n = TRANSPORTS[i];
      if (!this._paths[n] || !this._factories[n]) continue;
      if (this._factories[n] === FACTORIES[n]) {
        if (n === "ws" && typeof g.WebSocket !== "function") continue;
        if (n !== "ws" && typeof g.fetch !== "function") continue;
        if (n === "sse" && typeof g.TextDecoder !== "function") continue;
      }
      out.push(n);
    }
    return out;
  };

  /** The transports to try this round, best bet first. */
  Hub.prototype._order = function () {
    var forced = this._o.transport;
    if (forced !== "auto") return this._paths[forced] ? [forced] : [];
    var all = this._available();
    var w = this._working;
    if (w && all.indexOf(w) > 0) { all.splice(all.indexOf(w), 1); all.unshift(w); }
    return all;
  };

  Hub.prototype._startRound = function () {
    this._clock.clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this._round = this._order();
    this._roundAt = 0;
    if (!this._round.length) {
      this._stop(HubError("no_transport", "no transport is configured and supported here"));
      return;
    }
    this._tryNext(null);
  };

  Hub.prototype._tryNext = function (lastFailure) {
    if (this._roundAt >= this._round.length) {
      this._retryLater(backoff(this._attempt, this._o.minDelay, this._o.maxDelay, this._clock.random), lastFailure && lastFailure.reason);
      return;
    }
    var name = this._round[this._roundAt++];
    this._tName = name;
    this._setState(this._everConnected ? "reconnecting" : "connecting", { reason: lastFailure ? lastFailure.reason : undefined });
    this._openTransport(name);
  };

  Hub.prototype._retryLater = function (delay, reason) {
    var self = this;
    this._attempt++;
    this._tName = null;
    this._retryAt = this._clock.now() + delay;
    this._clock.clearTimeout(this._retryTimer);
    this._retryTimer = this._clock.setTimeout(function () { self._retryTimer = null; self._startRound(); }, delay);
    this._setState(this._everConnected ? "reconnecting" : "connecting", { retryIn: Math.round(delay), reason: reason });
  };

  Hub.prototype._params = function () {
    var q = this._o.query;
    if (typeof q === "function") {
      try { q = q(); } catch (e) { this._callbackThrew("query", e); q = null; }
    }
    return isObj(q) ? q : null;
  };

  Hub.prototype._openTransport = function (name) {
    var self = this, token = {};
    this._token = token;
    var params = this._params();
    var base = this._base;
    var path = this._paths[name];
    function urlObj() {
      var u = new URL(path, base);
      if (name === "ws") {
        if (u.protocol === "http:") u.protocol = "ws:";
        else if (u.protocol === "https:") u.protocol = "wss:";
      }
      return addParams(u, params);
    }
    function mine() { return self._token === token; }
    var ctx = {
      global: this._g,
      clock: this._clock,
      codec: name === "ws" ? this._o.codec : json,
      connectTimeout: this._o.connectTimeout,
      timeout: this._o.timeout,
      withCredentials: this._o.withCredentials,
      urlObj: urlObj,
      url: function () { return urlObj().toString(); },
      params: function () { return params; },
      backoff: function (n) { return backoff(n, self._o.minDelay, self._o.maxDelay, self._clock.random); },
      cb: {
        open: function (info) { if (mine()) self._guard(function () { self._onOpen(name, info); }); },
        frame: function (f) { if (mine()) self._guard(function () { self._onFrame(f); }); },
        alive: function () { if (mine()) self._heard(); },
        bad: function (e) { if (mine()) { self._heard(); self._report(e); } },
        refused: function (frame, e) { if (mine()) self._guard(function () { self._onRefused(frame, e); }); },
        interrupted: function () { if (mine()) self._guard(function () { self._setState("reconnecting", { reason: "poll_failed" }); }); },
        resumed: function () {
          if (mine()) self._guard(function () { self._reconnects++; self._setState("connected", { reason: "poll_resumed" }); });
        },
        close: function (ev) { if (mine()) self._guard(function () { self._onClose(ev || {}); }); },
      },
    };
    try {
      this._t = this._factories[name](ctx);
    } catch (e) {
      this._t = null;
      var self2 = this;
      Promise.resolve().then(function () { if (self2._token === token) self2._onClose({ opened: false, reason: "transport_threw", message: String(e && e.message) }); });
    }
  };

  /** Runs `fn`; anything it throws is reported, never thrown into the transport. */
  Hub.prototype._guard = function (fn) {
    try { fn(); } catch (e) { this._report(HubError("internal", "hub.js: " + (e && e.message), { cause: e })); }
  };

  Hub.prototype._onOpen = function (name, info) {
    var reconnect = this._everConnected;
    this._open = true;
    this._session = info.session || null;
    this._tName = name;
    this._working = name;
    this._remember(name);
    this._attempt = 0;
    if (reconnect) this._reconnects++;
    this._everConnected = true;
    this._startLiveness(info);
    this._setState("connected", {});
    // Every subscription first (resumed from its position), then what waited.
    var subs = Array.from(this._subs.values());
    for (var i = 0; i < subs.length && this._open; i++) this._wireSubscribe(subs[i]);
    var pats = Array.from(this._patterns.values());
    for (var n = 0; n < pats.length && this._open; n++) this._wirePSubscribe(pats[n]);
    var q = this._queue;
    this._queue = [];
    for (var j = 0; j < q.length && this._open; j++) {
      if (this._pending.get(q[j].id) === q[j]) this._transmit(q[j]);
    }
    if (!this._open) { // the connection went away meanwhile: keep the rest for the next one
      for (var r = j; r < q.length; r++) this._queue.push(q[r]);
    }
  };

  /** The open connection is gone, or the current attempt failed. */
  Hub.prototype._onClose = function (ev) {
    var wasOpen = this._open;
    var reason = ev.reason || "closed";
    // Not to come back: what waited fails with the reason itself.
    if (ev.auth) return this._stop(ev.auth);
    if (wasOpen && reason === "kicked") return this._stop(HubError("kicked", "the server ended this session (kicked)"));
    this._detach();
    if (!wasOpen) return this._tryNext(ev); // could not connect: the next transport, or wait
    if (this._state === "closed") return undefined;
    this._round = this._order();
    this._roundAt = 0;
    var o = this._o, r = this._clock.random;
    var delay;
    // The server's reconnect hint (`retry_ms`) wins over the client's own jitter.
    if (isCount(ev.retryMs)) delay = Math.min(ev.retryMs, o.maxDelay);
    else if (reason === "shutdown") delay = o.minDelay + r() * o.shutdownJitter;
    else if (reason === "slow_consumer") delay = backoff(0, o.minDelay, o.maxDelay, r);
    else delay = backoff(this._attempt, o.minDelay, o.maxDelay, r);
    this._retryLater(delay, reason);
    return undefined;
  };

  /** Forgets the current transport (closing it) and what was in flight on it. */
  Hub.prototype._detach = function () {
    var t = this._t;
    this._token = null;
    this._t = null;
    this._stopLiveness();
    if (t) { try { t.close(); } catch (e) { /* gone */ } }
    var wasOpen = this._open;
    this._open = false;
    this._session = null;
    if (!wasOpen) return;
    var self = this;
    this._pending.forEach(function (p) {
      if (p.sub || p.pat || p.internal) { self._pending.delete(p.id); return; }
      if (p.sent) self._settle(p, HubError("disconnected", "the connection was lost before the answer (the request may or may not have run)"));
    });
    this._subs.forEach(function (s) { s._interrupted(); });
    this._patterns.forEach(function (s) { s._interrupted(); });
  };

  /** Closes the transport on purpose (offline, transport switch): no close reason to honour. */
  Hub.prototype._drop = function () {
    this._clock.clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this._detach();
  };

  Hub.prototype._stop = function (err) {
    var e = err || HubError("closed", "the hub connection is closed");
    var self = this;
    this._pending.forEach(function (p) { self._settle(p, e); });
    this._pending.clear();
    this._queue = [];
    this._drop();
    this._listen(false);
    this._tName = null;
    this._setState("closed", { reason: err ? err.code : "closed", error: err || undefined });
    if (err) this._report(err);
  };

  Hub.prototype._setState = function (state, extra) {
    this._state = state;
    var info = { state: state, transport: this._tName, reconnects: this._reconnects, attempt: this._attempt };
    if (extra) for (var k in extra) if (extra[k] !== undefined) info[k] = extra[k];
    this._emit("state", info);
  };

  // ---------- liveness ----------

  Hub.prototype._startLiveness = function (info) {
    this._stopLiveness();
    var ms = num(info.livenessMs, 0);
    if (!ms) return;
    this._live = { ms: ms, ping: !!info.ping, heard: this._clock.now(), pinged: false, timer: null };
    this._scheduleCheck(Math.max(250, ms / 2));
  };

  Hub.prototype._stopLiveness = function () {
    if (this._live) this._clock.clearTimeout(this._live.timer);
    this._live = null;
  };

  Hub.prototype._scheduleCheck = function (ms) {
    var self = this, live = this._live;
    this._clock.clearTimeout(live.timer);
    live.timer = this._clock.setTimeout(function () { if (self._live === live) self._check(); }, ms);
  };

  Hub.prototype._heard = function () {
    if (!this._live) return;
    this._live.heard = this._clock.now();
    this._live.pinged = false;
    this._live.probe = 0;
  };

  /** Dead after two heartbeats and a second of silence; over WebSocket (whose server pings a
   * page cannot see) a `ping` frame is sent after one heartbeat of silence. */
  Hub.prototype._check = function () {
    var live = this._live, now = this._clock.now();
    var silent = now - live.heard;
    if (silent >= 2 * live.ms + 1000 || (live.probe && now >= live.probe)) {
      this._report(HubError("heartbeat_missed", "nothing heard for " + Math.round(silent) + " ms: reconnecting"));
      this._onClose({ opened: true, reason: "heartbeat_missed" });
      return;
    }
    if (live.ping && !live.pinged && silent >= live.ms) {
      live.pinged = true;
      this._fire({ type: "ping" });
    }
    this._scheduleCheck(Math.max(250, Math.min(live.ms / 2, live.probe ? live.probe - now : Infinity)));
  };

  /** Makes sure the connection is alive now (after the page was hidden, or the network came
   * back): a ping that must be answered within a few seconds. */
  Hub.prototype._probe = function () {
    var live = this._live;
    if (!live || !live.ping || !this._open) return;
    live.probe = this._clock.now() + Math.min(5000, live.ms);
    live.pinged = true;
    this._fire({ type: "ping" });
    this._scheduleCheck(Math.min(5000, live.ms));
  };

  // ---------- the browser's signals ----------

  Hub.prototype._listen = function (on) {
    var g = this._g;
    if (on === this._listening || typeof g.addEventListener !== "function") return;
    this._listening = on;
    var f = on ? "addEventListener" : "removeEventListener";
    g[f]("online", this._onWindow);
    g[f]("offline", this._onWindow);
    g[f]("pagehide", this._onWindow);
    if (g.document && typeof g.document.addEventListener === "function") g.document[f]("visibilitychange", this._onWindow);
  };

  Hub.prototype._onWindow = function (ev) {
    var self = this;
    this._guard(function () {
      var s = self._state;
      if (s === "closed" || s === "idle") return;
      switch (ev.type) {
        case "offline":
          self._drop();
          self._tName = null;
          self._setState("offline", { reason: "offline" });
          break;
        case "online":
          if (s === "offline" || s === "reconnecting" || s === "connecting") {
            if (self._open) { self._probe(); break; }
            self._attempt = 0;
            self._startRound();
          } else if (s === "connected") {
            self._probe();
          }
          break;
        case "pagehide":
          // Leaving the page: let the server know now (a page restored from the back-forward
          // cache gets a `pageshow`, and reconnects then on `visibilitychange`).
          self._drop();
          self._tName = null;
          self._setState("reconnecting", { reason: "pagehide" });
          break;
        case "visibilitychange":
          if (!self._g.document || self._g.document.visibilityState !== "visible") break;
          if (self._open) self._probe();
          else if (self._retryTimer !== null || (s === "reconnecting" && !self._t)) { self._attempt = 0; self._startRound(); }
          break;
        default:
          break;
      }
    });
  };

  // ---------- frames ----------

  Hub.prototype._onFrame = function (f) {
    this._heard();
    var problem = checkFrame(f);
    if (problem) { this._report(HubError("bad_frame", problem, { frame: f })); return; }
    var sub;
    switch (f.type) {
      case "message":
        this._toPatterns(f, "_message");
        sub = this._subs.get(f.topic);
        if (sub && (sub.state === "recovering" || sub.state === "subscribed")) sub._message(f);
        return;
      case "gap":
        this._toPatterns(f, "_gapFrame");
        sub = this._subs.get(f.topic);
        if (sub && (sub.state === "recovering" || sub.state === "subscribed")) sub._gapFrame(f);
        return;
      case "reply":
        return this._onReply(f);
      case "error":
        return this._onError(f);
      case "event":
        if (f.ack != null) return this._askedEvent(f);
        this._emit("event", f.event, f.data, null);
        this._emit("event:" + f.event, f.data, null);
        return;
      case "join":
      case "leave":
        if (isStr(f.topic)) {
          sub = this._subs.get(f.topic);
          if (sub) sub._emit(f.type, f.member);
          this._emit(f.type, { topic: f.topic, member: f.member });
        } else {
          this._emit(f.type, { room: f.room, member: f.member });
        }
        return;
      case "dropped":
        this._emit("dropped", f.count);
        return;
      case "pong":
      case "welcome":
        return;
      case "close":
        // WebSocket sessions end with a close frame of the socket; a `close` map here is
        // only informational: the socket's close follows.
        return;
      default:
        this._report(HubError("unknown_frame", "a frame of unknown type " + JSON.stringify(f.type) + " (ignored)", { frame: f }));
    }
  };

  /** A message or gap of a topic, to every pattern subscription that matches it. A pattern's
   * recovered messages come before its reply, so it takes them while subscribing too. */
  Hub.prototype._toPatterns = function (f, method) {
    if (!this._patterns.size) return;
    var list = Array.from(this._patterns.values());
    for (var i = 0; i < list.length; i++) {
      var ps = list[i];
      if ((ps.state === "subscribing" || ps.state === "subscribed") && this._patterns.get(ps.pattern) === ps && matchPattern(ps.pattern, f.topic)) ps[method](f);
    }
  };

  /** A server event that asks for an answer (PROTOCOL.md, "Events that ask for an answer"). */
  Hub.prototype._askedEvent = function (f) {
    var self = this, token = this._token, answered = false;
    var data = f.data === undefined ? null : f.data;
    function reply(answer) {
      if (answered) return Promise.reject(HubError("already_answered", "event " + f.event + " (ack " + f.ack + ") is already answered"));
      answered = true;
      if (self._token !== token || !self._open) {
        return Promise.reject(HubError("disconnected", "the connection that asked (ack " + f.ack + ") is gone: the server no longer waits"));
      }
      var frame = { type: "ack", ack: f.ack, data: answer === undefined ? null : answer };
      var p = self._request(frame, {});
      p.catch(function (e) { self._report(e); }); // reported, and still the caller's to await
      return p;
    }
    var lists = [this._l["event:" + f.event] || [], this._l.event || []];
    var count = lists[0].length + lists[1].length;
    if (!count) {
      this._report(HubError("no_handler", "the server asks for an answer to event " + f.event + " (ack " + f.ack + "), and nothing listens to it", { event: f.event, ack: f.ack }));
      return;
    }
    function answerWith(r) {
      if (r === undefined || answered) return;
      if (r && typeof r.then === "function") {
        answered = true; // the promise is the answer: later returns and calls do not count
        r.then(function (v) { answered = false; reply(v); }, function (e) {
          self._callbackThrew("the answer to event " + f.event, e);
        });
      } else {
        reply(r);
      }
    }
    var all = [];
    for (var i = 0; i < lists[0].length; i++) all.push([lists[0][i], false]);
    for (var j = 0; j < lists[1].length; j++) all.push([lists[1][j], true]);
    for (var k = 0; k < all.length; k++) {
      var r;
      try { r = all[k][1] ? all[k][0](f.event, data, reply) : all[k][0](data, reply); } catch (e) { this._threw("event", e); continue; }
      // Only a listener of this event's name answers by returning: a catch-all `event`
      // listener's return value is not meant as an answer (it may call `reply`).
      if (!all[k][1]) answerWith(r);
    }
  };

  Hub.prototype._onReply = function (f) {
    var p = this._pending.get(f.id);
    if (!p) return; // timed out, or not ours
    if (p.internal) { this._pending.delete(p.id); return; }
    if (p.sub) {
      this._pending.delete(p.id);
      var sub = p.sub;
      if (this._subs.get(sub.topic) !== sub || sub.state !== "subscribing") return; // unsubscribed meanwhile
      sub._replied(f.data);
      return;
    }
    if (p.pat) {
      this._pending.delete(p.id);
      if (this._patterns.get(p.pat.pattern) !== p.pat || p.pat.state !== "subscribing") return;
      p.pat._replied();
      return;
    }
    this._settle(p, null, f.data);
  };

  Hub.prototype._onError = function (f) {
    var err = HubError(f.code, isStr(f.message) ? f.message : f.code, { source: "server" });
    var p = f.id != null ? this._pending.get(f.id) : null;
    if (!p) { this._report(err); return; }
    if (p.internal) { this._pending.delete(p.id); return; }
    if (p.sub) {
      this._pending.delete(p.id);
      var sub = p.sub;
      if (this._subs.get(sub.topic) === sub) this._subs.delete(sub.topic);
      err.topic = sub.topic;
      sub._failed(err);
      this._report(err);
      return;
    }
    if (p.pat) {
      this._pending.delete(p.id);
      if (this._patterns.get(p.pat.pattern) === p.pat) this._patterns.delete(p.pat.pattern);
      err.pattern = p.pat.pattern;
      p.pat._failed(err);
      this._report(err);
      return;
    }
    this._settle(p, err);
  };

  /** A command the transport could not deliver. */
  Hub.prototype._onRefused = function (frame, err) {
    var p = isObj(frame) && frame.id != null ? this._pending.get(frame.id) : null;
    if (!p) { this._report(err); return; }
    if (p.internal) { this._pending.delete(p.id); return; }
    if (p.sub) {
      this._pending.delete(p.id);
      if (err.code === "disconnected" || err.code === "network") return; // resubscribed on the next connection
      var sub = p.sub;
      if (this._subs.get(sub.topic) === sub) this._subs.delete(sub.topic);
      sub._failed(err);
      this._report(err);
      return;
    }
    if (p.pat) {
      this._pending.delete(p.id);
      if (err.code === "disconnected" || err.code === "network") return; // sent again on the next connection
      if (this._patterns.get(p.pat.pattern) === p.pat) this._patterns.delete(p.pat.pattern);
      p.pat._failed(err);
      this._report(err);
      return;
    }
    this._settle(p, err);
  };

  /** Reports an error as an `error` event (console when nobody listens). */
  Hub.prototype._report = function (err) {
    if (!this._emit("error", err) && typeof console !== "undefined" && console.warn) console.warn("hub.js:", err.code, err.message);
  };

  Hub.prototype._callbackThrew = function (what, e) {
    this._report(HubError("callback_threw", what + " threw: " + (e && e.message), { cause: e }));
  };

  Hub.prototype._threw = function (name, e) {
    if (name === "error") { Emitter.prototype._threw.call(this, name, e); return; }
    this._callbackThrew("a " + name + " listener", e);
  };

  // ---------- remembering what worked ----------

  Hub.prototype._storageKey = function () {
    return "hub.js:transport:" + [this._paths.ws, this._paths.sse, this._paths.poll].join("|");
  };

  Hub.prototype._recall = function () {
    if (!this._o.remember) return null;
    try {
      var v = this._g.sessionStorage && this._g.sessionStorage.getItem(this._storageKey());
      return v && this._paths[v] ? v : null;
    } catch (e) { return null; }
  };

  Hub.prototype._remember = function (name) {
    if (!this._o.remember || this._o.transport !== "auto") return;
    try { if (this._g.sessionStorage) this._g.sessionStorage.setItem(this._storageKey(), name); } catch (e) { /* private mode */ }
  };

  // ---------- exports ----------

  Hub.version = 1;
  Hub.codecs = { json: json, msgpack: msgpack };
  Hub.HubError = HubError;
  Hub.backoff = backoff;
  Hub.Subscription = Subscription;
  Hub.PatternSubscription = PatternSubscription;
  /** Internals for tests: not part of the API. */
  Hub._internal = { matchPattern: matchPattern, SseParser: SseParser, checkFrame: checkFrame, parseReason: parseReason, closeFrameEvent: closeFrameEvent, transports: FACTORIES };
  return Hub;
})();

if (typeof module === "object" && module && module.exports) module.exports = Hub;
