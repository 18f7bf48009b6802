// stitch view: the page. Plain JavaScript, no libraries: the server computes
// layouts, this file draws them as SVG and handles pan, zoom and selection.
"use strict";

const PAD = 14, HEADER = 26;
const state = {
  view: "source",
  expanded: { source: new Set(), compiled: new Set() },
  summary: null,
  layout: null,
  selected: null,        // item key of the selected node
  highlight: null,       // { nodes: Set, groups: {key: count} }
  activeOp: null,
  tx: 0, ty: 0, scale: 1,
  firstRenderMs: null,
  pos: new Map(),        // item key -> absolute {x, y, w, h}
};

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

async function api(path) {
  const r = await fetch(path);
  const j = await r.json();
  if (!r.ok) throw new Error(j.error || `HTTP ${r.status}`);
  return j;
}

function opColor(op) {
  let h = 0;
  for (const c of op) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return `hsl(${h % 360}, 62%, 86%)`;
}

function fmtBytes(b) {
  if (b >= 1 << 20) return (b / (1 << 20)).toFixed(2) + " MiB";
  if (b >= 1 << 10) return (b / (1 << 10)).toFixed(1) + " KiB";
  return b + " B";
}

function fmtNum(x) {
  if (x === null || x === undefined) return "";
  const a = Math.abs(x);
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? x.toExponential(4) : x.toFixed(5).replace(/\.?0+$/, "");
}

// ---------------------------------------------------------------- drawing

function edgePath(a, b) {
  const x1 = a.x + a.w / 2, y1 = a.y + a.h, x2 = b.x + b.w / 2, y2 = b.y;
  if (y2 >= y1) {
    const dy = Math.max(20, (y2 - y1) / 2);
    return `M${x1},${y1} C${x1},${y1 + dy} ${x2},${y2 - dy} ${x2},${y2}`;
  }
  // An edge going upwards (a cycle between groups): loop around the side.
  const xs = Math.max(a.x + a.w, b.x + b.w) + 30;
  return `M${a.x + a.w},${a.y + a.h / 2} C${xs},${a.y + a.h / 2} ${xs},${b.y + b.h / 2} ${b.x + b.w},${b.y + b.h / 2}`;
}

// Fits a label into a box `w` px wide; long names keep their end, which is
// the distinctive part (`…layer.0.attention.self.key.bias`).
function fitLabel(label, w) {
  const max = Math.max(4, Math.floor((w - 14) / 7.3));
  return label.length <= max ? label : "…" + label.slice(label.length - max + 1);
}

function renderLevel(level, ox, oy, out) {
  const items = level.items;
  for (const [i, j] of level.edges) {
    const a = items[i], b = items[j];
    if (!a || !b) continue;
    out.push(`<path class="edge" marker-end="url(#arrow)" d="${edgePath(
      { x: ox + a.x, y: oy + a.y, w: a.w, h: a.h }, { x: ox + b.x, y: oy + b.y, w: b.w, h: b.h })}"/>`);
  }
  for (const it of items) {
    const x = ox + it.x, y = oy + it.y;
    state.pos.set(it.key, { x, y, w: it.w, h: it.h });
    const hl = isHighlighted(it);
    const cls = ["item", it.kind, it.expanded ? "open" : "", it.fallback ? "fallback" : "",
      state.selected === it.key ? "selected" : "", hl ? "hl" : ""].join(" ");
    out.push(`<g class="${cls}" data-key="${it.key}">`);
    if (it.kind === "group") {
      out.push(`<rect class="box" x="${x}" y="${y}" width="${it.w}" height="${it.h}"/>`);
      const sign = it.expanded ? "−" : "+";
      out.push(`<text x="${x + 8}" y="${y + 17}">${sign} ${esc(fitLabel(it.label, it.w - 14))}</text>`);
      if (!it.expanded) out.push(`<text class="sub" x="${x + 8}" y="${y + 34}">${it.count} nodes</text>`);
      else renderLevel(it.inner, x + PAD, y + HEADER, out);
      if (hl && !it.expanded && state.highlight) {
        const n = state.highlight.groups[it.key];
        out.push(`<circle class="badge" cx="${x + it.w - 4}" cy="${y + 4}" r="10"/><text class="badge-text" text-anchor="middle" x="${x + it.w - 4}" y="${y + 8}">${n > 99 ? "99+" : n}</text>`);
      }
    } else if (it.kind === "fused" && it.expanded) {
      out.push(`<rect class="box" x="${x}" y="${y}" width="${it.w}" height="${it.h}" rx="7"/>`);
      out.push(`<text x="${x + 8}" y="${y + 17}">− ${esc(fitLabel(it.label + " (fused)", it.w))}</text>`);
      renderLevel(it.inner, x + PAD, y + HEADER, out);
    } else {
      const fill = it.kind === "member" ? "" : ` style="fill:${opColor(it.op)}"`;
      out.push(`<rect x="${x}" y="${y}" width="${it.w}" height="${it.h}"${fill}/>`);
      out.push(`<text x="${x + 7}" y="${y + 16}">${esc(fitLabel(it.label, it.w))}</text>`);
      const sub = it.kind === "fused" ? `+ fused region · ${it.members} ops` : it.op;
      out.push(`<text class="sub" x="${x + 7}" y="${y + 31}">${esc(sub)}</text>`);
    }
    out.push(`</g>`);
  }
}

