// The Isthmus mesh dashboard: draws api/graph every few seconds, opens an edge's
// traces from api/traces and one trace from api/trace/ID. No dependencies.
"use strict";

const REFRESH_MS = 2000;
const COL = 290, ROW = 64, NODE_W = 160, NODE_H = 40, GW_W = 92, BAND_PAD = 46, LEFT = 30;
const SVG_NS = "http://www.w3.org/2000/svg";
const CLUSTER_COLORS = ["#3182ce", "#dd6b20", "#38a169", "#805ad5", "#d53f8c", "#319795"];

let selected = null; // key of the selected edge
let lastGraph = null;
let selectedTrace = null;

function el(name, attrs, parent, text) {
  const e = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}

function html(tag, attrs, parent, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}

function shortService(host) {
  return host.replace(/\.svc\.cluster\.local$/, "").replace(/\.svc\.clusterset\.local$/, " (clusterset)");
}

function workloadLabel(w) {
  return w.version && w.version !== "unknown" ? `${w.app} ${w.version}` : w.app;
}

function edgeKey(e) {
  return [e.source.cluster, e.source.namespace, e.source.app, e.source.version,
    e.destination.service, e.destination.cluster, e.destination.app,
    e.destination.version, e.protocol, e.mtls, e.viaGateway].join("|");
}

function ms(v) {
  if (v === null || v === undefined) return "–";
  return v < 10 ? `${v.toFixed(1)}ms` : `${Math.round(v)}ms`;
}

function health(e) {
  if (e.requests === 0) return "idle";
  if (e.errorRate >= 0.05) return "bad";
  if (e.errorRate > 0) return "warn";
  return "ok";
}

// Nodes: workloads (cluster/namespace/app/version), services (per destination
// cluster) and each cluster's east-west gateway when a call crosses through it.
function buildModel(graph) {
  const nodes = new Map();
  const node = (id, props) => {
    if (!nodes.has(id)) nodes.set(id, { id, layer: 0, in: [], out: [], ...props });
    return nodes.get(id);
  };
  const clusterState = new Map(graph.clusters.map(c => [c.name, c]));
  const paths = [];
  for (const e of graph.edges) {
    const s = e.source, d = e.destination;
    const src = node(`w:${s.cluster}/${s.namespace}/${s.app}/${s.version}`,
      { kind: "workload", cluster: s.cluster, label: workloadLabel(s), sub: s.namespace });
    const svc = node(`s:${d.cluster}/${d.service}`,
      { kind: "service", cluster: d.cluster, label: shortService(d.service), sub: "service" });
    const dst = node(`w:${d.cluster}/${d.namespace}/${d.app}/${d.version}`,
      { kind: "workload", cluster: d.cluster, label: workloadLabel(d), sub: d.namespace });
    const stale = e.stale || (clusterState.get(d.cluster) || {}).stale;
    if (stale) { svc.stale = true; dst.stale = true; }
    const gw = e.viaGateway ? { cluster: d.cluster } : null;
    src.out.push(svc); svc.in.push(src);
    svc.out.push(dst); dst.in.push(svc);
    paths.push({ edge: e, src, gw, svc, dst });
  }
  // Layers: longest path from the callers that nobody calls (bounded, for cycles).
  const all = [...nodes.values()];
  for (let round = 0; round < all.length + 1; round++) {
    let moved = false;
    for (const n of all) {
      for (const m of n.out) {
        if (m.layer < n.layer + 1 && n.layer + 1 <= 2 * all.length) { m.layer = n.layer + 1; moved = true; }
      }
    }
    if (!moved) break;
  }
  // A call through a cluster's east-west gateway passes a gateway node drawn in the
  // gap just before the service it leads to, so calls flow left to right.
  for (const p of paths) {
    if (p.gw) p.gw = node(`g:${p.gw.cluster}/${p.svc.layer}`,
      { kind: "gateway", cluster: p.gw.cluster, label: "gateway", sub: `east-west · ${p.gw.cluster}`, layer: p.svc.layer, leads: [] });
    if (p.gw && !p.gw.leads.includes(p.svc)) p.gw.leads.push(p.svc);
  }
  // Clusters: the local one first, then as the graph lists them, then any named
  // only by an edge.
  const clusters = graph.clusters.map(c => c.name);
  for (const n of nodes.values()) if (!clusters.includes(n.cluster)) clusters.push(n.cluster);
  return { nodes, paths, clusters, clusterState };
}

