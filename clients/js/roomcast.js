/**
 * roomcast.js — the browser client for roomcast (docs/protocol.md is the wire contract).
 *
 * Why it exists: the protocol makes "no lost and no doubled message" possible — resume with
 * `since`/`epoch`, idempotency keys on publish, reconnect hints from draining nodes — but only
 * if every client does the bookkeeping right. This module does it once: it queues requests
 * while disconnected and re-sends the ones in flight after a reconnect (a publish keeps its
 * key, so a re-send is never a duplicate), remembers each joined room's epoch and last seq and
 * re-joins with them, drops events it already delivered, reconnects with jittered backoff over
 * the cluster's nodes (following a draining node's hint), and falls back to Server-Sent Events
 * when WebSockets cannot be opened.
 *
 * One self-contained ES2020 module: no imports, no build step, no dependencies, so a page can
 * load it as it is (`<script type="module">`). Types: roomcast.d.ts. Usage: README.md.
 */

const DEFAULT_BACKOFF = Object.freeze({ initialMs: 250, maxMs: 10000, factor: 2, jitter: 0.5 });
const ROOM_RE = /^[A-Za-z0-9_.:-]{1,128}$/;
/** Close codes where reconnecting would only repeat the problem. */
const FINAL_CLOSE_CODES = new Set([1002, 1007, 1008, 1009, 4403]);
/** A connection that lasted this long resets the backoff attempt counter. */
const STABLE_MS = 5000;
/** Bound on opening one transport (WebSocket open + welcome, or an SSE stream's welcome). */
const OPEN_TIMEOUT_MS = 10000;
/** A reconnect hint is followed after a random delay up to this, spreading a node's clients. */
const HINT_SPREAD_MS = 500;
/** Per room, the last seq is kept for this many recent epochs (a room can return to one). */
const SEEN_EPOCHS = 16;

/** An error with a stable `code` (the server's error codes, or the client's own). */
export class RoomcastError extends Error {
  constructor(code, message, request) {
    super(message || code);
    this.name = "RoomcastError";
    this.code = code;
    this.request = request;
  }
}

/**
 * The delay before reconnect attempt `attempt` (0-based): `min(maxMs, initialMs * factor^attempt)`
 * scaled by a random factor in `[1 - jitter, 1]`. Pure: pass `random` to make it deterministic.
 */
export function backoffDelay(attempt, backoff, random = Math.random) {
  const b = Object.assign({}, DEFAULT_BACKOFF, backoff || {});
  const n = Math.max(0, Math.floor(Number(attempt)) || 0);
  const base = Math.min(b.maxMs, b.initialMs * Math.pow(b.factor, n));
  const jitter = Math.min(1, Math.max(0, Number(b.jitter) || 0));
  return base * (1 - jitter * random());
}

function reportListenerError(e) {
  if (typeof globalThis.reportError === "function") globalThis.reportError(e);
  else setTimeout(() => { throw e; }, 0);
}

class Emitter {
  constructor() {
    this._listeners = new Map();
  }
  on(event, fn) {
    if (typeof fn !== "function") throw new TypeError("listener must be a function");
    let set = this._listeners.get(event);
    if (!set) this._listeners.set(event, (set = new Set()));
    // Wrapped, so the same function can be added twice and removed once per `on`.
    const entry = { fn };
    set.add(entry);
    return () => { set.delete(entry); };
  }
  _emit(event, arg) {
    const set = this._listeners.get(event);
    if (!set) return;
    for (const entry of Array.from(set)) {
      if (!set.has(entry)) continue;
      try {
        entry.fn(arg);
      } catch (e) {
        reportListenerError(e);
      }
    }
  }
}

/** `ws://host:port/ws` → `http://host:port` (wss → https; a trailing `/ws` dropped). */
function httpBase(wsUrl) {
  const u = new URL(wsUrl);
  const scheme = u.protocol === "wss:" || u.protocol === "https:" ? "https:" : "http:";
  const path = u.pathname.replace(/\/ws\/?$/, "").replace(/\/$/, "");
  return `${scheme}//${u.host}${path}`;
}

function withToken(url, token) {
  if (token === undefined || token === null || token === "") return url;
  const u = new URL(url);
  u.searchParams.set("token", String(token));
  return u.toString();
}

function randomId() {
  const c = globalThis.crypto;
  if (c && typeof c.getRandomValues === "function") {
    const b = new Uint8Array(8);
    c.getRandomValues(b);
    return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  }
  return Math.random().toString(16).slice(2, 10) + Math.random().toString(16).slice(2, 10);
}

/** One joined room, as `join` resolves it. Events: "message", "presence" (this room's only). */
class Subscription {
  constructor(client, room) {
    this.room = room;
    /** The room's seq and epoch from the latest join reply (first join, or a re-join). */
    this.seq = 0;
    this.epoch = null;
    /** From the join reply when the join had `since`. */
    this.recovered = undefined;
    this._client = client;
    this._emitter = new Emitter();
  }
  on(event, fn) {
    return this._emitter.on(event, fn);
  }
  leave() {
    return this._client.leave(this.room);
  }
  /** Where delivery stands: the epoch and the last seq delivered (or resumed from). */
  get position() {
    const rs = this._client._rooms.get(this.room);
    if (!rs || rs.sub !== this || rs.epoch === null) return null;
    return { epoch: rs.epoch, seq: rs.seen.get(rs.epoch) || 0 };
  }
}