function isHighlighted(it) {
  const h = state.highlight;
  if (!h) return false;
  if (it.kind === "group") return !it.expanded && h.groups[it.key] > 0;
  if (it.kind === "member") return false;
  return h.nodes.has(it.key);
}

function render() {
  const out = [];
  state.pos.clear();
  if (state.layout) renderLevel(state.layout, 0, 0, out);
  $("viewport").innerHTML = out.join("");
  applyTransform();
}

function applyTransform() {
  $("viewport").setAttribute("transform", `translate(${state.tx},${state.ty}) scale(${state.scale})`);
}

function fit() {
  const l = state.layout;
  if (!l) return;
  const r = $("canvas").getBoundingClientRect();
  const s = Math.min((r.width - 40) / Math.max(l.w, 1), (r.height - 40) / Math.max(l.h, 1), 1.2);
  // Never so small that labels cannot be read: a tall graph opens at its top.
  state.scale = Math.max(s, 0.45);
  state.tx = (r.width - l.w * state.scale) / 2;
  state.ty = Math.max(20, (r.height - l.h * state.scale) / 2);
  applyTransform();
}

// Keeps item `key` at the same place on screen across a re-layout.
function keepInPlace(key, before) {
  const after = state.pos.get(key);
  if (!before || !after) return;
  state.tx += (before.x - after.x) * state.scale;
  state.ty += (before.y - after.y) * state.scale;
  applyTransform();
}

function centerOn(key) {
  const p = state.pos.get(key);
  if (!p) return;
  const r = $("canvas").getBoundingClientRect();
  state.scale = Math.max(state.scale, 0.8);
  state.tx = r.width / 2 - (p.x + p.w / 2) * state.scale;
  state.ty = r.height / 2 - (p.y + p.h / 2) * state.scale;
  applyTransform();
}

async function loadLayout() {
  const exp = [...state.expanded[state.view]].join(",");
  state.layout = await api(`/api/layout?view=${state.view}&expanded=${encodeURIComponent(exp)}`);
  $("node-count").textContent = `${state.layout.nodes} nodes`;
  $("node-count").dataset.nodes = state.layout.nodes;
}

function visibleItems(level, out) {
  for (const it of level.items) { out.push(it); if (it.inner) visibleItems(it.inner, out); }
  return out;
}

// A top level of a few boxes (one scope wrapping the model) says little:
// open the largest group while the drawing stays small.
async function openSmallTopLevel() {
  for (let round = 0; round < 3; round++) {
    const items = visibleItems(state.layout, []);
    const groups = items.filter((it) => it.kind === "group" && !it.expanded).sort((a, b) => b.count - a.count);
    if (!groups.length || items.length > 12) return;
    state.expanded[state.view].add(groups[0].key);
    await loadLayout();
  }
}

