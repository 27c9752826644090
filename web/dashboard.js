// The live cluster dashboard: reads `/dashboard/events` (Server-Sent Events, one cluster
// report per second from the node that served the page) and draws members, numbers and
// charts. When that node goes away (killed, drained), it reads from another member it has
// seen, so the page keeps going through the very events it is meant to show.
import { LineChart, barChart, colorFor, fmt } from "roomcast-chart";

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const charts = {
  deliveries: new LineChart($("chart-deliveries")),
  publishes: new LineChart($("chart-publishes")),
  p99: new LineChart($("chart-p99"), { unit: "" }),
  conns: new LineChart($("chart-conns")),
};
let knownIds = [];
let sources = [location.origin]; // origins to read from, the page's own first
let sourceIndex = 0;
let es = null;
let lastReport = null;

function origins(report) {
  const o = [location.origin];
  for (const m of report.members) if (m.live && !m.draining) o.push(`http://${m.http}`);
  return [...new Set(o)];
}

function connect() {
  const origin = sources[sourceIndex % sources.length];
  const badge = $("source");
  badge.className = "badge warn";
  badge.textContent = `connecting to ${new URL(origin).host}…`;
  es = new EventSource(`${origin}/dashboard/events`);
  let got = false;
  es.onmessage = (e) => {
    got = true;
    const report = JSON.parse(e.data);
    badge.className = "badge ok";
    badge.textContent = `live from ${report.self}`;
    document.body.dataset.source = report.self;
    update(report);
  };
  es.onerror = () => {
    // The stream ended (the node drained or died) or never opened: try the next member.
    es.close();
    badge.className = "badge bad";
    badge.textContent = "reconnecting…";
    if (lastReport) sources = origins(lastReport).filter((o) => o !== origin).concat([origin]);
    sourceIndex = got ? 0 : sourceIndex + 1;
    setTimeout(connect, got ? 200 : 1000);
  };
}

function state(m) {
  if (!m.live) return ["dead", "bad"];
  if (m.draining) return ["draining", "warn"];
  if (!m.ready) return ["joining", "warn"];
  return ["live", "ok"];
}

function update(report) {
  lastReport = report;
  const now = Date.now();
  for (const m of report.members) if (!knownIds.includes(m.id)) knownIds.push(m.id);
  knownIds.sort();
  const color = (id) => colorFor(id, knownIds);
  const live = report.members.filter((m) => m.live);
  document.body.dataset.liveMembers = String(live.length);
  document.body.dataset.draining = String(live.filter((m) => m.draining).length);
  $("live-count").textContent = live.length;
  $("member-count").textContent = ` / ${report.members.length}`;
  const sum = (f) => live.reduce((a, m) => a + (f(m) || 0), 0);
  const conns = live.map((m) => m.connections);
  $("total-conns").textContent = fmt(sum((m) => m.connections));
  $("spread").textContent = conns.length ? `spread ${Math.min(...conns)}–${Math.max(...conns)} per node` : "";
  $("total-deliveries").textContent = fmt(sum((m) => m.stats?.deliveries_per_s));
  $("total-publishes").textContent = fmt(sum((m) => m.stats?.publishes_per_s));
  $("total-rooms").textContent = fmt(sum((m) => m.stats?.rooms_owned));
  const under = sum((m) => m.stats?.rooms_under_replicated);
  $("under").textContent = under ? `${under} under-replicated` : "all replicated";

  const tbody = $("members").tBodies[0];
  tbody.replaceChildren();
  for (const m of report.members) {
    const [label, cls] = state(m);
    const s = m.stats || {};
    const tr = document.createElement("tr");
    tr.dataset.node = m.id;
    tr.dataset.state = label;
    if (!m.live) tr.className = "dead";
    const cells = [
      `<span class="swatch" style="background:${color(m.id)}"></span>${esc(m.id)}${m.id === report.self ? ' <span class="muted">(this feed)</span>' : ""}<br><span class="muted">${esc(m.http)}</span>`,
      `<span class="badge ${cls}">${label}</span>`,
      fmt(m.connections),
      m.live ? fmt(s.rooms_owned) : "–",
      m.live ? fmt(s.publishes_per_s) : "–",
      m.live ? fmt(s.deliveries_per_s) : "–",
      m.live && s.delivery_p99_ms != null ? `${fmt(s.delivery_p99_ms)} ms` : "–",
      fmt(s.slow_consumers_total),
    ];
    tr.innerHTML = cells.map((c) => `<td>${c}</td>`).join("");
    tbody.append(tr);
  }

  for (const m of report.members) {
    const s = m.live ? m.stats || {} : {};
    charts.deliveries.push(m.id, now, m.live ? s.deliveries_per_s ?? null : null);
    charts.publishes.push(m.id, now, m.live ? s.publishes_per_s ?? null : null);
    charts.p99.push(m.id, now, m.live ? s.delivery_p99_ms ?? null : null);
    charts.conns.push(m.id, now, m.live ? m.connections : null);
  }
  for (const c of Object.values(charts)) c.render(color, now);
  barChart($("chart-spread"), report.members.filter((m) => m.live).map((m) => ({
    label: m.id, value: m.connections, color: color(m.id), dim: m.draining, note: m.draining ? "(draining)" : "",
  })));
  $("legend").innerHTML = knownIds.map((id) => `<span><span class="swatch" style="display:inline-block;width:10px;height:10px;border-radius:3px;background:${color(id)}"></span> ${esc(id)}</span>`).join("");
}

connect();