/**
 * The client. `urls`: one WebSocket URL or several (`ws://host:port/ws`), the first preferred.
 * See README.md for the options, methods and events.
 */
export class RoomcastClient {
  constructor(urls, options) {
    const list = (Array.isArray(urls) ? urls : [urls]).filter((u) => typeof u === "string" && u);
    if (list.length === 0) throw new TypeError("RoomcastClient needs at least one WebSocket URL");
    const o = options || {};
    this._opts = {
      token: o.token,
      transports: Array.isArray(o.transports) && o.transports.length ? o.transports.slice() : ["websocket", "sse"],
      discover: o.discover !== false,
      backoff: Object.assign({}, DEFAULT_BACKOFF, o.backoff || {}),
      requestTimeoutMs: o.requestTimeoutMs ?? 15000,
      connectTimeoutMs: o.connectTimeoutMs ?? 20000,
      retryUnavailable: o.retryUnavailable ?? 3,
      onUnrecovered: typeof o.onUnrecovered === "function" ? o.onUnrecovered : null,
      WebSocket: o.WebSocket || null,
      EventSource: o.EventSource || null,
      fetch: o.fetch || null,
    };
    this._emitter = new Emitter();
    this._given = Array.from(new Set(list));
    this._discovered = [];
    this._nextIndex = 0; // candidate to try next
    this._hint = null; // a reconnect hint's URL, tried next
    this._state = "idle";
    this._conn = null; // the current connection (or attempt)
    this._everConnected = false;
    this._rooms = new Map(); // room -> room state
    this._pending = new Map(); // request id -> entry, in creation order
    this._nextId = 1;
    this._clientId = randomId();
    this._keyCounter = 0;
    this._attempts = 0; // backoff attempt counter
    this._reconnectTimer = null;
    this._connectTimer = null;
    this._connectPromise = null;
    this._connectWaiter = null;
    this._reopenScheduled = false;
  }

  // ---- public API ----------------------------------------------------------------------

  get state() { return this._state; }
  get node() { return this._connected() ? this._conn.node : null; }
  get conn() { return this._connected() ? this._conn.conn : null; }
  get transport() { return this._connected() ? this._conn.transport : null; }
  get url() { return this._connected() ? this._conn.url : null; }
  /** This instance's random id, the prefix of its generated idempotency keys. */
  get clientId() { return this._clientId; }

  on(event, fn) {
    return this._emitter.on(event, fn);
  }

  connect() {
    if (this._state === "closed") {
      return Promise.reject(new RoomcastError("closed", "the client is closed"));
    }
    if (!this._connectPromise) {
      this._connectPromise = new Promise((resolve, reject) => {
        this._connectWaiter = { resolve, reject };
      });
      this._connectTimer = setTimeout(() => {
        this._connectTimer = null;
        if (!this._everConnected && this._state !== "closed") {
          // connect() and the queued requests carry it: no `error` event.
          this._shutdown(new RoomcastError("connect_timeout",
            `no connection within ${this._opts.connectTimeoutMs} ms`));
        }
      }, this._opts.connectTimeoutMs);
      this._setState("connecting");
      this._connectOnce();
    }
    return this._connectPromise;
  }

  join(room, options) {
    const o = options || {};
    const existing = this._rooms.get(room);
    if (existing) {
      if (existing.status === "leaving" && existing.leavePromise) {
        return existing.leavePromise.catch(() => {}).then(() => this.join(room, o));
      }
      return Promise.reject(new RoomcastError("bad_request", `already joined to room ${room}`,
        { op: "join", room }));
    }
    const frame = { op: "join", room };
    if (o.since !== undefined && o.since !== null) {
      frame.since = o.since;
      if (o.epoch) frame.epoch = o.epoch;
    }
    if (o.token) frame.token = o.token;
    if (o.presence) frame.presence = true;
    if (o.presenceEvents) frame.presence_events = true;
    const rs = {
      room,
      status: "joining",
      sub: new Subscription(this, room),
      epoch: null,
      seen: new Map(),
      opts: { token: o.token, presence: !!o.presence, presenceEvents: !!o.presenceEvents },
      joinEntry: null,
      joinPromise: null,
      leaveEntry: null,
      leavePromise: null,
    };
    this._rooms.set(room, rs);
    const p = this._request(frame, {
      room: rs,
      onOk: (reply) => {
        this._applyJoinReply(rs, reply, frame.since, frame.epoch, false);
        rs.status = "joined";
        return rs.sub;
      },
      onFail: () => {
        if (this._rooms.get(room) === rs && rs.status === "joining") this._rooms.delete(room);
      },
    }, (e) => { rs.joinEntry = e; });
    rs.joinPromise = p;
    return p;
  }

  leave(room) {
    const rs = this._rooms.get(room);
    if (rs && rs.status === "joining" && rs.joinPromise) {
      return rs.joinPromise.then(() => this.leave(room), () => undefined);
    }
    if (rs && rs.status === "leaving" && rs.leavePromise) return rs.leavePromise;
    if (rs) rs.status = "leaving";
    const p = this._request({ op: "leave", room }, {
      room: rs || null,
      onOk: () => {
        if (rs && this._rooms.get(room) === rs) this._rooms.delete(room);
        return undefined;
      },
      onFail: (err) => {
        // Not left (e.g. still `unavailable` after the retries): still joined.
        if (rs && this._rooms.get(room) === rs && rs.status === "leaving") {
          rs.status = "joined";
          rs.leavePromise = null;
          rs.leaveEntry = null;
        }
        return err;
      },
    }, (e) => { if (rs) rs.leaveEntry = e; });
    if (rs) rs.leavePromise = p;
    return p;
  }

