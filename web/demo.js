// The demo chat: the roomcast client library (clients/js/roomcast.js) in a page. Pick a name
// and a room, chat, see who is present and which node you are on. When the node dies or
// drains, the library reconnects to another member and resumes the room with `since`, and
// re-sends unacknowledged lines with their idempotency keys: no line is lost or doubled.
//
// Chat lines are `{kind: "chat", name, text}`. Presence lists connections (anonymous users
// are named by their connection), so each client also publishes `{kind: "here", name}` when
// it (re)connects, which maps its connection to its name for everyone; those lines are not
// shown. `window.roomcastDemo` exposes the state to the browser tests.
import { RoomcastClient } from "roomcast";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const demo = (window.roomcastDemo = { client: null, room: null, lines: [], errors: [] });
const names = new Map(); // conn -> name
let me = null;

$("name").value = params.get("name") || localStorage.getItem("roomcast.name") || "";
if (params.get("room")) $("room").value = params.get("room");

function sys(text, cls = "sys") {
  const li = document.createElement("li");
  li.className = cls;
  li.textContent = text;
  $("lines").append(li);
  scroll();
}

function scroll() {
  const ul = $("lines");
  ul.scrollTop = ul.scrollHeight;
}

function show(ev) {
  const d = ev.data || {};
  if (d.kind === "here" && typeof d.name === "string") {
    names.set(ev.from, d.name);
    renderPeople();
    return;
  }
  if (d.kind !== "chat") return;
  names.set(ev.from, d.name);
  demo.lines.push({ name: d.name, text: d.text, seq: ev.seq, epoch: ev.epoch, from: ev.from });
  const li = document.createElement("li");
  li.className = "line" + (ev.from === demo.client?.conn ? " mine" : "");
  li.dataset.seq = ev.seq;
  li.dataset.epoch = ev.epoch;
  const seq = document.createElement("span");
  seq.className = "seq";
  seq.textContent = `#${ev.seq}`;
  const who = document.createElement("b");
  who.textContent = d.name;
  li.append(seq, who, document.createTextNode(`: ${d.text}`));
  $("lines").append(li);
  scroll();
}

let people = []; // presence members
function renderPeople() {
  const ul = $("people");
  ul.replaceChildren();
  for (const p of people) {
    const li = document.createElement("li");
    li.dataset.conn = p.conn;
    li.textContent = names.get(p.conn) || p.user || p.conn;
    const node = document.createElement("span");
    node.className = "node";
    node.textContent = `on ${p.conn.split("/")[0]}`;
    li.append(node);
    ul.append(li);
  }
  $("people-count").textContent = `(${people.length})`;
  demo.people = people.map((p) => names.get(p.conn) || p.conn);
}

async function refreshPeople() {
  try {
    const r = await demo.client.presence(demo.room);
    people = r.members;
    renderPeople();
  } catch (e) {
    demo.errors.push(String(e));
  }
}

function setState(state) {
  const badge = $("state");
  badge.textContent = state;
  badge.className = "badge " + ({ connected: "ok", reconnecting: "warn", connecting: "warn", closed: "bad" }[state] || "off");
  document.body.dataset.state = state;
}

async function join(name, room) {
  localStorage.setItem("roomcast.name", name);
  me = name;
  demo.room = room;
  history.replaceState(null, "", `?room=${encodeURIComponent(room)}`);
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const client = (demo.client = new RoomcastClient(`${scheme}//${location.host}/ws`, {
    discover: true,
    onUnrecovered: (info) => sys(`some messages of ${info.room} could not be recovered after the reconnect`, "warn"),
  }));
  client.on("state", setState);
  let first = true;
  client.on("connected", (c) => {
    $("node").textContent = c.node;
    $("transport").textContent = c.transport;
    $("conn").textContent = c.conn;
    document.body.dataset.node = c.node;
    if (!first) {
      sys(`reconnected to node ${c.node}`);
      client.publish(room, { kind: "here", name: me }).catch(() => {});
      refreshPeople();
    }
    first = false;
  });
  client.on("disconnected", (d) => sys(`disconnected (${d.code}${d.reason ? " " + d.reason : ""})${d.willReconnect ? ", reconnecting…" : ""}`));
  client.on("reconnect_hint", (h) => sys(`node is ${h.reason || "going away"}; moving to ${h.url}`));
  client.on("resumed", (r) => { if (r.recovered) sys(`resumed ${r.room} at #${r.seq}, nothing missed`); });
  client.on("error", (e) => demo.errors.push(String(e)));

  await client.connect();
  // The last lines, then live ones from the join on (history up to the join's seq).
  const sub = await client.join(room, { presence: true, presenceEvents: true });
  // Live events wait until the past lines are on screen, so the page reads in seq order.
  let pending = [];
  sub.on("message", (ev) => (pending ? pending.push(ev) : show(ev)));
  sub.on("presence", (p) => {
    if (p.action === "join") people = people.filter((x) => x.conn !== p.conn).concat([{ user: p.user, conn: p.conn, info: p.info }]);
    else people = people.filter((x) => x.conn !== p.conn);
    renderPeople();
  });
  try {
    if (sub.seq > 0) {
      const past = await client.history(room, { since: Math.max(0, sub.seq - 50), limit: 50 });
      for (const ev of past.messages) if (ev.epoch === sub.epoch && ev.seq <= sub.seq) show(ev);
    }
  } finally {
    for (const ev of pending) show(ev);
    pending = null;
  }
  sys(`joined ${room} as ${name}`);
  await client.publish(room, { kind: "here", name });
  await refreshPeople();
  $("text").disabled = false;
  $("send-btn").disabled = false;
  $("text").focus();
  document.body.dataset.joined = "true";
}

$("join").addEventListener("submit", (e) => {
  e.preventDefault();
  if (demo.client) return;
  $("join-btn").disabled = true;
  $("name").disabled = true;
  $("room").disabled = true;
  join($("name").value.trim(), $("room").value.trim()).catch((err) => {
    sys(`could not join: ${err.message || err}`, "warn");
    demo.errors.push(String(err));
  });
});

$("send").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("text").value.trim();
  if (!text || !demo.client) return;
  $("text").value = "";
  // While disconnected, the library queues the publish and sends it (once) after reconnecting.
  demo.client.publish(demo.room, { kind: "chat", name: me, text }).catch((err) => {
    sys(`not sent (${err.code || err.message}): ${text}`, "warn");
    demo.errors.push(String(err));
  });
});

if (params.get("name") && params.get("room") && params.get("autojoin") === "1") $("join").requestSubmit();
