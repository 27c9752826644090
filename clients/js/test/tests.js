// The tests of roomcast.js, with a tiny runner (no dependencies): test.html loads this module in
// a browser; tests/browser/js_client.py starts a real 3-node cluster (and one node with
// `auth = required`), serves clients/js/, names the nodes in the query string and offers
// control endpoints (`/control/kill?node=0`, `drain`, `restart`, `heal`, `wait_live`) on this
// page's origin. Tests run one at a time, each with its own rooms; every wait is for a
// condition with a deadline, never a fixed sleep. Results go to window.__results.
import { RoomcastClient, RoomcastError, backoffDelay } from "../roomcast.js";

const params = new URLSearchParams(location.search);
const WS = (params.get("ws") || "").split(",").filter(Boolean);
const IDS = (params.get("ids") || "").split(",").filter(Boolean);
const AUTH_WS = params.get("authws") || "";
const GOOD_TOKEN = params.get("good") || "";
const BAD_TOKEN = params.get("bad") || "";
const ONLY = params.get("only"); // run the tests whose name contains this

// ---- runner ------------------------------------------------------------------------------

const tests = [];
function test(name, fn, timeoutMs = 30000) {
  tests.push({ name, fn, timeoutMs });
}

const results = (window.__results = { done: false, passed: 0, failed: 0, tests: [] });

class AssertionError extends Error {}
function assert(cond, msg) {
  if (!cond) throw new AssertionError(msg || "assertion failed");
}
function eq(actual, expected, msg) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new AssertionError(`${msg || "not equal"}: got ${a}, expected ${e}`);
}