async function toggle(key) {
  const set = state.expanded[state.view];
  const before = state.pos.get(key);
  if (set.has(key)) set.delete(key); else set.add(key);
  try {
    await loadLayout();
    render();
    keepInPlace(key, before);
  } catch (e) { setStatus(e.message, true); }
}

// ---------------------------------------------------------------- pan and zoom

function setupPanZoom() {
  const svg = $("canvas");
  let drag = null;
  svg.addEventListener("mousedown", (e) => {
    drag = { x: e.clientX, y: e.clientY, tx: state.tx, ty: state.ty, moved: false };
  });
  window.addEventListener("mousemove", (e) => {
    if (!drag) return;
    const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) { drag.moved = true; svg.classList.add("dragging"); }
    state.tx = drag.tx + dx; state.ty = drag.ty + dy;
    applyTransform();
  });
  window.addEventListener("mouseup", (e) => {
    if (!drag) return;
    const d = drag;
    drag = null;
    svg.classList.remove("dragging");
    if (!d.moved) onClick(e);
  });
  svg.addEventListener("wheel", (e) => {
    e.preventDefault();
    const r = svg.getBoundingClientRect();
    const mx = e.clientX - r.left, my = e.clientY - r.top;
    const k = Math.exp(-e.deltaY * 0.0015);
    const s = Math.min(4, Math.max(0.02, state.scale * k));
    state.tx = mx - (mx - state.tx) * (s / state.scale);
    state.ty = my - (my - state.ty) * (s / state.scale);
    state.scale = s;
    applyTransform();
  }, { passive: false });
}

function onClick(e) {
  const g = e.target.closest && e.target.closest("[data-key]");
  if (!g || !$("canvas").contains(g)) return;
  const key = g.dataset.key;
  const it = findItem(state.layout, key);
  if (!it) return;
  if (it.kind === "group") { toggle(key); return; }
  if (it.kind === "fused") {
    // A click on the header of an expanded region, or a second click, toggles it.
    if (state.selected === key || it.expanded) { toggle(key); }
  }
  if (it.kind === "member") { showMember(it); return; }
  select(key);
}

function findItem(level, key) {
  if (!level) return null;
  for (const it of level.items) {
    if (it.key === key) return it;
    if (it.inner) { const f = findItem(it.inner, key); if (f) return f; }
  }
  return null;
}

// ---------------------------------------------------------------- inspector

async function select(key) {
  state.selected = key;
  for (const el of document.querySelectorAll(".item.selected")) el.classList.remove("selected");
  const el = document.querySelector(`[data-key="${key}"]`);
  if (el) el.classList.add("selected");
  const id = key.slice(1);
  try {
    const n = await api(`/api/node?view=${state.view}&id=${id}`);
    showNode(n);
  } catch (e) { $("inspector").innerHTML = `<p class="error">${esc(e.message)}</p>`; }
}

function nodeLink(r) {
  return `<span class="link" data-node="${r.id}">${esc(r.name)}</span> <span class="tag">${esc(r.op)}</span>`;
}