  publish(room, data, options) {
    const o = options || {};
    const key = o.key !== undefined && o.key !== null ? String(o.key)
      : `${this._clientId}-${++this._keyCounter}`;
    const frame = { op: "publish", room, data: data === undefined ? null : data, key };
    return this._request(frame, {
      onOk: (r) => ({ room: r.room, seq: r.seq, epoch: r.epoch }),
    });
  }

  history(room, options) {
    const o = options || {};
    const frame = { op: "history", room, since: o.since ?? 0 };
    if (o.limit !== undefined && o.limit !== null) frame.limit = o.limit;
    return this._request(frame, {
      onOk: (r) => ({ room: r.room, messages: r.messages, seq: r.seq, epoch: r.epoch, recovered: r.recovered }),
    });
  }

  presence(room) {
    return this._request({ op: "presence", room }, {
      onOk: (r) => ({ room: r.room, members: r.members }),
    });
  }

  ping() {
    return this._request({ op: "ping" }, { onOk: (r) => ({ ts: r.ts }) });
  }

  close() {
    if (this._state === "closed") return;
    const wasConnected = this._connected();
    this._shutdown(new RoomcastError("closed", "the client was closed"));
    if (wasConnected) {
      this._emit("disconnected", { code: 1000, reason: "client closed", willReconnect: false });
    }
  }

  // ---- internals: state, events ---------------------------------------------------------

  _emit(event, arg) {
    this._emitter._emit(event, arg);
  }

  _setState(s) {
    if (this._state === s) return;
    this._state = s;
    this._emit("state", s);
  }

  _connected() {
    return this._state === "connected" && this._conn !== null && this._conn.connected;
  }

  _candidates() {
    const out = this._given.slice();
    for (const u of this._discovered) if (!out.includes(u)) out.push(u);
    return out;
  }

  async _token() {
    const t = this._opts.token;
    if (typeof t === "function") return await t();
    return t;
  }

  /** Ends everything: state `closed`, every pending request rejected with `err`'s code. */
  _shutdown(err) {
    this._setState("closed");
    if (this._reconnectTimer) clearTimeout(this._reconnectTimer);
    if (this._connectTimer) clearTimeout(this._connectTimer);
    this._reconnectTimer = null;
    this._connectTimer = null;
    if (this._conn) this._dropConn(this._conn);
    this._conn = null;
    for (const e of Array.from(this._pending.values())) {
      if (e.internal) this._forget(e);
      else this._fail(e, new RoomcastError(err.code, err.message, e.request));
    }
    if (this._connectWaiter) {
      const w = this._connectWaiter;
      this._connectWaiter = null;
      w.reject(err);
    }
  }

  // ---- internals: requests --------------------------------------------------------------

  /**
   * Creates a pending request. `h`: `onOk(reply) -> value`, `onFail(err)`. (Resume joins are
   * entries too, made by `_resume`: `internal`, no promise, dropped with their connection.)
   */
  _request(frame, h, created) {
    if (this._state === "closed") {
      const err = new RoomcastError("closed", "the client is closed", Object.assign({}, frame));
      if (h.onFail) h.onFail(err);
      return Promise.reject(err);
    }
    return new Promise((resolve, reject) => {
      const id = this._nextId++;
      const e = Object.assign({ id, frame, resolve, reject, sent: false, waiting: false, retries: 0,
        timer: null, retryTimer: null }, h);
      e.request = Object.assign({ id }, frame);
      this._pending.set(id, e);
      this._armTimer(e);
      if (created) created(e);
      if (this._state === "idle") this.connect().catch(() => {});
      if (this._connected()) this._flush();
    });
  }

  _armTimer(e) {
    if (e.timer) clearTimeout(e.timer);
    e.timer = setTimeout(() => {
      e.timer = null;
      if (!this._pending.has(e.id)) return;
      if (e.internal) {
        // A resume join the server did not answer: start over on a fresh connection.
        const c = this._conn;
        if (c && c.connected) this._lost(c, 4000, "resume timeout");
        return;
      }
      this._fail(e, new RoomcastError("timeout", `no reply within ${this._opts.requestTimeoutMs} ms`, e.request));
    }, this._opts.requestTimeoutMs);
  }

  _forget(e) {
    this._pending.delete(e.id);
    if (e.timer) clearTimeout(e.timer);
    if (e.retryTimer) clearTimeout(e.retryTimer);
    e.timer = e.retryTimer = null;
  }

  _settle(e, reply) {
    if (!this._pending.has(e.id)) return;
    this._forget(e);
    let value;
    try {
      value = e.onOk ? e.onOk(reply) : reply;
    } catch (err) {
      if (e.reject) e.reject(err);
      return;
    }
    if (e.resolve) e.resolve(value);
  }

  _fail(e, err) {
    if (!this._pending.has(e.id)) return;
    this._forget(e);
    if (e.onFail) e.onFail(err);
    if (e.reject) e.reject(err);
  }

