// hub.js's wildcard subscriptions (`psubscribe`) on fakes: matching, positions kept per topic
// (duplicates dropped, holes reported per topic), the resume with `positions` after a
// reconnect (recovered messages before the reply), refusals, `punsubscribe`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Hub, setup } from "./helpers.mjs";

const message = (topic, offset, epoch = "E") => ({ type: "message", topic, epoch, offset, data: { n: offset } });

test("patterns match as PROTOCOL.md says", () => {
  const m = Hub._internal.matchPattern;
  assert.equal(m("scores/*", "scores/live"), true);
  assert.equal(m("scores/*", "scores/live/7"), false);
  assert.equal(m("scores/*", "scores"), false);
  assert.equal(m("scores/**", "scores/live"), true);
  assert.equal(m("scores/**", "scores/live/7"), true);
  assert.equal(m("scores/**", "scores"), false);
  assert.equal(m("*/live/*", "a/live/b"), true);
  assert.equal(m("*/live/*", "a/dead/b"), false);
  assert.equal(m("scores/**/x", "scores/a/x"), false, "** only last");
});

test("psubscribe: each topic keeps its position; a reconnect resumes them all with positions; each message once per topic", async () => {
  const { hub, clock, made, errors } = await setup();
  const got = [], gaps = [], infos = [];
  const ps = hub.psubscribe("live/*", (d, m) => got.push(`${m.topic}:${m.offset}:${m.recovered}`));
  ps.on("gap", (g) => gaps.push(`${g.topic} ${g.from}..${g.to} ${g.reason}`));
  ps.on("subscribed", (i) => infos.push(i));
  made[0].open();
  assert.deepEqual(made[0].sent[0], { type: "psubscribe", pattern: "live/*", id: 1 });
  assert.equal(ps.state, "subscribing");
  made[0].frame({ type: "reply", id: 1, data: { pattern: "live/*" } });
  assert.equal(ps.state, "subscribed");
  assert.deepEqual(await ps.ready, { pattern: "live/*", resumed: false, recovered: true, missed: 0, gaps: [], topics: 0 });
  for (const [t, o] of [["live/a", 1], ["live/b", 1], ["live/a", 2], ["live/a", 2], ["other/x", 1], ["live/a/deep", 1], ["live/b", 3]]) made[0].frame(message(t, o));
  assert.deepEqual(got, ["live/a:1:false", "live/b:1:false", "live/a:2:false", "live/b:3:false"]);
  assert.deepEqual(gaps, ["live/b 2..2 hole"]);
  assert.equal(ps.duplicates, 1);
  assert.deepEqual(ps.positions(), { "live/a": { epoch: "E", offset: 2 }, "live/b": { epoch: "E", offset: 3 } });

  made[0].lost();
  await clock.advance(clock.pending()[0]);
  made[1].open();
  assert.deepEqual(made[1].sent[0], {
    type: "psubscribe", pattern: "live/*", id: 2,
    positions: { "live/a": { epoch: "E", offset: 2 }, "live/b": { epoch: "E", offset: 3 } },
  });
  got.length = 0;
  // The recovered messages come before the reply (one a duplicate of what was delivered).
  made[1].frame(message("live/a", 2));
  made[1].frame(message("live/a", 3));
  made[1].frame(message("live/b", 4));
  made[1].frame({ type: "reply", id: 2, data: { pattern: "live/*" } });
  made[1].frame(message("live/b", 5));
  assert.deepEqual(got, ["live/a:3:true", "live/b:4:true", "live/b:5:false"]);
  assert.deepEqual(infos[1], { pattern: "live/*", resumed: true, recovered: true, missed: 2, gaps: [], topics: 2 });
  assert.deepEqual(errors, []);
});