/** Polls `cond` until it returns a truthy value (returned), or throws after `ms`. */
async function waitFor(cond, ms = 10000, what = "condition") {
  const end = performance.now() + ms;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (performance.now() > end) {
      throw new AssertionError(`timed out after ${ms} ms waiting for ${typeof what === "function" ? what() : what}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The promise's rejection (fails when it resolves, or nothing happens in `ms`). */
async function rejects(promise, ms = 10000) {
  let timer;
  const timeout = new Promise((_, rej) => {
    timer = setTimeout(() => rej(new AssertionError(`no rejection within ${ms} ms`)), ms);
  });
  try {
    await Promise.race([promise.then(
      (v) => { throw new AssertionError(`expected a rejection, got ${JSON.stringify(v)}`); },
      (e) => { throw { rejected: e }; }), timeout]);
  } catch (x) {
    if (x && x.rejected !== undefined) return x.rejected;
    throw x;
  } finally {
    clearTimeout(timer);
  }
  throw new AssertionError("unreachable");
}

function room(tag) {
  return `js.${tag}.${Math.random().toString(36).slice(2, 10)}`;
}

async function control(action, args = {}) {
  const q = new URLSearchParams(args).toString();
  const r = await fetch(`/control/${action}${q ? "?" + q : ""}`, { method: "POST" });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(`control ${action} ${q}: HTTP ${r.status} ${JSON.stringify(body)}`);
  return body;
}

function show(t) {
  const li = document.createElement("li");
  li.className = t.pass ? "pass" : "fail";
  li.textContent = `${t.pass ? "✔" : "✘"} ${t.name}`;
  const ms = document.createElement("span");
  ms.className = "ms";
  ms.textContent = `${t.ms} ms`;
  li.append(ms);
  if (t.error) {
    const pre = document.createElement("pre");
    pre.textContent = t.error;
    li.append(pre);
  }
  document.getElementById("results").append(li);
}

async function run() {
  const started = performance.now();
  for (const t of tests) {
    if (ONLY && !t.name.includes(ONLY)) continue;
    const cleanups = [];
    const ctx = {
      /** A client closed when the test ends. */
      client(urls, options) {
        const c = new RoomcastClient(urls, options);
        cleanups.push(() => c.close());
        return c;
      },
      /** Runs at the end of the test, passed or not (after the clients are closed). */
      finally(fn) {
        cleanups.unshift(fn);
      },
    };
    const t0 = performance.now();
    let error = null;
    let timer;
    try {
      await Promise.race([
        Promise.resolve().then(() => t.fn(ctx)),
        new Promise((_, rej) => {
          timer = setTimeout(() => rej(new AssertionError(`test timed out after ${t.timeoutMs} ms`)), t.timeoutMs);
        }),
      ]);
    } catch (e) {
      error = e instanceof Error ? `${e.name}${e.code ? " [" + e.code + "]" : ""}: ${e.message}\n${e.stack || ""}` : String(e);
    } finally {
      clearTimeout(timer);
    }
    for (const fn of cleanups.reverse()) {
      try {
        await fn();
      } catch (e) {
        error = error || `cleanup failed: ${e && e.message}`;
      }
    }
    const r = { name: t.name, pass: error === null, error, ms: Math.round(performance.now() - t0) };
    results.tests.push(r);
    if (r.pass) results.passed++;
    else results.failed++;
    console.log(`${r.pass ? "PASS" : "FAIL"} ${t.name} (${r.ms} ms)${error ? "\n" + error : ""}`);
    show(r);
  }
  const summary = document.getElementById("summary");
  summary.textContent = `${results.passed} passed, ${results.failed} failed (${Math.round((performance.now() - started) / 1000)} s)`;
  summary.className = results.failed ? "fail" : "pass";
  results.done = true;
}

// ---- fake transports (for what a real server cannot be made to do on demand) ---------------

/**
 * A WebSocket class whose "server" is `script(socket, index)`, called once per socket created.
 * The socket's `sent` holds the parsed frames the client sent; `open()`, `frame(obj)`,
 * `serverClose(code)` and `fail()` play the server's part.
 */
function fakeWebSocket(script) {
  const sockets = [];
  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.onopen = this.onmessage = this.onerror = this.onclose = null;
      this.onsend = null;
      sockets.push(this);
      const index = sockets.length - 1;
      setTimeout(() => script(this, index), 0);
    }
    send(text) {
      if (this.readyState !== 1) return;
      const f = JSON.parse(text);
      this.sent.push(f);
      if (this.onsend) setTimeout(() => this.onsend(f), 0);
    }
    close(code) {
      if (this.readyState === 3) return;
      this.readyState = 3;
      setTimeout(() => this.onclose && this.onclose({ code: code || 1000, reason: "" }), 0);
    }
    open(welcome = true) {
      this.readyState = 1;
      if (this.onopen) this.onopen({});
      if (welcome) this.frame({ type: "welcome", conn: `fake/${sockets.indexOf(this) + 1}`, node: "fake", heartbeat_ms: 15000 });
    }
    // Like a browser's, each frame and the close are their own task, in order.
    frame(obj) {
      const data = JSON.stringify(obj);
      setTimeout(() => {
        if (this.readyState === 1 && this.onmessage) this.onmessage({ data });
      }, 0);
    }
    serverClose(code, reason = "") {
      setTimeout(() => {
        if (this.readyState === 3) return;
        this.readyState = 3;
        if (this.onclose) this.onclose({ code, reason });
      }, 0);
    }
    fail() {
      this.readyState = 3;
      if (this.onerror) this.onerror({});
      if (this.onclose) this.onclose({ code: 1006, reason: "" });
    }
  }
  FakeWebSocket.sockets = sockets;
  return FakeWebSocket;
}

/** A WebSocket that can never be opened (a proxy that breaks WebSockets). */
const BrokenWebSocket = fakeWebSocket((s) => s.fail());

const FAST = { initialMs: 20, maxMs: 200, factor: 2, jitter: 0.5 };
const noFetch = () => Promise.reject(new Error("no discovery in this test"));

/** Collects a client's events by name. */
function record(client, names) {
  const log = {};
  for (const n of names) {
    log[n] = [];
    client.on(n, (x) => log[n].push(x));
  }
  return log;
}

// ---- pure ----------------------------------------------------------------------------------

test("backoffDelay: exponential, capped, jittered within [1-jitter, 1]", () => {
  const b = { initialMs: 250, maxMs: 10000, factor: 2, jitter: 0.5 };
  eq([0, 1, 2, 3].map((a) => backoffDelay(a, b, () => 0)), [250, 500, 1000, 2000], "no jitter drawn");
  eq(backoffDelay(0, b, () => 0.5), 187.5, "half the jitter");
  assert(Math.abs(backoffDelay(0, b, () => 0.999999) - 125) < 0.01, "full jitter is 1 - jitter");
  eq(backoffDelay(6, b, () => 0), 10000, "capped at maxMs");
  eq(backoffDelay(1000, b, () => 0), 10000, "huge attempts stay capped");
  eq(backoffDelay(-3, b, () => 0), 250, "a negative attempt is the first");
  eq(backoffDelay(2, undefined, () => 0), 1000, "defaults");
  eq(backoffDelay(1, { initialMs: 100 }, () => 0), 200, "partial options keep the other defaults");
  eq([0, 1, 2, 3].map((a) => backoffDelay(a, { initialMs: 100, factor: 3, maxMs: 1000, jitter: 0 }, () => 0.7)),
    [100, 300, 900, 1000], "jitter 0 ignores the random draw");
  const seen = new Set();
  for (let i = 0; i < 2000; i++) {
    for (let a = 0; a < 8; a++) {
      const base = Math.min(10000, 250 * 2 ** a);
      const d = backoffDelay(a, b);
      assert(d >= base * 0.5 && d <= base, `attempt ${a}: ${d} outside [${base / 2}, ${base}]`);
      if (a === 0) seen.add(Math.floor(d));
    }
  }
  assert(seen.size > 50, "the delay is actually random");
});

// ---- fake server: reconnect logic ---------------------------------------------------------

test("fake: a request with no reply rejects with timeout", async (t) => {
  const WS = fakeWebSocket((s) => s.open());
  const c = t.client("ws://fake.invalid/ws", { WebSocket: WS, fetch: noFetch, requestTimeoutMs: 300 });
  await c.connect();
  const err = await rejects(c.ping(), 3000);
  assert(err instanceof RoomcastError, "a RoomcastError");
  eq(err.code, "timeout", "code");
  eq(err.request.op, "ping", "the request is attached");
});

test("fake: close codes that would repeat the problem do not reconnect", async (t) => {
  for (const code of [1002, 1007, 1008, 1009]) {
    const WS = fakeWebSocket((s) => {
      s.onsend = (f) => { if (f.op === "publish") s.serverClose(code, "bye"); };
      s.open();
    });
    const c = t.client("ws://fake.invalid/ws", { WebSocket: WS, fetch: noFetch, backoff: FAST });
    const log = record(c, ["disconnected", "reconnecting", "error"]);
    await c.connect();
    const err = await rejects(c.publish("r", 1));
    eq(err.code, "closed", `${code}: pending request rejected`);
    eq(c.state, "closed", `${code}: state`);
    eq(log.disconnected, [{ code, reason: "bye", willReconnect: false }], `${code}: disconnected`);
    eq(log.reconnecting.length, 0, `${code}: no reconnect`);
    eq(WS.sockets.length, 1, `${code}: one socket`);
    eq(log.error.map((e) => e.code), ["closed"], `${code}: error event`);
  }
});

test("fake: a disconnect frame and 4403 end the client with server_disconnect", async (t) => {
  const WS = fakeWebSocket((s) => {
    s.open();
    setTimeout(() => {
      s.frame({ type: "disconnect", reason: "banned" });
      s.serverClose(4403, "disconnected");
    }, 10);
  });
  const c = t.client("ws://fake.invalid/ws", { WebSocket: WS, fetch: noFetch, backoff: FAST });
  const log = record(c, ["server_disconnect", "disconnected", "reconnecting"]);
  await c.connect();
  await waitFor(() => c.state === "closed", 3000, "closed");
  eq(log.server_disconnect, [{ reason: "banned" }], "server_disconnect");
  eq(log.disconnected[0].willReconnect, false, "no reconnect announced");
  eq(log.reconnecting.length, 0, "no reconnect");
});

test("fake: 4401 closes a static-token client, reconnects a token-function client", async (t) => {
  const refuse = (s, i) => {
    s.open();
    if (i === 0) {
      s.frame({ id: null, ok: false, error: { code: "unauthorized", message: "token expired" } });
      s.serverClose(4401, "unauthorized");
    }
  };
  const WS1 = fakeWebSocket(refuse);
  const c1 = t.client("ws://fake.invalid/ws", { WebSocket: WS1, fetch: noFetch, token: "static", backoff: FAST });
  const log1 = record(c1, ["error", "reconnecting"]);
  await c1.connect();
  await waitFor(() => c1.state === "closed", 3000, "closed");
  eq(log1.error.map((e) => e.code), ["unauthorized"], "one unauthorized error");
  eq(log1.reconnecting.length, 0, "no reconnect");
  assert(WS1.sockets[0].url.includes("token=static"), "token in the URL");

  let n = 0;
  const WS2 = fakeWebSocket(refuse);
  const c2 = t.client("ws://fake.invalid/ws", { WebSocket: WS2, fetch: noFetch, token: () => `fresh${++n}`, backoff: FAST });
  await c2.connect();
  await waitFor(() => WS2.sockets.length === 2 && c2.state === "connected", 3000, "reconnected");
  assert(WS2.sockets[1].url.includes("token=fresh2"), `a fresh token: ${WS2.sockets[1].url}`);
});

test("fake: after a drop, in-flight requests are re-sent (same key), rooms resume, duplicates dropped", async (t) => {
  const E = "ab-1";
  const WS = fakeWebSocket((s, i) => {
    s.onsend = (f) => {
      if (i === 0 && f.op === "join") {
        s.frame({ id: f.id, ok: true, room: "r", seq: 5, epoch: E });
        s.frame({ type: "message", room: "r", seq: 6, epoch: E, data: 6, from: "x", ts: 1 });
        s.frame({ type: "message", room: "r", seq: 7, epoch: E, data: 7, from: "x", ts: 1 });
      } else if (i === 0 && f.op === "publish") {
        s.serverClose(1006, ""); // the reply never comes
      } else if (i === 1 && f.op === "join") {
        s.frame({ id: f.id, ok: true, room: "r", seq: 8, epoch: E, recovered: true });
        s.frame({ type: "message", room: "r", seq: 7, epoch: E, data: 7, from: "x", ts: 1 }); // a repeat
        s.frame({ type: "message", room: "r", seq: 8, epoch: E, data: 8, from: "x", ts: 1 });
      } else if (i === 1 && f.op === "publish") {
        s.frame({ id: f.id, ok: true, room: "r", seq: 8, epoch: E });
        s.frame({ type: "message", room: "r", seq: 8, epoch: E, data: 8, from: "x", ts: 1 }); // again
        s.frame({ type: "message", room: "r", seq: 1, epoch: "cd-2", data: "new", from: "x", ts: 1 });
      }
    };
    s.open();
  });
  const c = t.client(["ws://a.invalid/ws", "ws://b.invalid/ws"], { WebSocket: WS, fetch: noFetch, backoff: FAST });
  const log = record(c, ["resumed", "disconnected", "reconnecting"]);
  const sub = await c.join("r");
  eq([sub.seq, sub.epoch], [5, E], "join reply");
  const got = [];
  sub.on("message", (ev) => got.push(ev.data));
  await waitFor(() => got.length === 2, 3000, "events 6 and 7");
  const p = c.publish("r", "x", { key: "k-1" });
  const reply = await p;
  eq(reply, { room: "r", seq: 8, epoch: E }, "publish reply after the reconnect");
  await waitFor(() => got.length === 4, 3000, "events 8 and the new epoch's 1");
  eq(got, [6, 7, 8, "new"], "each event once; a new epoch is adopted");
  eq(WS.sockets.map((s) => s.url), ["ws://a.invalid/ws", "ws://b.invalid/ws"], "rotated to the next URL");
  const pubs = WS.sockets.map((s) => s.sent.find((f) => f.op === "publish"));
  eq(pubs[0].key, "k-1", "key sent");
  eq(pubs[1], pubs[0], "the same publish re-sent");
  const resume = WS.sockets[1].sent.find((f) => f.op === "join");
  eq([resume.since, resume.epoch], [7, E], "resumed from the last seq seen");
  eq(log.resumed, [{ room: "r", recovered: true, seq: 8, epoch: E }], "resumed event");
  eq(log.disconnected, [{ code: 1006, reason: "", willReconnect: true }], "disconnected event");
  eq(log.reconnecting.length, 1, "one reconnect");
  eq(sub.position, { epoch: "cd-2", seq: 1 }, "position follows the new epoch");
});

test("fake: a leave while disconnected is not re-joined; a join while disconnected is sent", async (t) => {
  let release;
  const gate = new Promise((r) => { release = r; });
  const WS = fakeWebSocket((s, i) => {
    const joined = new Set();
    s.onsend = (f) => {
      if (f.op === "join") {
        joined.add(f.room);
        s.frame({ id: f.id, ok: true, room: f.room, seq: 0, epoch: "e", ...(f.since !== undefined ? { recovered: true } : {}) });
      } else if (f.op === "leave" && joined.delete(f.room)) {
        s.frame({ id: f.id, ok: true, room: f.room });
      } else if (f.op === "leave") {
        s.frame({ id: f.id, ok: false, error: { code: "bad_request", message: `not joined to room ${f.room}` } });
      }
    };
    if (i === 0) s.open();
    else gate.then(() => s.open());
  });
  const c = t.client("ws://fake.invalid/ws", { WebSocket: WS, fetch: noFetch, backoff: FAST });
  await c.join("a");
  await c.join("b");
  WS.sockets[0].serverClose(1006);
  await waitFor(() => WS.sockets.length === 2 && c.state === "reconnecting", 3000, "a second attempt");
  const left = c.leave("a");
  const joined = c.join("c");
  release();
  await left;
  const sub = await joined;
  eq(sub.room, "c", "joined while disconnected");
  const sent = WS.sockets[1].sent.map((f) => `${f.op} ${f.room}${f.since !== undefined ? " since " + f.since : ""}`);
  eq(sent, ["join b since 0", "join c"], "b resumed, c joined, a neither joined nor left");
  eq((await rejects(c.leave("a"))).code, "bad_request", "a is gone");
});

test("fake: a reconnect hint moves the client to the named node", async (t) => {
  const WS = fakeWebSocket((s, i) => {
    s.onsend = (f) => {
      if (f.op === "join") s.frame({ id: f.id, ok: true, room: f.room, seq: 3, epoch: "e", ...(f.since !== undefined ? { recovered: true } : {}) });
    };
    s.open();
    if (i === 0) setTimeout(() => s.frame({ type: "reconnect", reason: "draining", url: "ws://hint.invalid/ws" }), 20);
  });
  const c = t.client(["ws://a.invalid/ws", "ws://b.invalid/ws"], { WebSocket: WS, fetch: noFetch, backoff: FAST });
  const log = record(c, ["reconnect_hint", "disconnected", "resumed"]);
  await c.join("r");
  await waitFor(() => c.state === "connected" && c.url === "ws://hint.invalid/ws", 3000, "moved to the hinted node");
  eq(log.reconnect_hint, [{ url: "ws://hint.invalid/ws", reason: "draining" }], "hint event");
  eq(log.disconnected, [{ code: 1001, reason: "draining", willReconnect: true }], "disconnected");
  eq(WS.sockets.map((s) => s.url), ["ws://a.invalid/ws", "ws://hint.invalid/ws"], "straight to the hint");
  await waitFor(() => log.resumed.length === 1, 3000, "resumed");
});

test("fake: unavailable is retried with the same key, then given up", async (t) => {
  let refusals = 0;
  const WS = fakeWebSocket((s) => {
    s.onsend = (f) => {
      if (f.op !== "publish") return;
      if (f.data === "ok-later" && refusals++ < 2) {
        s.frame({ id: f.id, ok: false, error: { code: "unavailable", message: "owner busy" } });
      } else if (f.data === "never") {
        s.frame({ id: f.id, ok: false, error: { code: "unavailable", message: "owner busy" } });
      } else {
        s.frame({ id: f.id, ok: true, room: f.room, seq: 1, epoch: "e" });
      }
    };
    s.open();
  });
  const c = t.client("ws://fake.invalid/ws", { WebSocket: WS, fetch: noFetch, backoff: FAST, retryUnavailable: 3 });
  await c.publish("r", "ok-later");
  const keys = WS.sockets[0].sent.filter((f) => f.data === "ok-later").map((f) => f.key);
  eq(keys.length, 3, "two refusals, one success");
  assert(keys.every((k) => k === keys[0]) && keys[0].startsWith(c.clientId + "-"), `one generated key: ${keys}`);
  const err = await rejects(c.publish("r", "never"));
  eq(err.code, "unavailable", "given up");
  eq(WS.sockets[0].sent.filter((f) => f.data === "never").length, 4, "1 + retryUnavailable attempts");
});

test("fake: failed attempts back off, rotate URLs, and connect_timeout closes the client", async (t) => {
  const c = t.client(["ws://a.invalid/ws", "ws://b.invalid/ws"], {
    WebSocket: BrokenWebSocket, transports: ["websocket"], fetch: noFetch, backoff: FAST, connectTimeoutMs: 700,
  });
  const log = record(c, ["reconnecting", "state", "error"]);
  const before = BrokenWebSocket.sockets.length;
  const q = c.ping();
  const err = await rejects(c.connect(), 3000);
  eq(err.code, "connect_timeout", "connect() rejects");
  eq((await rejects(q)).code, "connect_timeout", "queued requests too");
  eq(c.state, "closed", "closed");
  const urls = BrokenWebSocket.sockets.slice(before).map((s) => s.url);
  assert(urls.length >= 3, `several attempts: ${urls.length}`);
  urls.forEach((u, i) => eq(u, i % 2 ? "ws://b.invalid/ws" : "ws://a.invalid/ws", `attempt ${i} rotates`));
  log.reconnecting.forEach((r, i) => {
    const base = Math.min(FAST.maxMs, FAST.initialMs * 2 ** i);
    assert(r.attempt === i + 1 && r.delayMs >= base / 2 && r.delayMs <= base, `attempt ${i}: ${JSON.stringify(r)}`);
  });
  eq(log.state[0], "connecting", "connecting first");
  eq(log.state[log.state.length - 1], "closed", "closed last");
  eq(log.error.length, 0, "no error event: connect() carries it");
});

// ---- a real cluster --------------------------------------------------------------------------

test("connect: welcome, state, node, conn, transport, url", async (t) => {
  const c = t.client(WS[0], { discover: false });
  const log = record(c, ["state", "connected"]);
  eq(c.state, "idle", "idle before connect");
  const info = await c.connect();
  eq(info.node, IDS[0], "node");
  eq(info.transport, "websocket", "transport");
  eq(info.url, WS[0], "url");
  assert(new RegExp(`^${IDS[0]}/\\d+$`).test(info.conn), `conn: ${info.conn}`);
  eq([c.state, c.node, c.conn, c.transport, c.url], ["connected", info.node, info.conn, "websocket", WS[0]], "getters");
  eq(log.state, ["connecting", "connected"], "states");
  assert(log.connected.length === 1 && log.connected[0].heartbeatMs > 0, "connected event with heartbeatMs");
  eq(await c.connect(), info, "connect() is idempotent");
  c.close();
  eq(c.state, "closed", "closed");
  eq((await rejects(c.ping())).code, "closed", "requests after close reject");
});

test("join, publish, own event, history, presence, ping, leave", async (t) => {
  const r = room("basic");
  const c = t.client(WS[0], { discover: false });
  const other = t.client(WS[1], { discover: false });
  const sub = await c.join(r);
  eq(sub.room, r, "sub.room");
  eq(sub.seq, 0, "a new room's seq");
  assert(typeof sub.epoch === "string" && sub.epoch.length > 0, "epoch");
  const got = [];
  const all = [];
  sub.on("message", (ev) => got.push(ev));
  c.on("message", (ev) => all.push(ev));
  const pub = await c.publish(r, { text: "hi" });
  eq(pub, { room: r, seq: 1, epoch: sub.epoch }, "publish reply");
  await waitFor(() => got.length === 1, 5000, "own event");
  eq([got[0].seq, got[0].data, got[0].from, got[0].epoch], [1, { text: "hi" }, c.conn, sub.epoch], "own event");
  eq(all.length, 1, "client-wide message event");
  await other.publish(r, [1, 2]);
  await waitFor(() => got.length === 2, 5000, "other's event");
  eq([got[1].seq, got[1].data, got[1].from], [2, [1, 2], other.conn], "other's event");
  const h = await c.history(r);
  eq(h.messages.map((m) => m.data), [{ text: "hi" }, [1, 2]], "history");
  eq([h.room, h.seq, h.epoch, h.recovered], [r, 2, sub.epoch, true], "history fields");
  const h2 = await other.history(r, { since: 1, limit: 1 });
  eq(h2.messages.map((m) => m.seq), [2], "history since/limit");
  const pr = room("presence");
  await c.join(pr, { presence: true });
  const members = (await other.presence(pr)).members;
  assert(members.some((m) => m.conn === c.conn), `presence lists the joiner: ${JSON.stringify(members)}`);
  const ping = await c.ping();
  assert(Math.abs(ping.ts - Date.now()) < 60000, "ping ts is server time in ms");
  await sub.leave();
  eq(sub.position, null, "no position after leave");
  await other.publish(r, "after leave");
  await c.ping(); // a round trip after the publish: its event would have come first
  await other.ping();
  eq(got.length, 2, "no event after the leave");
  eq((await rejects(c.leave(r))).code, "bad_request", "a second leave");
  const again = await c.join(r);
  eq(again.seq, 3, "joined again");
});

test("presence events reach subscribers that asked for them", async (t) => {
  const r = room("pres");
  const a = t.client(WS[0], { discover: false });
  const b = t.client(WS[1], { discover: false });
  const sub = await a.join(r, { presenceEvents: true });
  const evs = [];
  sub.on("presence", (p) => evs.push(p));
  const clientEvs = [];
  a.on("presence", (p) => clientEvs.push(p));
  await b.connect();
  await b.join(r, { presence: true });
  await waitFor(() => evs.some((p) => p.action === "join" && p.conn === b.conn), 5000, "presence join");
  await b.leave(r);
  await waitFor(() => evs.some((p) => p.action === "leave" && p.conn === b.conn), 5000, "presence leave");
  assert(clientEvs.length >= 2, "client-wide presence events");
});

test("typed errors: bad_request, too_large, leave of a room not joined", async (t) => {
  const c = t.client(WS[0], { discover: false });
  const e1 = await rejects(c.join("not a room!"));
  assert(e1 instanceof RoomcastError && e1 instanceof Error, "a RoomcastError");
  eq([e1.name, e1.code, e1.request.op, e1.request.room], ["RoomcastError", "bad_request", "join", "not a room!"], "invalid room");
  assert(e1.message.length > 0, "a message");
  const big = "x".repeat(70000);
  const e2 = await rejects(c.publish(room("big"), big));
  eq(e2.code, "too_large", "too_large");
  assert(typeof e2.request.key === "string", "the publish's key is on the error");
  const e3 = await rejects(c.leave(room("never")));
  eq(e3.code, "bad_request", "leave of a room not joined");
  const e4 = await rejects(c.history(room("h"), { limit: 0 }));
  eq(e4.code, "bad_request", "limit 0");
  const r = room("dup");
  await c.join(r);
  eq((await rejects(c.join(r))).code, "bad_request", "already joined");
  eq(c.state, "connected", "still connected");
});

test("requests made before connecting are queued and sent in order", async (t) => {
  const r = room("queue");
  const watcher = t.client(WS[1], { discover: false });
  const wsub = await watcher.join(r);
  const got = [];
  wsub.on("message", (ev) => got.push(ev.data));
  const c = t.client(WS[0], { discover: false });
  eq(c.state, "idle", "idle");
  const ps = [];
  for (let i = 1; i <= 20; i++) ps.push(c.publish(r, i));
  const sub = c.join(r);
  const pong = c.ping();
  eq(c.state, "connecting", "a request connects");
  const mine = [];
  const s = await sub;
  s.on("message", (ev) => mine.push(ev.seq));
  const replies = await Promise.all(ps);
  eq(replies.map((x) => x.seq), Array.from({ length: 20 }, (_, i) => i + 1), "sequenced in order");
  await pong;
  await waitFor(() => got.length === 20, 5000, "the watcher's events");
  eq(got, Array.from({ length: 20 }, (_, i) => i + 1), "in order");
  // The join reply's seq is the last committed one; the rest arrive as events.
  await waitFor(() => s.seq + mine.length === 20, 5000, "the joiner's events");
  eq(mine, Array.from({ length: 20 - s.seq }, (_, i) => s.seq + i + 1), "the joiner's events follow its seq");
});

test("onUnrecovered fires for a join with since and a made-up epoch", async (t) => {
  const r = room("unrec");
  const pub = t.client(WS[1], { discover: false });
  for (let i = 1; i <= 3; i++) await pub.publish(r, i);
  const infos = [];
  const c = t.client(WS[0], { discover: false, onUnrecovered: (info) => infos.push(info) });
  const events = record(c, ["unrecovered"]);
  const sub = await c.join(r, { since: 2, epoch: "deadbeef-1" });
  eq(sub.recovered, false, "recovered:false");
  eq(infos.length, 1, "onUnrecovered called once");
  eq(infos[0], { room: r, since: 2, epoch: "deadbeef-1", seq: 3, newEpoch: sub.epoch }, "info");
  eq(events.unrecovered, infos, "the unrecovered event has the same info");
  const got = [];
  sub.on("message", (ev) => got.push(ev.data));
  // The new epoch's retained history is replayed and accepted, then live events follow.
  await pub.publish(r, 4);
  await waitFor(() => got.length === 4, 5000, "replay and live event");
  eq(got, [1, 2, 3, 4], "what follows is accepted");
  // A join with since in the right epoch is recovered and replays only what was missed.
  const c2 = t.client(WS[2], { discover: false });
  const sub2 = await c2.join(r, { since: 2, epoch: sub.epoch });
  eq(sub2.recovered, true, "recovered:true");
  const got2 = [];
  sub2.on("message", (ev) => got2.push(ev.data));
  await waitFor(() => got2.length === 2, 5000, "replay of 3 and 4");
  eq(got2, [3, 4], "replay");
});

/** Checks that `events` carry the payloads 1..n exactly once, in order, seq contiguous per epoch. */
function checkExactlyOnceInOrder(events, n, what) {
  const data = events.map((ev) => ev.data.n);
  const dupes = data.filter((x, i) => data.indexOf(x) !== i);
  const missing = [];
  for (let i = 1; i <= n; i++) if (!data.includes(i)) missing.push(i);
  assert(dupes.length === 0 && missing.length === 0,
    `${what}: ${data.length} events for ${n} messages; doubled ${JSON.stringify(dupes)}, missing ${JSON.stringify(missing)}`);
  eq(data, Array.from({ length: n }, (_, i) => i + 1), `${what}: in order`);
  const last = new Map();
  for (const ev of events) {
    if (last.has(ev.epoch)) assert(ev.seq === last.get(ev.epoch) + 1, `${what}: seq ${ev.seq} after ${last.get(ev.epoch)} in ${ev.epoch}`);
    last.set(ev.epoch, ev.seq);
  }
}

/** Publishes {n} one at a time until stopped; returns the last n published. */
function steadyPublisher(client, r, everyMs = 15) {
  let stop = false;
  let n = 0;
  let error = null;
  let acked = 0;
  const done = (async () => {
    while (!stop) {
      n++;
      try {
        await client.publish(r, { n });
        acked = n;
      } catch (e) {
        error = e;
        throw e;
      }
      await new Promise((res) => setTimeout(res, everyMs));
    }
    return n;
  })();
  done.catch(() => {});
  return {
    stop: () => { stop = true; return done; },
    count: () => n,
    toString: () => `publisher at ${n} (acked ${acked})${error ? ", failed: " + error.code + " " + error.message : ""}`,
  };
}

test("the subscriber's node is killed: it reconnects elsewhere and gets every message once", async (t) => {
  t.finally(() => control("heal"));
  const r = room("kill-sub");
  const pub = t.client(WS[2], { discover: false });
  const c = t.client(WS[0]); // the other nodes come from discovery
  const log = record(c, ["disconnected", "reconnecting", "connected", "resumed"]);
  await c.connect();
  eq(c.node, IDS[0], "on node 0");
  await waitFor(() => c._candidates().length === 3, 5000, "discovery of the other nodes");
  const sub = await c.join(r);
  const got = [];
  sub.on("message", (ev) => got.push(ev));
  const p = steadyPublisher(pub, r);
  await waitFor(() => got.length >= 10, 5000, "events before the kill");
  await control("kill", { node: 0 });
  await waitFor(() => c.state === "connected" && c.node !== IDS[0], 10000, "reconnected to another node");
  const at = p.count();
  await waitFor(() => got.length >= at + 10, 15000, "events after the reconnect");
  const n = await p.stop();
  await waitFor(() => got.length >= n, 10000, `all ${n} events`);
  await pub.ping(); // nothing more should come
  checkExactlyOnceInOrder(got, n, "subscriber");
  eq(log.disconnected[0].willReconnect, true, "disconnected, will reconnect");
  assert(log.resumed.length >= 1 && log.resumed.every((x) => x.recovered), `resumed: ${JSON.stringify(log.resumed)}`);
  await control("restart", { node: 0 });
  await control("wait_live", { count: 3 });
}, 45000);

test("the publisher's node is killed mid-stream: every publish resolves, none doubled", async (t) => {
  t.finally(() => control("heal"));
  const r = room("kill-pub");
  const recv = t.client(WS[1], { discover: false });
  const sub = await recv.join(r);
  const got = [];
  sub.on("message", (ev) => got.push(ev));
  const pub = t.client(WS[0], { backoff: { initialMs: 100 } });
  await pub.connect();
  await waitFor(() => pub._candidates().length === 3, 5000, "discovery");
  // Unacknowledged publishes when the connection dropped, and publishes made while it was down.
  let unackedAtDrop = -1;
  let madeWhileDown = 0;
  pub.on("disconnected", () => {
    if (unackedAtDrop < 0) unackedAtDrop = Array.from(pub._pending.values()).filter((e) => e.frame.op === "publish").length;
  });
  const promises = [];
  let n = 0;
  let firing = true;
  // Two publishes every few ms, not waiting for replies: some are always in flight.
  const firer = (async () => {
    while (firing) {
      for (let i = 0; i < 2; i++) {
        n++;
        if (pub.state !== "connected") madeWhileDown++;
        promises.push(pub.publish(r, { n }));
      }
      await new Promise((res) => setTimeout(res, 4));
    }
  })();
  await waitFor(() => got.length >= 20, 5000, "events before the kill");
  await control("kill", { node: 0 });
  await waitFor(() => pub.state === "connected" && pub.node !== IDS[0], 10000, "publisher reconnected");
  const at = n;
  await waitFor(() => n >= at + 20, 5000, "publishes after the reconnect");
  firing = false;
  await firer;
  const replies = await Promise.all(promises);
  eq(replies.length, n, "every publish resolved");
  await waitFor(() => got.length >= n, 10000, `all ${n} events`);
  await recv.ping();
  const data = got.map((ev) => ev.data.n);
  const dupes = data.filter((x, i) => data.indexOf(x) !== i);
  const missing = [];
  for (let i = 1; i <= n; i++) if (!data.includes(i)) missing.push(i);
  assert(dupes.length === 0 && missing.length === 0, `doubled ${JSON.stringify(dupes)}, missing ${JSON.stringify(missing)}`);
  eq(new Set(replies.map((x) => `${x.epoch}:${x.seq}`)).size, n, "every publish got its own seq");
  console.log(`kill-pub: ${n} publishes, ${unackedAtDrop} unacknowledged at the drop, ${madeWhileDown} made while down`);
  assert(unackedAtDrop + madeWhileDown > 0, "some publishes were re-sent or queued across the reconnect");
  await control("restart", { node: 0 });
  await control("wait_live", { count: 3 });
}, 45000);

test("SSE fallback: join, receive, resume across a kill; publish is unsupported", async (t) => {
  t.finally(() => control("heal"));
  const r = room("sse");
  const r2 = room("sse2");
  const pub = t.client(WS[2], { discover: false });
  const c = t.client([WS[0], WS[1]], { WebSocket: BrokenWebSocket, discover: false, backoff: FAST });
  const log = record(c, ["connected", "resumed", "disconnected", "error"]);
  const info = await c.connect();
  eq([info.transport, info.node], ["sse", null], "connected over SSE, no stream yet");
  const sub = await c.join(r);
  eq(sub.seq, 0, "joined over SSE");
  eq(c.node, IDS[0], "the stream is on node 0");
  const got = [];
  sub.on("message", (ev) => got.push(ev));
  eq((await rejects(c.publish(r, 1))).code, "unsupported_transport", "publish");
  eq((await rejects(c.history(r))).code, "unsupported_transport", "history");
  eq((await rejects(c.join(room("p"), { presence: true }))).code, "unsupported_transport", "presence join");
  eq((await rejects(c.join("bad room!"))).code, "bad_request", "invalid room");
  const p = steadyPublisher(pub, r);
  await waitFor(() => got.length >= 5, 5000, "events over SSE");
  // A second room re-opens the stream; the first continues without a gap.
  const sub2 = await c.join(r2);
  const got2 = [];
  sub2.on("message", (ev) => got2.push(ev.data));
  await pub.publish(r2, "two");
  await waitFor(() => got2.length === 1, 5000, "second room's event");
  await waitFor(() => got.length >= p.count() - 1 && got.length >= 10, 5000, "more events");
  await control("kill", { node: 0 });
  await waitFor(() => c.state === "connected" && c.node === IDS[1], 10000, "SSE on node 1");
  eq(c.transport, "sse", "still SSE (WebSocket tried first, failed)");
  const at = p.count();
  await waitFor(() => got.length >= at + 5, 15000, () => `events after the kill: got ${got.length}, wanted ${at + 5}; ${p}; ` +
    `client ${c.state} ${c.node} ${c.transport}; last ${JSON.stringify(got[got.length - 1])}`);
  const n = await p.stop();
  await waitFor(() => got.length >= n, 10000, `all ${n} events`);
  checkExactlyOnceInOrder(got, n, "SSE subscriber");
  assert(log.resumed.some((x) => x.room === r && x.recovered), `resumed: ${JSON.stringify(log.resumed)}`);
  await sub2.leave();
  await pub.publish(r2, "after leave");
  await pub.publish(r, { n: n + 1 });
  await waitFor(() => got.length === n + 1, 5000, "the first room still live after the leave");
  eq(got2, ["two"], "nothing from the left room");
  eq(log.error.length, 0, `no error events: ${log.error.map(String)}`);
  await control("restart", { node: 0 });
  await control("wait_live", { count: 3 });
}, 45000);

// Keep the drain last among the tests that stop nodes: a drained node leaves the others'
// *stable membership* at once and counts again only after the live set has been unchanged for
// 10 s (src/routing/quorum.rs); until then the cluster acts as a 2-node one, and killing its
// lowest-id node would fence the third (`unavailable`: "cannot reach a majority"). That is the
// server's quorum rule, not the client's doing, and /cluster does not show the stable
// membership, so there is no condition to wait for.
test("a draining node's reconnect hint is followed with nothing lost", async (t) => {
  t.finally(() => control("heal"));
  const r = room("drain");
  const pub = t.client(WS[2], { discover: false });
  const c = t.client([WS[1], WS[0], WS[2]]);
  const log = record(c, ["reconnect_hint", "connected", "disconnected"]);
  await c.connect();
  eq(c.node, IDS[1], "on node 1");
  const sub = await c.join(r);
  const got = [];
  sub.on("message", (ev) => got.push(ev));
  const p = steadyPublisher(pub, r);
  await waitFor(() => got.length >= 10, 5000, "events before the drain");
  await control("drain", { node: 1 });
  await waitFor(() => log.reconnect_hint.length >= 1, 10000, "reconnect hint");
  const hint = log.reconnect_hint[0];
  assert(hint.url && hint.url !== WS[1], `the hint names another node: ${JSON.stringify(hint)}`);
  await waitFor(() => c.state === "connected" && c.node !== IDS[1], 10000, "moved to another node");
  eq(c.url, hint.url, "connected where the hint said");
  const at = p.count();
  await waitFor(() => got.length >= at + 10, 15000, "events after the move");
  const n = await p.stop();
  await waitFor(() => got.length >= n, 10000, `all ${n} events`);
  checkExactlyOnceInOrder(got, n, "subscriber");
  await control("restart", { node: 1 });
  await control("wait_live", { count: 3 });
}, 45000);

test("auth: a valid token connects and its events carry user", async (t) => {
  assert(AUTH_WS && GOOD_TOKEN, "the runner passes the auth node and tokens");
  const r = room("auth");
  let calls = 0;
  const c = t.client(AUTH_WS, { discover: false, token: async () => { calls++; return GOOD_TOKEN; } });
  const sub = await c.join(r);
  const got = [];
  sub.on("message", (ev) => got.push(ev));
  await c.publish(r, "signed");
  await waitFor(() => got.length === 1, 5000, "own event");
  eq(got[0].user, "alice", "user on the event");
  eq(calls, 1, "the token function was called for the connection");
  // Over SSE the token goes in the stream's URL.
  const s = t.client(AUTH_WS, { discover: false, WebSocket: BrokenWebSocket, token: GOOD_TOKEN });
  const ssub = await s.join(r);
  eq([s.transport, ssub.seq], ["sse", 1], "joined over SSE with the token");
  const sgot = [];
  ssub.on("message", (ev) => sgot.push(ev));
  await c.publish(r, "to sse");
  await waitFor(() => sgot.length === 1, 5000, "event over SSE");
  eq([sgot[0].data, sgot[0].user], ["to sse", "alice"], "SSE event");
});

test("auth: a bad static token ends closed with unauthorized, no reconnect loop", async (t) => {
  assert(AUTH_WS && BAD_TOKEN, "the runner passes the auth node and tokens");
  const c = t.client(AUTH_WS, { discover: false, token: BAD_TOKEN, backoff: FAST });
  const log = record(c, ["error", "reconnecting", "disconnected", "connected"]);
  const joining = rejects(c.join(room("noauth")));
  await waitFor(() => c.state === "closed", 10000, "closed");
  eq(log.error.map((e) => e.code), ["unauthorized"], "one unauthorized error");
  const err = await joining;
  assert(err.code === "unauthorized", `the pending join fails: ${err.code}`);
  eq(log.reconnecting.length, 0, "no reconnect");
  eq(log.disconnected.map((d) => [d.code, d.willReconnect]), [[4401, false]], "disconnected 4401");
  // Over SSE: the stream is refused with HTTP 401 before it starts. EventSource does not say
  // why; the client asks again with fetch, which can read the refusal only from the node's own
  // origin (the node's refusals carry no CORS header). This page is on another origin, so its
  // fetch is a stand-in answering what the node answers.
  const refusal = { error: { code: "unauthorized", message: "token refused: bad signature" } };
  const sameOriginFetch = async (url) => {
    assert(url.includes("/sse?") && url.includes("token="), `diagnosis of the stream URL: ${url}`);
    return new Response(JSON.stringify(refusal), { status: 401, headers: { "Content-Type": "application/json" } });
  };
  const s = t.client(AUTH_WS, { discover: false, WebSocket: BrokenWebSocket, fetch: sameOriginFetch, token: BAD_TOKEN, backoff: FAST });
  const slog = record(s, ["error", "reconnecting"]);
  eq((await s.connect()).transport, "sse", "connected over SSE without a stream");
  const sjoin = rejects(s.join(room("noauth-sse")));
  await waitFor(() => s.state === "closed", 10000, "SSE client closed");
  eq((await sjoin).code, "unauthorized", "the join fails");
  eq(slog.error.map((e) => e.code), ["unauthorized"], "one unauthorized error (SSE)");
  eq(slog.reconnecting.length, 0, "no reconnect (SSE)");
  // Without a token at all (auth required): requests are refused with unauthorized.
  const anon = t.client(AUTH_WS, { discover: false });
  eq((await rejects(anon.join(room("anon")))).code, "unauthorized", "anonymous join");
});

run();