  /** Sends every request not yet sent on the current connection, in creation order. */
  _flush() {
    const c = this._conn;
    if (!c || !c.connected) return;
    if (c.transport === "websocket") {
      for (const e of Array.from(this._pending.values())) {
        if (!e.sent && !e.waiting && this._pending.has(e.id)) this._sendWs(c, e);
      }
      return;
    }
    // SSE: joins and leaves change the stream's room list; nothing else can be sent.
    let reopen = false;
    for (const e of Array.from(this._pending.values())) {
      if (e.sent || e.waiting || !this._pending.has(e.id)) continue;
      const op = e.frame.op;
      if (op === "join") {
        if (e.frame.token || e.frame.presence || e.frame.presence_events) {
          this._fail(e, new RoomcastError("unsupported_transport",
            "per-room tokens and presence need the WebSocket transport", e.request));
          continue;
        }
        if (!ROOM_RE.test(e.frame.room)) {
          this._fail(e, new RoomcastError("bad_request", `invalid room: ${JSON.stringify(e.frame.room)}`, e.request));
          continue;
        }
        e.sent = true;
        if (!c.stream || !c.stream.rooms.includes(e.frame.room)) reopen = true;
      } else if (op === "leave") {
        const rs = this._rooms.get(e.frame.room);
        if (!rs || rs.leaveEntry !== e) {
          this._fail(e, new RoomcastError("bad_request", `not joined to room ${e.frame.room}`, e.request));
          continue;
        }
        this._rooms.delete(rs.room);
        this._settle(e, { room: rs.room });
        reopen = true;
      } else {
        this._fail(e, new RoomcastError("unsupported_transport",
          `${op} needs the WebSocket transport (connected over SSE)`, e.request));
      }
    }
    if (reopen) this._sseReopenSoon();
  }

  _sendWs(c, e) {
    const frame = e.build ? e.build() : e.frame;
    e.request = Object.assign({ id: e.id }, frame);
    const text = JSON.stringify(Object.assign({ op: frame.op, id: e.id }, frame));
    e.sent = true;
    try {
      c.ws.send(text);
    } catch (_) {
      e.sent = false; // the close event follows; re-sent after the reconnect
    }
  }

  _onReply(f) {
    if (f.id === null || f.id === undefined) {
      // Not an answer to a request: a refused URL token, an expired token, a binary frame.
      if (!f.ok && f.error) {
        const err = new RoomcastError(f.error.code, f.error.message);
        if (this._conn) this._conn.lastError = err;
        this._emit("error", err);
      }
      return;
    }
    const e = this._pending.get(f.id);
    if (!e || !e.sent) return;
    if (f.ok) {
      this._settle(e, f);
      return;
    }
    const code = (f.error && f.error.code) || "internal";
    const message = (f.error && f.error.message) || code;
    if (code === "unavailable" && (e.internal || e.retries < this._opts.retryUnavailable)) {
      this._retryLater(e);
      return;
    }
    const err = new RoomcastError(code, message, e.request);
    if (e.internal) {
      this._forget(e);
      if (e.onFail) e.onFail(err);
      return;
    }
    this._fail(e, err);
  }

  /** `unavailable`: send again after a backoff delay (a publish keeps its key). */
  _retryLater(e) {
    const delay = backoffDelay(e.retries, this._opts.backoff);
    e.retries++;
    e.sent = false;
    e.waiting = true;
    this._armTimer(e);
    e.retryTimer = setTimeout(() => {
      e.retryTimer = null;
      e.waiting = false;
      if (this._pending.has(e.id)) this._flush();
    }, delay);
  }

  // ---- internals: rooms and events ------------------------------------------------------

  /**
   * Adopts a join reply's position. `since`/`epoch`: what the join sent. With `since`, the
   * replay that follows starts after `since` (recovered), or the reply's epoch is new to us and
   * its whole retained history follows, or `since` is beyond the room's seq (nothing follows).
   */
  _applyJoinReply(rs, reply, since, epoch, resumed) {
    const hadSince = since !== undefined && since !== null;
    let seq;
    if (!hadSince) seq = reply.seq;
    else if (reply.recovered) seq = since;
    else if (epoch && epoch !== reply.epoch) seq = 0;
    else seq = Math.min(since, reply.seq);
    rs.epoch = reply.epoch;
    const prev = rs.seen.get(reply.epoch);
    this._markSeen(rs, reply.epoch, prev !== undefined ? Math.max(prev, seq) : seq);
    rs.sub.seq = reply.seq;
    rs.sub.epoch = reply.epoch;
    if (hadSince) rs.sub.recovered = reply.recovered;
    if (resumed) {
      this._emit("resumed", { room: rs.room, recovered: reply.recovered, seq: reply.seq, epoch: reply.epoch });
    }
    if (hadSince && reply.recovered === false) {
      const info = { room: rs.room, since, epoch: epoch ?? null, seq: reply.seq, newEpoch: reply.epoch };
      this._emit("unrecovered", info);
      if (this._opts.onUnrecovered) {
        try {
          this._opts.onUnrecovered(info);
        } catch (err) {
          reportListenerError(err);
        }
      }
    }
  }

  _markSeen(rs, epoch, seq) {
    rs.seen.delete(epoch); // re-inserted last: the map's order is recency
    rs.seen.set(epoch, seq);
    while (rs.seen.size > SEEN_EPOCHS) rs.seen.delete(rs.seen.keys().next().value);
  }

  _onEvent(f) {
    const rs = this._rooms.get(f.room);
    if (!rs || typeof f.seq !== "number" || typeof f.epoch !== "string") return;
    const last = rs.seen.get(f.epoch);
    if (last !== undefined && f.seq <= last) return; // already delivered
    this._markSeen(rs, f.epoch, f.seq);
    rs.epoch = f.epoch;
    this._emit("message", f);
    rs.sub._emitter._emit("message", f);
  }