function showNode(n) {
  const rows = [];
  rows.push(`<h2 id="inspector-name">${esc(n.name)}</h2>`);
  rows.push(`<div><span class="tag" id="inspector-op">${esc(n.op)}</span> node ${n.id}` +
    (state.view === "compiled" ? ` · device <b>${esc(n.device_name || n.device)}</b>` : "") +
    (n.fallback ? ` <span class="tag warn">fallback</span>` : "") + `</div>`);
  rows.push(`<h3>Attributes</h3><code id="inspector-attrs">${esc(n.attrs)}</code>`);
  if (n.quant) rows.push(`<h3>Quantization</h3><span class="tag">${esc(n.quant)}</span>`);
  rows.push(`<h3>Inputs</h3><table id="inspector-inputs">` + (n.inputs.map((i, k) =>
    `<tr><td>${k}</td><td>${nodeLink(i)}${i.output ? ":" + i.output : ""}<br><code>${esc(i.type)}</code></td></tr>`).join("") ||
    `<tr><td colspan=2 class="hint">none</td></tr>`) + `</table>`);
  rows.push(`<h3>Outputs</h3><table id="inspector-outputs">` + (n.outputs.map((t, k) =>
    `<tr><td>${k}</td><td><code>${esc(t)}</code></td></tr>`).join("") || `<tr><td colspan=2 class="hint">none</td></tr>`) + `</table>`);
  rows.push(`<h3>Consumers (${n.consumers.length})</h3><table>` + n.consumers.slice(0, 100).map((c) =>
    `<tr><td></td><td>${nodeLink(c)}</td></tr>`).join("") + `</table>`);
  if (n.variable) {
    const v = n.variable;
    rows.push(`<h3>Variable ${esc(v.name)}</h3><code>${esc(v.type)}</code>`);
    rows.push(`<div>read by:</div><table>` + v.reads.map((r) => `<tr><td></td><td>${nodeLink(r)}</td></tr>`).join("") + `</table>`);
    rows.push(`<div>assigned by:</div><table>` + v.writes.map((r) => `<tr><td></td><td>${nodeLink(r)}</td></tr>`).join("") + `</table>`);
  }
  if (n.members.length) {
    rows.push(`<h3>Fused region: ${n.members.length} ops</h3><table>` + n.members.map((m) =>
      `<tr><td><span class="tag">${esc(m.op)}</span></td><td class="mono">${esc(m.name)}</td></tr>`).join("") + `</table>`);
  }
  if (n.op === "constant" && state.view === "source") {
    rows.push(`<p><span class="link" data-constant="${n.id}">open in the constant viewer</span></p>`);
  }
  $("inspector").innerHTML = rows.join("");
}

function showMember(it) {
  $("inspector").innerHTML = `<h2>${esc(it.name)}</h2><div><span class="tag">${esc(it.op)}</span> member of fused node
    <span class="link" data-node="${it.id}">${it.id}</span></div><p class="hint">Fused regions run as one kernel: their members have no buffers of their own.</p>`;
}

async function revealNode(id) {
  try {
    const n = await api(`/api/node?view=${state.view}&id=${id}`);
    let changed = false;
    for (const g of n.path) if (!state.expanded[state.view].has(g)) { state.expanded[state.view].add(g); changed = true; }
    if (changed) { await loadLayout(); render(); }
    centerOn(`n${id}`);
    state.selected = `n${id}`;
    render();
    showNode(n);
  } catch (e) { setStatus(e.message, true); }
}

// ---------------------------------------------------------------- constants