function layout(model) {
  const bands = [];
  let y = 10;
  for (const name of model.clusters) {
    const members = [...model.nodes.values()].filter(n => n.cluster === name && n.kind !== "gateway");
    const perLayer = new Map();
    for (const n of members.sort((a, b) => a.label.localeCompare(b.label))) {
      const i = perLayer.get(n.layer) || 0;
      perLayer.set(n.layer, i + 1);
      n.x = LEFT + n.layer * COL;
      n.y = y + BAND_PAD + i * ROW;
    }
    const rows = Math.max(1, ...perLayer.values());
    const height = BAND_PAD + rows * ROW + 10;
    for (const gw of model.nodes.values()) {
      if (gw.kind !== "gateway" || gw.cluster !== name) continue;
      gw.x = LEFT + gw.layer * COL - (COL - NODE_W + GW_W) / 2;
      gw.y = gw.leads.reduce((sum, s) => sum + s.y, 0) / gw.leads.length;
    }
    bands.push({ name, y, height });
    y += height + 18;
  }
  const maxLayer = Math.max(0, ...[...model.nodes.values()].map(n => n.layer));
  return { bands, width: LEFT + (maxLayer + 1) * COL + 20, height: y };
}

function anchor(n, side) {
  return { x: n.x + (side === "right" ? NODE_W : 0), y: n.y + NODE_H / 2 };
}

function route(points) {
  let d = `M${points[0].x},${points[0].y}`;
  for (let i = 1; i < points.length; i++) {
    const a = points[i - 1], b = points[i];
    const mx = (a.x + b.x) / 2;
    d += ` C${mx},${a.y} ${mx},${b.y} ${b.x},${b.y}`;
  }
  return d;
}

function drawNode(svg, n, colors) {
  const g = el("g", {
    class: `node ${n.kind}${n.stale ? " stale" : ""}`,
    "data-kind": n.kind, "data-cluster": n.cluster, "data-label": n.label,
    transform: `translate(${n.x},${n.y})`,
  }, svg);
  const w = n.kind === "gateway" ? GW_W : NODE_W;
  el("rect", { width: w, height: NODE_H, rx: n.kind === "service" ? 18 : 5 }, g);
  if (n.kind === "workload") el("rect", { width: 5, height: NODE_H, rx: 2, style: `fill:${colors.get(n.cluster)};stroke:none` }, g);
  el("text", { x: 12, y: 17 }, g, n.label);
  el("text", { x: 12, y: 31, class: "kind" }, g, n.stale ? `${n.sub} · stale` : n.sub);
  el("title", {}, g, `${n.kind} ${n.label} in ${n.cluster}`);
}

function drawEdge(svg, p, labels) {
  const e = p.edge;
  const key = edgeKey(e);
  const g = el("g", {
    class: `edge ${health(e)}${e.stale ? " stale" : ""}${key === selected ? " selected" : ""}`,
    "data-key": key,
    "data-source": e.source.app, "data-source-cluster": e.source.cluster,
    "data-service": e.destination.service, "data-dest-cluster": e.destination.cluster,
    "data-dest": e.destination.app, "data-dest-version": e.destination.version,
    "data-mtls": String(e.mtls), "data-via-gateway": String(e.viaGateway),
    "data-rps": String(e.rps), "data-stale": String(!!e.stale),
  }, svg);
  const pts = [anchor(p.src, "right")];
  if (p.gw) { pts.push({ x: p.gw.x, y: p.gw.y + NODE_H / 2 }); pts.push({ x: p.gw.x + GW_W, y: p.gw.y + NODE_H / 2 }); }
  pts.push(anchor(p.svc, "left"));
  const d = route(pts);
  el("path", { d, class: "hit" }, g);
  el("path", { d, class: "line" }, g);
  // service → workload, unlabelled
  el("path", { d: route([anchor(p.svc, "right"), anchor(p.dst, "left")]), class: "segment" }, svg);
  // The label sits on the caller's side of the call, above the nodes (drawn last).
  const a = pts[0], b = pts[1];
  const lx = (a.x + b.x) / 2 - 62, ly = (a.y + b.y) / 2 - 15;
  const label = el("g", { class: `label edge-label ${health(e)}${key === selected ? " selected" : ""}`, "data-key": key, transform: `translate(${lx},${ly})` });
  label.addEventListener("click", () => selectEdge(key));
  labels.push(label);
  el("rect", { width: 124, height: 30, rx: 4 }, label);
  const lock = el("svg", { x: 5, y: 7, width: 12, height: 14, class: `lock ${e.mtls ? "closed" : "open"}` }, label);
  el("use", { href: e.mtls ? "#lock-closed" : "#lock-open" }, lock);
  el("title", {}, lock, e.mtls ? "mutual TLS" : "plaintext");
  const err = e.requests ? ` · ${(e.errorRate * 100).toFixed(e.errorRate < 0.1 && e.errorRate > 0 ? 1 : 0)}% err` : "";
  el("text", { x: 20, y: 12, class: "rate" }, label, `${e.rps} ${e.protocol === "tcp" ? "conn/s" : "rps"}${err}`);
  el("text", { x: 20, y: 25, class: "latency" }, label, e.protocol === "tcp" ? "tcp" : `p50 ${ms(e.p50Ms)} · p99 ${ms(e.p99Ms)}`);
  el("title", {}, g, `${e.source.app} (${e.source.cluster}) → ${shortService(e.destination.service)} → ${workloadLabel(e.destination)} (${e.destination.cluster})${e.viaGateway ? " through the east-west gateway" : ""}`);
  g.addEventListener("click", () => selectEdge(key));
}