  _onPresence(f) {
    this._emit("presence", f);
    const rs = this._rooms.get(f.room);
    if (rs) rs.sub._emitter._emit("presence", f);
  }

  /** The join that resumes a room on a new WebSocket connection. */
  _resume(c, rs) {
    let sent = null;
    const build = () => {
      const frame = { op: "join", room: rs.room };
      if (rs.epoch !== null) {
        frame.since = rs.seen.get(rs.epoch) || 0;
        frame.epoch = rs.epoch;
      }
      if (rs.opts.token) frame.token = rs.opts.token;
      if (rs.opts.presence) frame.presence = true;
      if (rs.opts.presenceEvents) frame.presence_events = true;
      sent = frame;
      return frame;
    };
    const id = this._nextId++;
    const e = {
      id, internal: true, sent: false, waiting: false, retries: 0, timer: null, retryTimer: null,
      frame: { op: "join", room: rs.room }, build, request: null,
      onOk: (reply) => {
        if (this._rooms.get(rs.room) !== rs) return;
        this._applyJoinReply(rs, reply, sent.since, sent.epoch, true);
      },
      onFail: (err) => {
        if (this._rooms.get(rs.room) !== rs) return;
        this._rooms.delete(rs.room);
        this._emit("error", err);
      },
    };
    this._pending.set(id, e);
    this._armTimer(e);
    this._sendWs(c, e);
  }

  // ---- internals: connecting ------------------------------------------------------------

  _pickUrl() {
    if (this._hint) {
      const u = this._hint;
      this._hint = null;
      return u;
    }
    const cands = this._candidates();
    return cands[this._nextIndex % cands.length];
  }

  async _connectOnce() {
    this._reconnectTimer = null;
    if (this._state === "closed") return;
    const url = this._pickUrl();
    const c = {
      url, transport: null, ws: null, stream: null, connected: false, dead: false,
      node: null, conn: null, heartbeatMs: null, connectedAt: 0, lastError: null, token: undefined,
      hintTimer: null, openTimer: null,
    };
    this._conn = c;
    try {
      c.token = await this._token();
    } catch (err) {
      if (c.dead || this._conn !== c) return;
      this._emit("error", new RoomcastError("unauthorized", `the token function failed: ${err && err.message}`));
      this._conn = null;
      this._scheduleReconnect(url);
      return;
    }
    if (c.dead || this._conn !== c) return;
    this._tryTransport(c, 0);
  }

  _tryTransport(c, i) {
    if (c.dead || this._conn !== c) return;
    const t = this._opts.transports[i];
    if (t === undefined) {
      this._conn = null;
      c.dead = true;
      this._scheduleReconnect(c.url);
    } else if (t === "websocket") {
      this._openWs(c, () => this._tryTransport(c, i + 1));
    } else if (t === "sse") {
      this._openSseConn(c, () => this._tryTransport(c, i + 1));
    } else {
      this._tryTransport(c, i + 1);
    }
  }

  _openWs(c, fallback) {
    const WS = this._opts.WebSocket || globalThis.WebSocket;
    if (!WS) {
      fallback();
      return;
    }
    let ws;
    try {
      ws = new WS(withToken(c.url, c.token));
    } catch (_) {
      fallback();
      return;
    }
    c.transport = "websocket";
    c.ws = ws;
    let opened = false;
    const stale = () => c.dead || this._conn !== c || c.ws !== ws;
    c.openTimer = setTimeout(() => {
      c.openTimer = null;
      if (stale() || c.connected) return;
      // No welcome in time: give up on this socket.
      detach();
      try { ws.close(); } catch (_) { /* ignore */ }
      c.ws = null;
      if (!opened) fallback();
      else this._lost(c, 4000, "no welcome");
    }, OPEN_TIMEOUT_MS);
    const detach = () => {
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    };
    ws.onopen = () => {
      if (stale()) return;
      opened = true;
    };
    ws.onerror = () => {};
    ws.onmessage = (ev) => {
      if (stale()) return;
      let f;
      try {
        f = JSON.parse(ev.data);
      } catch (_) {
        return;
      }
      if (f && typeof f === "object") this._onFrame(c, f);
    };
    ws.onclose = (ev) => {
      if (stale()) return;
      detach();
      if (c.openTimer) clearTimeout(c.openTimer);
      c.openTimer = null;
      c.ws = null;
      if (!opened) fallback();
      else this._lost(c, ev.code, ev.reason || "");
    };
  }

  /** A frame from the server (WebSocket; SSE events are mapped onto the same shapes). */
  _onFrame(c, f) {
    if ("ok" in f) {
      this._onReply(f);
      return;
    }
    switch (f.type) {
      case "welcome":
        c.node = f.node ?? null;
        c.conn = f.conn ?? null;
        c.heartbeatMs = f.heartbeat_ms ?? null;
        if (!c.connected) this._onConnected(c);
        break;
      case "message":
        this._onEvent(f);
        break;
      case "presence":
        this._onPresence(f);
        break;
      case "reconnect":
        this._onHint(c, f);
        break;
      case "disconnect":
        c.serverDisconnect = true;
        this._emit("server_disconnect", { reason: f.reason ?? "" });
        break;
      default:
        break; // unknown types are ignored, as the protocol asks
    }
  }

