// Small SVG charts for the dashboard: a time-series line chart and a horizontal bar chart.
// Plain SVG, no library: the dashboard needs a few lines per node, not a plotting package,
// and the binary embeds this file.

const NS = "http://www.w3.org/2000/svg";
const PALETTE = ["#1f6feb", "#e8590c", "#2f9e44", "#ae3ec9", "#f59f00", "#0c8599", "#e03131", "#5c7cfa"];

/** A stable colour per node id (the same node has the same colour in every chart). */
export function colorFor(id, ids) {
  const i = ids.indexOf(id);
  if (i >= 0) return PALETTE[i % PALETTE.length];
  let h = 0;
  for (const c of id) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return PALETTE[h % PALETTE.length];
}

function el(name, attrs = {}, text) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

/** Rounds a maximum up to a 1-2-5 step so axis labels read well. */
export function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

export function fmt(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (v >= 1e6) return (v / 1e6).toFixed(v >= 1e7 ? 0 : 1) + "M";
  if (v >= 1e3) return (v / 1e3).toFixed(v >= 1e4 ? 0 : 1) + "k";
  return Number.isInteger(v) ? String(v) : v.toFixed(v < 10 ? 2 : 1);
}

/** A line per series over the last `windowS` seconds. */
export class LineChart {
  constructor(svg, { windowS = 120, unit = "" } = {}) {
    this.svg = svg;
    this.windowS = windowS;
    this.unit = unit;
    this.series = new Map(); // name -> [{t, v}]
  }

  push(name, t, v) {
    if (!this.series.has(name)) this.series.set(name, []);
    const pts = this.series.get(name);
    pts.push({ t, v });
    const cut = t - this.windowS * 1000;
    while (pts.length && pts[0].t < cut) pts.shift();
  }

  render(colors, now = Date.now()) {
    // Drawn in CSS pixels, so text keeps its size whatever the panel's width.
    const W = this.svg.clientWidth || 360, H = this.svg.clientHeight || 170, L = 44, R = 8, T = 8, B = 20;
    const svg = this.svg;
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.replaceChildren();
    let max = 0;
    for (const pts of this.series.values()) for (const p of pts) if (p.v !== null) max = Math.max(max, p.v);
    max = niceMax(max);
    const x = (t) => L + (W - L - R) * (1 - (now - t) / (this.windowS * 1000));
    const y = (v) => T + (H - T - B) * (1 - v / max);
    for (const f of [0, 0.5, 1]) {
      svg.append(el("line", { class: "grid", x1: L, x2: W - R, y1: y(max * f), y2: y(max * f) }));
      svg.append(el("text", { x: L - 6, y: y(max * f) + 4, "text-anchor": "end" }, fmt(max * f) + this.unit));
    }
    svg.append(el("text", { x: L, y: H - 4 }, `-${this.windowS}s`));
    svg.append(el("text", { x: W - R, y: H - 4, "text-anchor": "end" }, "now"));
    for (const [name, pts] of this.series) {
      let d = "";
      let pen = false;
      for (const p of pts) {
        if (p.v === null || p.v === undefined) { pen = false; continue; }
        d += `${pen ? "L" : "M"}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`;
        pen = true;
      }
      if (d) svg.append(el("path", { d, fill: "none", stroke: colors(name), "stroke-width": 2, "stroke-linejoin": "round" }));
    }
  }
}

/** One horizontal bar per item: [{label, value, color, note}]. */
export function barChart(svg, items, { unit = "" } = {}) {
  const W = svg.clientWidth || 360, rowH = 26, L = 120, R = 90;
  const H = Math.max(rowH * items.length + 8, 40);
  svg.style.height = `${H}px`;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.replaceChildren();
  const max = niceMax(Math.max(0, ...items.map((i) => i.value)));
  items.forEach((item, i) => {
    const y = 4 + i * rowH;
    const w = ((W - L - R) * item.value) / max;
    svg.append(el("text", { x: L - 8, y: y + 16, "text-anchor": "end" }, item.label));
    svg.append(el("rect", { x: L, y: y + 3, width: Math.max(w, 1), height: rowH - 8, rx: 4, fill: item.color, opacity: item.dim ? 0.35 : 0.9 }));
    svg.append(el("text", { x: L + Math.max(w, 1) + 6, y: y + 16 }, fmt(item.value) + unit + (item.note ? ` ${item.note}` : "")));
  });
}