function render(graph) {
  const svg = document.getElementById("graph");
  const model = buildModel(graph);
  const { bands, width, height } = layout(model);
  // Drawn to fit the pane's width, never larger than life.
  svg.setAttribute("viewBox", `0 0 ${width} ${Math.max(height, 120)}`);
  svg.setAttribute("width", "100%");
  svg.style.maxWidth = `${width}px`;
  svg.replaceChildren();
  const colors = new Map(model.clusters.map((c, i) => [c, CLUSTER_COLORS[i % CLUSTER_COLORS.length]]));
  for (const b of bands) {
    const c = model.clusterState.get(b.name) || { name: b.name, state: "not linked here" };
    const g = el("g", {
      class: `cluster${c.state === "local" ? " local" : ""}${c.stale ? " stale" : ""}`,
      "data-cluster": b.name, "data-state": c.state,
    }, svg);
    el("rect", { class: "band", x: 4, y: b.y, width: width - 8, height: b.height, rx: 8 }, g);
    el("rect", { x: 4, y: b.y, width: 8, height: b.height, rx: 3, style: `fill:${colors.get(b.name)}` }, g);
    el("text", { class: "title", x: 20, y: b.y + 18 }, g, `cluster ${b.name}`);
    const sub = [c.network ? `network ${c.network}` : null, c.state,
      c.stale && c.staleSince ? `endpoints stale since ${c.staleSince}` : null,
      c.endpoints !== undefined ? `${c.endpoints} endpoints received` : null].filter(Boolean).join(" · ");
    el("text", { class: "sub", x: 20, y: b.y + 33 }, g, sub);
  }
  const labels = [];
  for (const p of model.paths) drawEdge(svg, p, labels);
  for (const n of model.nodes.values()) drawNode(svg, n, colors);
  // Labels on top of the nodes.
  for (const label of labels) svg.appendChild(label);
  document.getElementById("empty").hidden = graph.edges.length > 0;
}

function setStatus(text, isError) {
  const s = document.getElementById("status");
  s.textContent = text;
  s.className = isError ? "status error" : "status";
}

async function refresh() {
  try {
    const r = await fetch("api/graph", { cache: "no-store" });
    const graph = await r.json();
    if (!r.ok) throw new Error(graph.error || r.statusText);
    lastGraph = graph;
    render(graph);
    const clusters = graph.clusters.map(c => `${c.name} (${c.state})`).join(", ");
    setStatus(`seen from ${graph.cluster} · ${clusters} · rates over ${graph.windowSeconds} s · updated ${new Date().toLocaleTimeString()}`);
    if (selected) showEdgeStats();
  } catch (err) {
    setStatus(`cannot read the graph: ${err.message}; the last one stays`, true);
  }
}

function selectedEdge() {
  return lastGraph && lastGraph.edges.find(e => edgeKey(e) === selected);
}

function selectEdge(key) {
  selected = key;
  selectedTrace = null;
  document.querySelectorAll(".edge, .edge-label").forEach(g => g.classList.toggle("selected", g.dataset.key === key));
  const side = document.getElementById("side");
  side.replaceChildren();
  html("div", { id: "edge-stats" }, side);
  html("h3", {}, side, "Recent traces");
  html("div", { id: "traces" }, side, "loading…");
  document.getElementById("waterfall").replaceChildren();
  showEdgeStats();
  loadTraces();
}

function showEdgeStats() {
  const e = selectedEdge();
  const box = document.getElementById("edge-stats");
  if (!e || !box) return;
  box.replaceChildren();
  html("h2", {}, box, `${workloadLabel(e.source)} (${e.source.cluster}) → ${workloadLabel(e.destination)} (${e.destination.cluster})`);
  const t = html("table", { class: "stats" }, box);
  const row = (k, v) => { const tr = html("tr", {}, t); html("td", {}, tr, k); html("td", {}, tr, v); };
  row("service", e.destination.service);
  row("rate", `${e.rps} ${e.protocol === "tcp" ? "connections" : "requests"}/s`);
  row("errors", `${(e.errorRate * 100).toFixed(2)} % (${e.errors} of ${e.requests})`);
  if (e.protocol !== "tcp") row("latency", `p50 ${ms(e.p50Ms)}, p99 ${ms(e.p99Ms)}`);
  row("security", e.mtls ? "mutual TLS" : "plaintext");
  row("path", e.viaGateway ? `through ${e.destination.cluster}'s east-west gateway` : "direct");
  row("reported by", `${e.reportedBy}'s discovery${e.ageMs ? `, ${(e.ageMs / 1000).toFixed(1)} s ago` : ""}`);
  if (e.stale) row("endpoints", `stale: ${e.destination.cluster}'s control plane is silent`);
}