  _onConnected(c) {
    if (c.openTimer) clearTimeout(c.openTimer);
    c.openTimer = null;
    c.connected = true;
    c.connectedAt = Date.now();
    this._everConnected = true;
    if (this._connectTimer) {
      clearTimeout(this._connectTimer);
      this._connectTimer = null;
    }
    const cands = this._candidates();
    const i = cands.indexOf(c.url);
    if (i >= 0) this._nextIndex = i;
    this._state = "connected"; // announced below, once the rooms are on their way
    // Rooms being left need no leave on a connection that never joined them.
    for (const rs of Array.from(this._rooms.values())) {
      if (rs.status !== "leaving") continue;
      this._rooms.delete(rs.room);
      if (rs.leaveEntry) this._settle(rs.leaveEntry, { room: rs.room });
    }
    if (c.transport === "websocket") {
      for (const rs of this._rooms.values()) if (rs.status === "joined") this._resume(c, rs);
    }
    this._flush();
    this._emit("state", "connected");
    const info = { node: c.node, conn: c.conn, transport: c.transport, url: c.url };
    this._emit("connected", Object.assign({ heartbeatMs: c.heartbeatMs }, info));
    if (this._connectWaiter) {
      const w = this._connectWaiter;
      this._connectWaiter = null;
      w.resolve(info);
    }
    this._discover(c.url);
  }

  async _discover(url) {
    if (!this._opts.discover) return;
    const f = this._opts.fetch || globalThis.fetch;
    if (typeof f !== "function") return;
    try {
      const r = await f(`${httpBase(url)}/cluster`, { cache: "no-store" });
      if (!r.ok) return;
      const body = await r.json();
      const found = [];
      for (const m of (body && body.members) || []) {
        if (m && m.live && !m.draining && typeof m.ws === "string" && m.ws) found.push(m.ws);
      }
      if (this._state !== "closed") this._discovered = found;
    } catch (_) {
      // Discovery is a bonus: the given URLs still work.
    }
  }

  _onHint(c, f) {
    const url = typeof f.url === "string" && f.url ? f.url : null;
    this._emit("reconnect_hint", { url, reason: f.reason ?? "" });
    if (url && !this._candidates().includes(url)) this._discovered.push(url);
    this._hint = url;
    c.hinted = true;
    if (c.hintTimer) return;
    const spread = Math.random() * HINT_SPREAD_MS;
    c.hintTimer = setTimeout(() => {
      c.hintTimer = null;
      if (c.dead || this._conn !== c) return;
      this._lost(c, 1001, f.reason || "reconnect hint", true);
    }, spread);
  }

  _dropConn(c) {
    c.dead = true;
    if (c.openTimer) clearTimeout(c.openTimer);
    if (c.hintTimer) clearTimeout(c.hintTimer);
    c.openTimer = c.hintTimer = null;
    if (c.ws) {
      const ws = c.ws;
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
      try { ws.close(1000); } catch (_) { /* ignore */ }
      c.ws = null;
    }
    if (c.stream) {
      this._closeStream(c.stream);
      c.stream = null;
    }
  }

  /**
   * A connection (or an attempt that got as far as opening) ended with `code`. `immediate`:
   * reconnect at once (a hint was followed after its random delay already).
   */
  _lost(c, code, reason, immediate) {
    if (c.dead) return;
    const wasConnected = c.connected;
    this._dropConn(c);
    if (this._conn === c) this._conn = null;
    if (this._state === "closed") return;
    // Requests in flight are sent again on the next connection; resume joins are rebuilt.
    for (const e of Array.from(this._pending.values())) {
      if (e.internal) this._forget(e);
      else if (!e.waiting) e.sent = false;
    }
    if (wasConnected && Date.now() - c.connectedAt >= STABLE_MS) this._attempts = 0;
    const staticToken = typeof this._opts.token !== "function";
    let finalErr = null;
    if (code === 4401 && staticToken) {
      finalErr = c.lastError && c.lastError.code === "unauthorized"
        ? c.lastError : new RoomcastError("unauthorized", `closed by the server: 4401 ${reason}`);
      if (finalErr !== c.lastError) this._emit("error", finalErr);
    } else if (FINAL_CLOSE_CODES.has(code)) {
      finalErr = new RoomcastError("closed", `closed by the server: ${code} ${reason}`.trim());
      if (code !== 4403) this._emit("error", finalErr);
    }
    if (finalErr) {
      this._shutdown(finalErr);
      this._emit("disconnected", { code, reason, willReconnect: false });
      return;
    }
    if (wasConnected) {
      this._setState("reconnecting");
      this._emit("disconnected", { code, reason, willReconnect: true });
    }
    this._scheduleReconnect(c.url, immediate);
  }

  _scheduleReconnect(fromUrl, immediate) {
    if (this._state === "closed") return;
    const cands = this._candidates();
    const i = cands.indexOf(fromUrl);
    this._nextIndex = i >= 0 ? (i + 1) % cands.length : (this._nextIndex + 1) % cands.length;
    let delay;
    let attempt;
    if (this._hint) {
      attempt = 0;
      delay = immediate ? 0 : Math.random() * HINT_SPREAD_MS;
    } else {
      attempt = this._attempts++;
      delay = backoffDelay(attempt, this._opts.backoff);
    }
    this._setState(this._everConnected ? "reconnecting" : "connecting");
    const next = this._hint || cands[this._nextIndex];
    this._emit("reconnecting", { attempt: attempt + 1, delayMs: delay, url: next });
    if (this._reconnectTimer) clearTimeout(this._reconnectTimer);
    this._reconnectTimer = setTimeout(() => this._connectOnce(), delay);
  }