test("psubscribe: a gap during the resume says recovered: false; a recreated stream resumes from its epoch's offset 0", async () => {
  const { hub, clock, made } = await setup();
  const got = [], infos = [];
  const ps = hub.psubscribe("f/**", (d, m) => got.push(`${m.topic}:${m.epoch}:${m.offset}`), { positions: { "f/x": { epoch: "E", offset: 1 } } });
  ps.on("subscribed", (i) => infos.push(i));
  made[0].open();
  assert.deepEqual(made[0].sent[0], { type: "psubscribe", pattern: "f/**", positions: { "f/x": { epoch: "E", offset: 1 } }, id: 1 });
  made[0].frame({ type: "gap", topic: "f/x", epoch: "E", from: 2, to: 5, reason: "history" });
  made[0].frame(message("f/x", 6));
  made[0].frame({ type: "reply", id: 1, data: { pattern: "f/**" } });
  assert.equal(infos[0].recovered, false);
  assert.deepEqual(infos[0].gaps.map((g) => [g.topic, g.from, g.to, g.reason]), [["f/x", 2, 5, "history"]]);
  // The stream of f/y/z is recreated while followed: its first message is taken wherever.
  made[0].frame(message("f/y/z", 4, "OLD"));
  made[0].frame({ type: "gap", topic: "f/y/z", epoch: "NEW", from: 0, to: 0, reason: "epoch" });
  assert.deepEqual(ps.position("f/y/z"), { epoch: "NEW", offset: 0 });
  made[0].lost();
  await clock.advance(clock.pending()[0]);
  made[1].open();
  assert.deepEqual(made[1].sent[0].positions, { "f/x": { epoch: "E", offset: 6 }, "f/y/z": { epoch: "NEW", offset: 0 } });
  made[1].frame(message("f/y/z", 1, "NEW"));
  assert.deepEqual(got, ["f/x:E:6", "f/y/z:OLD:4", "f/y/z:NEW:1"]);
});

test("psubscribe: a refusal rejects ready with the server's code and ends it; unsubscribe sends punsubscribe", async () => {
  const { hub, made, errors } = await setup();
  made[0].open();
  const bad = hub.psubscribe("a//*", () => {});
  const failed = [];
  bad.on("error", (e) => failed.push(e.code));
  made[0].frame({ type: "error", id: made[0].last().id, code: "bad_pattern", message: "empty segment" });
  await assert.rejects(bad.ready, (e) => e.code === "bad_pattern");
  assert.equal(bad.state, "failed");
  assert.deepEqual(failed, ["bad_pattern"]);
  assert.deepEqual(errors.map((e) => e.code), ["bad_pattern"]);
  assert.throws(() => hub.psubscribe("x/*", () => {}) && hub.psubscribe("x/*", () => {}), /already subscribed/);
  const got = [];
  const ok = hub.psubscribe("a/*", (d, m) => got.push(m.offset));
  made[0].frame({ type: "reply", id: made[0].last().id, data: { pattern: "a/*" } });
  made[0].frame(message("a/1", 1));
  ok.unsubscribe();
  assert.deepEqual(made[0].last(), { type: "punsubscribe", pattern: "a/*", id: made[0].last().id });
  made[0].frame(message("a/1", 2));
  assert.deepEqual(got, [1], "nothing after unsubscribe");
  assert.equal(ok.state, "closed");
});

test("psubscribe: a topic that a subscription and a pattern both follow reaches both", async () => {
  const { hub, made } = await setup();
  const plain = [], pat = [];
  hub.subscribe("both/a", (d, m) => plain.push(m.offset));
  hub.psubscribe("both/*", (d, m) => pat.push(`${m.topic}:${m.offset}`));
  made[0].open();
  assert.deepEqual(made[0].sent.map((f) => f.type), ["subscribe", "psubscribe"]);
  made[0].frame({ type: "reply", id: 1, data: { topic: "both/a", epoch: "E", offset: 0 } });
  made[0].frame({ type: "reply", id: 2, data: { pattern: "both/*" } });
  made[0].frame(message("both/a", 1));
  made[0].frame(message("both/b", 1));
  assert.deepEqual(plain, [1]);
  assert.deepEqual(pat, ["both/a:1", "both/b:1"]);
});
