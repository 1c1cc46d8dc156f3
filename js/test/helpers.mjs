// Fakes for hub.js's unit tests: a clock whose time moves only when told, transports that
// record what hub.js sends and let the test play the server, and a browser-ish global.
import { createRequire } from "node:module";

export const Hub = createRequire(import.meta.url)("../hub.js");

/** Lets promise callbacks and microtasks run. */
export const flush = () => new Promise((r) => setImmediate(r));

export function fakeClock(random = () => 0.5) {
  let now = 1000, seq = 0;
  const timers = new Map();
  return {
    now: () => now,
    random,
    setTimeout(f, ms) { const id = ++seq; timers.set(id, { at: now + Math.max(0, ms || 0), f }); return id; },
    clearTimeout(id) { timers.delete(id); },
    /** Delays of the timers set, from now. */
    pending: () => [...timers.values()].map((t) => t.at - now).sort((a, b) => a - b),
    /** Moves time forward by `ms`, running the timers due on the way, in order. */
    async advance(ms) {
      const end = now + ms;
      for (;;) {
        let next = null;
        for (const [id, t] of timers) if (t.at <= end && (!next || t.at < next[1].at)) next = [id, t];
        if (!next) break;
        timers.delete(next[0]);
        now = next[1].at;
        next[1].f();
        await flush();
      }
      now = end;
      await flush();
    },
  };
}

/** Transports that record every frame sent; `made` lists them in creation order. */
export function fakeTransports() {
  const made = [];
  const factory = (name) => (ctx) => {
    const t = {
      name, ctx, sent: [], closed: false,
      send(f) { t.sent.push(JSON.parse(JSON.stringify(f))); },
      close() { t.closed = true; },
      open(session = "s" + made.length, extra = {}) { ctx.cb.open({ session, livenessMs: 0, ping: false, ...extra }); },
      frame(f) { ctx.cb.frame(f); },
      lost(reason = "abnormal", extra = {}) { ctx.cb.close({ opened: true, reason, ...extra }); },
      fail(extra = {}) { ctx.cb.close({ opened: false, reason: "refused", ...extra }); },
      last() { return t.sent[t.sent.length - 1]; },
    };
    made.push(t);
    return t;
  };
  return { made, transports: { ws: factory("ws"), sse: factory("sse"), poll: factory("poll") } };
}

/** A global with the events hub.js listens to, and a sessionStorage. */
export function fakeGlobal(extra = {}) {
  const handlers = {};
  const store = new Map();
  const g = {
    navigator: { onLine: true },
    addEventListener(type, f) { (handlers[type] ||= []).push(f); },
    removeEventListener(type, f) { handlers[type] = (handlers[type] || []).filter((x) => x !== f); },
    dispatch(type) { for (const f of handlers[type] || []) f({ type }); },
    listeners: (type) => (handlers[type] || []).length,
    sessionStorage: { getItem: (k) => (store.has(k) ? store.get(k) : null), setItem: (k, v) => store.set(k, String(v)) },
    store,
    ...extra,
  };
  return g;
}

/** A hub on fakes; it has connected (its first transport exists) when this resolves. */
export async function setup(options = {}) {
  const clock = options.clock || fakeClock();
  const { made, transports } = fakeTransports();
  const global = options.global || fakeGlobal();
  const errors = [];
  const hub = new Hub({ base: "http://hub.test/", clock, transports, global, ...options });
  hub.on("error", (e) => errors.push(e));
  await flush();
  return { hub, clock, made, global, errors };
}