  // ---- internals: SSE -------------------------------------------------------------------

  /** The rooms an SSE stream should carry: joined ones, and joins not refused yet. */
  _sseRooms() {
    const out = [];
    for (const rs of this._rooms.values()) {
      if (rs.status === "joined") out.push(rs);
      else if (rs.status === "joining" && rs.joinEntry && this._pending.has(rs.joinEntry.id)) {
        const fr = rs.joinEntry.frame;
        if (!fr.token && !fr.presence && !fr.presence_events && ROOM_RE.test(rs.room)) out.push(rs);
      }
    }
    return out;
  }

  /** An SSE connection attempt: a stream with the rooms, or connected without one (no rooms). */
  _openSseConn(c, fallback) {
    const ES = this._opts.EventSource || globalThis.EventSource;
    if (!ES) {
      fallback();
      return;
    }
    c.transport = "sse";
    const rooms = this._sseRooms();
    if (rooms.length === 0) {
      // The server refuses an empty room list: connected, the stream opens at the first join.
      this._onConnected(c);
      return;
    }
    this._openStream(c, rooms, c.token, fallback, this._everConnected);
  }

  _sseReopenSoon() {
    if (this._reopenScheduled) return;
    this._reopenScheduled = true;
    Promise.resolve().then(() => {
      this._reopenScheduled = false;
      this._sseReopen();
    });
  }

  /** A joined SSE connection's room list changed: replace its stream (positions carry over). */
  async _sseReopen() {
    const c = this._conn;
    if (!c || !c.connected || c.transport !== "sse" || c.dead) return;
    if (c.stream) {
      this._closeStream(c.stream);
      c.stream = null;
    }
    const rooms = this._sseRooms();
    if (rooms.length === 0) return;
    let token;
    try {
      token = await this._token();
    } catch (err) {
      token = c.token;
    }
    if (c.dead || this._conn !== c || c.stream) return;
    c.token = token;
    this._openStream(c, this._sseRooms(), token, null, false);
  }

  /** Opens an SSE stream for `roomStates`; `resume`: it resumes rooms after a reconnect. */
  _openStream(c, roomStates, token, fallback, resume) {
    const ES = this._opts.EventSource || globalThis.EventSource;
    const sent = new Map();
    const since = [];
    for (const rs of roomStates) {
      let pos = null;
      if (rs.status === "joined" && rs.epoch !== null) {
        pos = { since: rs.seen.get(rs.epoch) || 0, epoch: rs.epoch };
      } else if (rs.status === "joining" && rs.joinEntry && rs.joinEntry.frame.since !== undefined) {
        pos = { since: rs.joinEntry.frame.since, epoch: rs.joinEntry.frame.epoch };
      }
      sent.set(rs.room, pos);
      if (pos) since.push(`${rs.room}:${pos.epoch || ""}:${pos.since}`);
    }
    const rooms = roomStates.map((rs) => rs.room);
    const q = new URLSearchParams();
    q.set("rooms", rooms.join(","));
    if (since.length) q.set("since", since.join(","));
    if (token !== undefined && token !== null && token !== "") q.set("token", String(token));
    const url = `${httpBase(c.url)}/sse?${q.toString()}`;
    let es;
    try {
      es = new ES(url);
    } catch (_) {
      if (fallback) fallback();
      else this._lost(c, 1006, "EventSource failed");
      return;
    }
    const s = { es, url, rooms, sent, resume, joined: new Set(), errors: [], welcomed: false, closed: false };
    c.stream = s;
    const live = () => !s.closed && !c.dead && c.stream === s && this._conn === c;
    const data = (ev) => {
      try {
        return JSON.parse(ev.data);
      } catch (_) {
        return null;
      }
    };
    s.timer = setTimeout(() => {
      if (!live() || s.welcomed) return;
      this._closeStream(s);
      c.stream = null;
      if (!c.connected && fallback) fallback();
      else this._lost(c, 4000, "no welcome");
    }, OPEN_TIMEOUT_MS);
    es.onmessage = (ev) => {
      if (!live()) return;
      const f = data(ev);
      if (f && f.type === "message") this._onEvent(f);
    };
    es.addEventListener("welcome", (ev) => {
      if (!live()) return;
      const f = data(ev);
      if (!f) return;
      s.welcomed = true;
      clearTimeout(s.timer);
      c.node = f.node ?? null;
      c.conn = f.conn ?? null;
      c.heartbeatMs = f.heartbeat_ms ?? null;
      if (!c.connected) this._onConnected(c);
    });
    es.addEventListener("joined", (ev) => {
      if (!live()) return;
      const f = data(ev);
      if (f) this._sseJoined(c, s, f);
    });
    es.addEventListener("presence", (ev) => {
      if (!live()) return;
      const f = data(ev);
      if (f) this._onPresence(f);
    });
    es.addEventListener("reconnect", (ev) => {
      if (!live()) return;
      const f = data(ev);
      if (f) this._onHint(c, f);
    });
    es.addEventListener("disconnect", (ev) => {
      if (!live()) return;
      const f = data(ev) || {};
      c.serverDisconnect = true;
      this._emit("server_disconnect", { reason: f.reason ?? "" });
    });
    es.addEventListener("close", (ev) => {
      if (!live()) return;
      const f = data(ev) || {};
      this._closeStream(s);
      c.stream = null;
      this._lost(c, typeof f.code === "number" ? f.code : 1006, f.reason || "");
    });
    es.addEventListener("error", (ev) => {
      if (!live()) return;
      if (typeof ev.data === "string") {
        // A named `error` event: a join the server refused.
        const f = data(ev);
        if (f) this._sseJoinError(c, s, f);
        return;
      }
      // The stream failed or ended. EventSource would retry on its own; we retry ourselves,
      // so a WebSocket is tried again first.
      this._closeStream(s);
      c.stream = null;
      if (s.welcomed) {
        this._lost(c, 1006, "stream ended");
        return;
      }
      this._sseRefused(c, s, fallback);
    });
  }