async function showConstant(id) {
  $("inspector").innerHTML = `<p class="hint">computing statistics…</p>`;
  let c;
  try { c = await api(`/api/constant?id=${id}`); } catch (e) { $("inspector").innerHTML = `<p class="error">${esc(e.message)}</p>`; return; }
  const rows = [];
  rows.push(`<h2>${esc(c.name)}</h2><div><span class="tag">constant</span> node ${c.id}</div>`);
  rows.push(`<table id="constant-stats">
    <tr><td>shape</td><td class="mono">[${c.shape.join(", ")}]${c.format ? ` (stored as ${c.dtype} [${c.stored_shape.join(", ")}])` : ""}</td></tr>
    <tr><td>dtype</td><td>${esc(c.dtype)}</td></tr>
    <tr><td>quantization</td><td>${c.format ? `<span class="tag">${esc(c.format)}</span>` : "none"}</td></tr>
    <tr><td>size</td><td>${fmtBytes(c.bytes)} · ${c.count} elements</td></tr>
    <tr><td>min</td><td class="mono" data-stat="min">${fmtNum(c.min)}</td></tr>
    <tr><td>max</td><td class="mono" data-stat="max">${fmtNum(c.max)}</td></tr>
    <tr><td>mean</td><td class="mono" data-stat="mean">${fmtNum(c.mean)}</td></tr>
    <tr><td>std</td><td class="mono" data-stat="std">${fmtNum(c.std)}</td></tr>
    ${c.non_finite ? `<tr><td>NaN/inf</td><td>${c.non_finite}</td></tr>` : ""}
  </table>`);
  rows.push(`<h3>Histogram</h3><canvas id="hist" class="plot" width="320" height="120"></canvas>
    <div class="hint mono">${fmtNum(c.min)} … ${fmtNum(c.max)}</div>`);
  if (c.heatmap) rows.push(`<h3>Heat map (${c.heatmap.rows}×${c.heatmap.cols} cells of block means)</h3><canvas id="heat" class="plot"></canvas>`);
  rows.push(`<h3>Used by</h3><table>` + c.consumers.map((r) => `<tr><td></td><td>${nodeLink(r)}</td></tr>`).join("") + `</table>`);
  $("inspector").innerHTML = rows.join("");
  drawHistogram($("hist"), c.histogram);
  if (c.heatmap) drawHeat($("heat"), c.heatmap);
}

function drawHistogram(cv, counts) {
  const ctx = cv.getContext("2d");
  const max = Math.max(1, ...counts);
  const bw = cv.width / counts.length;
  ctx.fillStyle = "#5a7cff";
  counts.forEach((n, i) => {
    const h = (n / max) * (cv.height - 4);
    ctx.fillRect(i * bw + 0.5, cv.height - h, Math.max(1, bw - 1), h);
  });
}

function drawHeat(cv, hm) {
  cv.width = hm.cols; cv.height = hm.rows;
  const ctx = cv.getContext("2d");
  const img = ctx.createImageData(hm.cols, hm.rows);
  const m = Math.max(1e-30, ...hm.values.map(Math.abs));
  hm.values.forEach((v, i) => {
    const t = Math.max(-1, Math.min(1, v / m));
    // Diverging: blue (negative) – white – red (positive).
    const r = t < 0 ? 255 * (1 + t) : 255, g = 255 * (1 - Math.abs(t)), b = t > 0 ? 255 * (1 - t) : 255;
    img.data.set([r, g, b, 255], i * 4);
  });
  ctx.putImageData(img, 0, 0);
}

async function loadConstants() {
  const { constants } = await api("/api/constants");
  $("constants").innerHTML = constants.map((c) =>
    `<div class="row" data-constant="${c.id}" title="${esc(c.name)}"><span class="name">${esc(c.name)}</span>` +
    `<span class="n">${c.format ? esc(c.format) + " " : ""}${fmtBytes(c.bytes)}</span></div>`).join("") ||
    `<p class="hint">no constants</p>`;
}

// ---------------------------------------------------------------- operations navigator

function renderOps() {
  const s = state.summary;
  const ops = state.view === "compiled" && s.compiled.status === "ready" ? s.compiled.ops : s.ops;
  $("ops").innerHTML = `<h4>Op types</h4>` + ops.map(([op, n]) =>
    `<div class="row${state.activeOp === op ? " active" : ""}" data-op="${esc(op)}"><span><span class="op-swatch" style="background:${opColor(op)}"></span>${esc(op)}</span><span class="n">${n}</span></div>`).join("");
}

async function highlightOp(op) {
  if (state.activeOp === op) { state.activeOp = null; state.highlight = null; renderOps(); render(); return; }
  state.activeOp = op;
  const f = await api(`/api/find?view=${state.view}&op=${encodeURIComponent(op)}`);
  state.highlight = { nodes: new Set(f.nodes), groups: f.groups };
  renderOps();
  render();
  setStatus(`${f.count} ${op} nodes highlighted`);
}

