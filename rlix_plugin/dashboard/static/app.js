// The rlix pool page: polls /api/state (rlix_plugin/dashboard/view.py says what it holds) and
// draws it. No dependencies: everything the page needs ships with the package.
"use strict";

const POLL_MS = 500;
const PALETTE = ["#3b6fd8", "#d9534f", "#2e9e6b", "#9b59b6", "#e08a1e", "#16a2b8", "#c2417f", "#6d8a1f",
                 "#8a6d3b", "#5b6ee1"];
const STATE_TEXT = {awake: "awake", waking: "waking", falling_asleep: "falling asleep", training: "training",
                    reserved: "reserved", idle: "idle"};
const TIMELINE_OPACITY = {awake: 1.0, training: 1.0, waking: 0.5, falling_asleep: 0.3, reserved: 0.18};

function color(state, pipeline) {
  const index = state.colors[pipeline];
  return index === undefined ? "#888" : PALETTE[index % PALETTE.length];
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined) continue;
    if (key === "class") node.className = value;
    else if (key === "style") node.style.cssText = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function drawGrid(state) {
  const grid = document.getElementById("grid");
  const nodes = new Map();
  for (const gpu of state.gpus) {
    if (!nodes.has(gpu.node)) nodes.set(gpu.node, []);
    nodes.get(gpu.node).push(gpu);
  }
  const out = [];
  for (const [node, gpus] of nodes) {
    const cells = gpus.map((gpu) => el("div", {
      class: `gpu state-${gpu.state}`,
      style: gpu.pipeline ? `--c: ${color(state, gpu.pipeline)}` : null,
      "data-gpu": gpu.gpu, "data-pipeline": gpu.pipeline || "", "data-cluster": gpu.cluster || "",
      "data-dp-rank": gpu.dp_rank === null ? "" : gpu.dp_rank, "data-state": gpu.state,
      title: `GPU ${gpu.gpu}: ${gpu.label} (${STATE_TEXT[gpu.state] || gpu.state})`,
    }, el("span", {class: "gpu-id"}, `GPU ${gpu.gpu}`),
       el("span", {class: "holder"}, gpu.pipeline || "idle", el("span", {class: "role"}, gpu.role)),
       el("span", {class: "gpu-state"}, STATE_TEXT[gpu.state] || gpu.state)));
    out.push(el("div", {class: "node", "data-node": node}, el("div", {class: "node-title"}, `node ${node}`),
                el("div", {class: "node-gpus"}, ...cells)));
  }
  grid.replaceChildren(...out);
}

function drawDemand(state) {
  const rows = state.pipelines.map((p) => el("tr", {"data-pipeline": p.pipeline},
    el("td", {}, el("span", {class: "dot", style: `background: ${color(state, p.pipeline)}`}), p.pipeline),
    el("td", {class: "rollout"}, p.rollout === null ? "" : String(p.rollout)),
    el("td", {}, p.open_demand === null ? "none" : `${p.open_demand} samples`),
    el("td", {}, String(p.remaining)),
    el("td", {}, `${p.awake} of ${p.dp_size}`),
    el("td", {}, `${p.entitled} bundles`),
    el("td", {class: p.fenced ? "fenced" : ""}, p.fenced ? `fenced: ${p.fenced}` : "")));
  document.querySelector("#demand tbody").replaceChildren(...rows);
  const pending = state.pending.map((r) => el("li", {"data-cluster-id": r.cluster_id, "data-priority": r.priority},
    `${r.cluster_id} at priority ${r.priority}, waiting ${r.waiting_s.toFixed(1)}s`));
  document.getElementById("pending").replaceChildren(...pending);
}

function drawDecisions(state) {
  const items = state.decisions.map((d) => el("li", {"data-seq": d.seq, "data-kind": d.kind},
    el("span", {class: "when"}, new Date(d.t * 1000).toLocaleTimeString()),
    el("span", {class: `kind kind-${d.kind}`}, d.kind), d.text.replace(/^\S+ #\d+\s+\S+\s+/, "")));
  document.getElementById("decisions").replaceChildren(...items);
}

function drawTimeline(state) {
  const timeline = state.timeline;
  const rowH = 18, left = 54, width = 1000, height = timeline.rows.length * rowH + 22;
  const start = timeline.now - timeline.window_s;
  const x = (t) => left + Math.max(0, (t - start) / timeline.window_s) * (width - left);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const add = (tag, attrs, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    svg.append(node);
    return node;
  };
  timeline.rows.forEach((row, gpu) => {
    const y = gpu * rowH;
    add("text", {x: 4, y: y + 13}, `GPU ${gpu}`);
    add("rect", {x: left, y: y + 2, width: width - left, height: rowH - 4, fill: "#eef0f3"});
    for (const s of row) {
      if (!s.pipeline) continue;
      const x0 = x(s.start), x1 = x(s.end === null ? timeline.now : s.end);
      if (x1 <= x0) continue;
      const rect = add("rect", {x: x0, y: y + 2, width: x1 - x0, height: rowH - 4, fill: color(state, s.pipeline),
                                "fill-opacity": TIMELINE_OPACITY[s.state] || 1, "data-state": s.state});
      if (s.state === "training") rect.setAttribute("stroke", "#1d2430");
      const title = document.createElementNS(ns, "title");
      title.textContent = `${s.pipeline} ${s.cluster} (${STATE_TEXT[s.state] || s.state})`;
      rect.append(title);
    }
  });
  const axisY = timeline.rows.length * rowH + 14;
  const step = [1, 2, 5, 10, 15, 30, 60].find((s) => timeline.window_s / s <= 8) || 60;
  for (let ago = 0; ago <= timeline.window_s; ago += step) {
    add("text", {x: x(timeline.now - ago), y: axisY, "text-anchor": ago === 0 ? "end" : "middle"},
        ago === 0 ? "now" : `-${ago}s`);
  }
  document.getElementById("timeline").replaceChildren(svg);
  document.getElementById("timeline-window").textContent = `(last ${Math.round(timeline.window_s)}s)`;
}

function draw(state) {
  const pool = state.pool || {};
  document.getElementById("pool-summary").textContent =
    `${pool.num_gpus ?? "?"} GPUs (${pool.gpus_per_node ?? "?"} per node), ${state.pipelines.length} pipeline(s), ` +
    `policy ${state.policy ?? "?"}, ${state.cycles ?? 0} planning passes`;
  const status = document.getElementById("status");
  status.className = state.error ? "status error" : "status live";
  status.textContent = state.error ? state.error : `live, ${new Date(state.updated_at * 1000).toLocaleTimeString()}`;
  drawGrid(state);
  drawDemand(state);
  drawTimeline(state);
  drawDecisions(state);
  document.body.dataset.version = state.version;
}

async function poll() {
  try {
    const response = await fetch("/api/state", {cache: "no-store"});
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    draw(await response.json());
  } catch (error) {
    const status = document.getElementById("status");
    status.className = "status error";
    status.textContent = `dashboard server unreachable: ${error.message}`;
  }
  setTimeout(poll, POLL_MS);
}

poll();