  _closeStream(s) {
    if (s.closed) return;
    s.closed = true;
    clearTimeout(s.timer);
    try { s.es.close(); } catch (_) { /* ignore */ }
  }

  /** A stream failed before its welcome: find out whether the server refused it, and why. */
  async _sseRefused(c, s, fallback) {
    const err = await this._sseDiagnose(s.url);
    if (c.dead || this._conn !== c) return;
    if (!err) {
      if (!c.connected && fallback) fallback();
      else this._lost(c, 1006, "stream failed");
      return;
    }
    if (err.code === "unauthorized") {
      c.lastError = err;
      this._emit("error", err);
      this._lost(c, 4401, err.message);
      return;
    }
    // bad_request / forbidden: the joins of this stream that were not joined yet fail.
    let failed = 0;
    for (const room of s.rooms) {
      const rs = this._rooms.get(room);
      if (rs && rs.status === "joining" && rs.joinEntry && this._pending.has(rs.joinEntry.id)) {
        this._fail(rs.joinEntry, new RoomcastError(err.code, err.message, rs.joinEntry.request));
        failed++;
      }
    }
    if (failed === 0) {
      this._emit("error", err);
      this._shutdown(err);
      this._emit("disconnected", { code: 1008, reason: err.message, willReconnect: false });
      return;
    }
    if (c.connected) this._sseReopenSoon();
    else if (fallback) fallback();
  }

  async _sseDiagnose(url) {
    const f = this._opts.fetch || globalThis.fetch;
    if (typeof f !== "function") return null;
    const ac = typeof AbortController === "function" ? new AbortController() : null;
    try {
      const r = await f(url, { cache: "no-store", signal: ac ? ac.signal : undefined });
      if (r.status === 400 || r.status === 401 || r.status === 403) {
        let body = null;
        try { body = await r.json(); } catch (_) { /* ignore */ }
        const code = (body && body.error && body.error.code) ||
          { 400: "bad_request", 401: "unauthorized", 403: "forbidden" }[r.status];
        return new RoomcastError(code, (body && body.error && body.error.message) || `HTTP ${r.status}`);
      }
      if (ac) ac.abort();
      return null;
    } catch (_) {
      return null; // unreachable, or the refusal is not readable from this origin
    }
  }

  _sseJoined(c, s, f) {
    s.joined.add(f.room);
    const rs = this._rooms.get(f.room);
    if (rs) {
      const pos = s.sent.get(f.room);
      const entry = rs.joinEntry;
      if (rs.status === "joining" && entry && this._pending.has(entry.id)) {
        this._settle(entry, f); // onOk applies the reply (with the join's own since)
      } else if (rs.status === "joined") {
        this._applyJoinReply(rs, f, pos ? pos.since : undefined, pos ? pos.epoch : undefined, s.resume);
      }
    }
    this._sseSettleErrors(c, s);
  }

  _sseJoinError(c, s, f) {
    const e = f.error || {};
    s.errors.push(new RoomcastError(e.code || "internal", e.message || "join refused"));
    this._sseSettleErrors(c, s);
  }

  /**
   * SSE `error` events do not name their room: once every room of the stream has been answered,
   * the rooms without a `joined` are the refused ones.
   */
  _sseSettleErrors(c, s) {
    if (s.errors.length === 0 || s.joined.size + s.errors.length < s.rooms.length) return;
    const failedRooms = s.rooms.filter((r) => !s.joined.has(r));
    const errors = s.errors;
    s.errors = [];
    let reopenNow = false;
    let retry = false;
    failedRooms.forEach((room, i) => {
      const err = errors[Math.min(i, errors.length - 1)];
      const rs = this._rooms.get(room);
      if (!rs) return;
      const entry = rs.status === "joining" && rs.joinEntry && this._pending.has(rs.joinEntry.id) ? rs.joinEntry : null;
      if (err.code === "unavailable") {
        if (!entry) {
          retry = true;
        } else if (entry.retries < this._opts.retryUnavailable) {
          entry.retries++;
          retry = true;
        } else {
          this._fail(entry, new RoomcastError(err.code, err.message, entry.request));
          reopenNow = true;
        }
      } else if (entry) {
        this._fail(entry, new RoomcastError(err.code, err.message, entry.request));
        reopenNow = true;
      } else {
        this._rooms.delete(room);
        this._emit("error", new RoomcastError(err.code, err.message, { op: "join", room }));
        reopenNow = true;
      }
    });
    if (retry) {
      const delay = backoffDelay(this._attempts, this._opts.backoff);
      setTimeout(() => {
        if (!c.dead && this._conn === c && c.stream === s) this._sseReopen();
      }, delay);
    } else if (reopenNow) {
      this._sseReopenSoon();
    }
  }
}