let searchTimer = null;
function onSearch() {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(async () => {
    const q = $("search").value.trim();
    if (!q) { $("search-results").innerHTML = ""; state.highlight = null; render(); return; }
    const f = await api(`/api/find?view=${state.view}&q=${encodeURIComponent(q)}`);
    state.activeOp = null;
    state.highlight = { nodes: new Set(f.nodes), groups: f.groups };
    renderOps();
    render();
    $("search-results").innerHTML = `<h4>${f.count} matches</h4>` + f.list.map((r) =>
      `<div class="row" data-node="${r.id}" title="${esc(r.name)}"><span class="name">${esc(r.name)}</span><span class="n">${esc(r.op)}</span></div>`).join("");
  }, 200);
}

// ---------------------------------------------------------------- views

function setStatus(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function switchView(view) {
  if (view === "compiled" && state.summary.compiled.status !== "ready") {
    await refreshSummary();
    if (state.summary.compiled.status !== "ready") {
      setStatus(state.summary.compiled.status === "failed" ? state.summary.compiled.error : "still compiling…", state.summary.compiled.status === "failed");
      return;
    }
  }
  state.view = view;
  $("search").value = "";
  $("search-results").innerHTML = "";
  state.highlight = null; state.activeOp = null; state.selected = null;
  for (const b of document.querySelectorAll(".tab")) b.classList.toggle("active", b.dataset.view === view);
  renderOps();
  await loadLayout();
  if (!state.expanded[view].size) await openSmallTopLevel();
  render();
  fit();
  if (view === "source") setStatus(`${state.summary.nodes} nodes in ${state.summary.groups} groups`);
  if (view === "compiled") {
    const c = state.summary.compiled;
    setStatus(`compiled for ${state.summary.device}: ${c.nodes} nodes, ${c.fused} fused regions, ${c.fallback} on another device`);
  }
}

async function refreshSummary() {
  state.summary = await api("/api/summary");
  const c = state.summary.compiled;
  const tab = $("tab-compiled");
  tab.textContent = c.status === "ready" ? `Compiled (${state.summary.device})` : c.status === "failed" ? "Compiled: failed" : "Compiled: compiling…";
  tab.disabled = c.status !== "ready";
  tab.title = c.error || "";
  return c.status;
}

async function pollCompiled() {
  const s = await refreshSummary().catch(() => "compiling");
  if (s === "compiling") setTimeout(pollCompiled, 1000);
}

async function main() {
  setupPanZoom();
  for (const b of document.querySelectorAll(".tab")) b.addEventListener("click", () => switchView(b.dataset.view));
  for (const b of document.querySelectorAll(".ltab")) b.addEventListener("click", () => {
    for (const x of document.querySelectorAll(".ltab")) x.classList.toggle("active", x === b);
    for (const p of document.querySelectorAll(".panel")) p.classList.toggle("hidden", p.id !== b.dataset.panel);
  });
  $("fit").addEventListener("click", fit);
  $("collapse").addEventListener("click", async () => { state.expanded[state.view].clear(); await loadLayout(); render(); fit(); });
  $("search").addEventListener("input", onSearch);
  document.body.addEventListener("click", (e) => {
    const t = e.target.closest("[data-op],[data-node],[data-constant]");
    if (!t || $("canvas").contains(t)) return;
    if (t.dataset.op) highlightOp(t.dataset.op);
    else if (t.dataset.node) revealNode(Number(t.dataset.node));
    else if (t.dataset.constant) showConstant(Number(t.dataset.constant));
  });
  try {
    await refreshSummary();
    document.title = `stitch view: ${state.summary.title}`;
    $("title").textContent = state.summary.title;
    renderOps();
    await loadLayout();
    await openSmallTopLevel();
    render();
    fit();
    state.firstRenderMs = performance.now();
    document.body.dataset.firstRenderMs = state.firstRenderMs.toFixed(0);
    setStatus(`${state.summary.nodes} nodes in ${state.summary.groups} groups · first render ${state.firstRenderMs.toFixed(0)} ms`);
    loadConstants();
    pollCompiled();
  } catch (e) {
    setStatus(e.message, true);
  }
}

main();