async function loadTraces() {
  const e = selectedEdge();
  const box = document.getElementById("traces");
  if (!e || !box) return;
  const asked = selected;
  const q = new URLSearchParams({
    source: `${e.source.app}.${e.source.namespace}`,
    service: e.destination.service,
    cluster: e.destination.cluster,
  });
  try {
    const r = await fetch(`api/traces?${q}`, { cache: "no-store" });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.statusText);
    box.replaceChildren();
    if (body.traces.length === 0) {
      // Spans reach Jaeger in batches: look again while the edge stays selected.
      html("p", { class: "hint" }, box, "No trace of this edge yet; looking again every few seconds…");
      setTimeout(() => { if (selected === asked) loadTraces(); }, 3000);
      return;
    }
    const ul = html("ul", { class: "traces" }, box);
    for (const t of body.traces) {
      const li = html("li", { class: "trace", "data-trace": t.traceId, "data-clusters": t.clusters.join(",") }, ul);
      html("div", {}, li, `${t.traceId.slice(0, 16)} · ${t.durationMs.toFixed(2)} ms · ${t.spans} spans`);
      const tags = html("div", {}, li);
      for (const c of t.clusters) html("span", { class: "badge" }, tags, c);
      html("span", { class: "hint" }, tags, ` ${new Date(t.startUs / 1000).toLocaleTimeString()}`);
      li.addEventListener("click", () => openTrace(t.traceId, li));
    }
  } catch (err) {
    box.replaceChildren();
    html("p", { class: "error-text" }, box, `Traces unavailable: ${err.message}`);
  }
}

async function openTrace(id, li) {
  selectedTrace = id;
  document.querySelectorAll("li.trace").forEach(x => x.classList.toggle("selected", x === li));
  const box = document.getElementById("waterfall");
  box.replaceChildren();
  html("h3", {}, box, `Trace ${id}`);
  try {
    const r = await fetch(`api/trace/${id}`, { cache: "no-store" });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.statusText);
    drawWaterfall(box, body.spans);
  } catch (err) {
    html("p", { class: "error-text" }, box, `Cannot open the trace: ${err.message}`);
  }
}

function drawWaterfall(box, spans) {
  if (spans.length === 0) { html("p", { class: "hint" }, box, "no spans"); return; }
  const t0 = Math.min(...spans.map(s => s.startUs));
  const end = Math.max(...spans.map(s => s.startUs + s.durationUs));
  const total = Math.max(1, end - t0);
  const ids = new Set(spans.map(s => s.id));
  const children = new Map();
  for (const s of spans) {
    const p = s.parent && ids.has(s.parent) ? s.parent : null;
    if (!children.has(p)) children.set(p, []);
    children.get(p).push(s);
  }
  const clusters = [...new Set(spans.map(s => s.cluster))];
  const colors = new Map(clusters.map((c, i) => [c, CLUSTER_COLORS[i % CLUSTER_COLORS.length]]));
  const legend = html("div", {}, box);
  for (const c of clusters) {
    const b = html("span", { class: "badge", style: `background:${colors.get(c)};color:#fff` }, legend, c);
    b.dataset.cluster = c;
  }
  const walk = (parent, depth) => {
    for (const s of (children.get(parent) || []).sort((a, b) => a.startUs - b.startUs)) {
      const row = html("div", { class: "span-row", "data-cluster": s.cluster, "data-service": s.service }, box);
      const name = html("div", { class: "span-name", style: `padding-left:${depth * 12}px` }, row,
        `${s.service}: ${s.operation} · ${(s.durationUs / 1000).toFixed(2)} ms`);
      name.title = `${s.service}: ${s.operation} (${s.cluster})${s.status ? ` → ${s.status}` : ""}`;
      const track = html("div", { class: "span-track" }, row);
      const bar = html("div", { class: "span-bar" }, track);
      bar.style.left = `${((s.startUs - t0) / total) * 100}%`;
      bar.style.width = `${(s.durationUs / total) * 100}%`;
      bar.style.background = colors.get(s.cluster);
      bar.title = `${(s.durationUs / 1000).toFixed(2)} ms in ${s.cluster}`;
      walk(s.id, depth + 1);
    }
  };
  walk(null, 0);
}

refresh();
setInterval(refresh, REFRESH_MS);
