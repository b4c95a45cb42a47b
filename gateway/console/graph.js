// The runbook drawn as an SVG graph: one node per step (coloured by its state), one edge
// per dependency, the same rules as the engine: no dependsOn means "the step before",
// a branch target also depends on its conditional. Edges into a skipped step (the branch
// not taken) are greyed.
const NS = "http://www.w3.org/2000/svg";
const W = 180, H = 46, GAP_X = 60, GAP_Y = 22, PAD = 16;

export function dependencies(doc) {
  const steps = (doc && doc.steps) || [];
  const branchOf = {};
  for (const s of steps) {
    if (s.type !== "conditional" || !s.config) continue;
    for (const key of ["trueBranch", "falseBranch"]) for (const id of [].concat(s.config[key] ?? [])) branchOf[id] = s.id;
  }
  return steps.map((s, i) => {
    let deps = Array.isArray(s.dependsOn) ? [...s.dependsOn] : branchOf[s.id] ? [branchOf[s.id]] : i > 0 ? [steps[i - 1].id] : [];
    if (branchOf[s.id] && !deps.includes(branchOf[s.id])) deps.push(branchOf[s.id]);
    return { id: s.id, type: s.type, deps: deps.filter((d) => steps.some((o) => o.id === d)) };
  });
}

function layout(nodes) {
  const level = {};
  const byId = Object.fromEntries(nodes.map((n) => [n.id, n]));
  const depth = (id, seen = new Set()) => {
    if (id in level) return level[id];
    if (seen.has(id)) return 0;
    seen.add(id);
    return (level[id] = Math.max(0, ...byId[id].deps.map((d) => depth(d, seen) + 1)));
  };
  nodes.forEach((n) => depth(n.id));
  const columns = [];
  for (const n of nodes) (columns[level[n.id]] ||= []).push(n.id);
  const place = {};
  columns.forEach((ids, x) => ids.forEach((id, y) => { place[id] = { x: PAD + x * (W + GAP_X), y: PAD + y * (H + GAP_Y) }; }));
  const height = PAD * 2 + Math.max(...columns.map((c) => c.length)) * (H + GAP_Y) - GAP_Y;
  return { place, width: PAD * 2 + columns.length * (W + GAP_X) - GAP_X, height };
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

const FILL = { pending: "#e4e8ee", running: "#cfe3ff", retrying: "#cfe3ff", waiting: "#fff0c2", awaiting_approval: "#fff0c2",
  succeeded: "#d3f5dc", failed: "#ffd8d6", rejected: "#ffd8d6", skipped: "#eeeeee", cancelled: "#e6dcf5" };

// Draws into `box`; returns update(execution, selected) to recolour it, live.
export function drawGraph(box, doc, onSelect) {
  const nodes = dependencies(doc);
  const { place, width, height } = layout(nodes);
  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "group", "aria-label": "Steps of the runbook" });
  const defs = svg("defs");
  const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" });
  marker.append(svg("path", { d: "M0,0 L10,5 L0,10 z", fill: "#6b7785" }));
  defs.append(marker);
  root.append(defs);
  const edges = [];
  for (const n of nodes) for (const d of n.deps) {
    const a = place[d], b = place[n.id];
    const path = svg("path", { class: "edge", "marker-end": "url(#arrow)",
      d: `M${a.x + W},${a.y + H / 2} C${a.x + W + GAP_X / 2},${a.y + H / 2} ${b.x - GAP_X / 2},${b.y + H / 2} ${b.x},${b.y + H / 2}` });
    edges.push({ path, to: n.id });
    root.append(path);
  }
  const shapes = {};
  for (const n of nodes) {
    const g = svg("g", { class: "node", tabindex: "0", role: "button", "data-step": n.id, transform: `translate(${place[n.id].x},${place[n.id].y})` });
    const rect = svg("rect", { width: W, height: H, rx: 8, fill: FILL.pending });
    const name = svg("text", { x: 10, y: 19 });
    name.textContent = n.id.length > 22 ? `${n.id.slice(0, 21)}…` : n.id;
    const status = svg("text", { x: 10, y: 36, "font-size": 12 });
    const title = svg("title");
    g.append(title, rect, name, status);
    g.addEventListener("click", () => onSelect(n.id));
    g.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); onSelect(n.id); } });
    shapes[n.id] = { g, rect, status, title, type: n.type };
    root.append(g);
  }
  box.replaceChildren(root);
  return (execution, selected) => {
    for (const [id, shape] of Object.entries(shapes)) {
      const state = execution.steps[id] || { status: "pending" };
      shape.rect.setAttribute("fill", FILL[state.status] || FILL.pending);
      shape.status.textContent = state.status.replace("_", " ");
      shape.title.textContent = `${id} (${shape.type}): ${state.status}`;
      shape.g.setAttribute("aria-label", `step ${id}: ${state.status.replace("_", " ")}`);
      shape.g.setAttribute("data-status", state.status);
      shape.g.classList.toggle("skipped", state.status === "skipped");
      shape.g.classList.toggle("selected", id === selected);
    }
    for (const edge of edges) edge.path.classList.toggle("untaken", (execution.steps[edge.to] || {}).status === "skipped");
  };
}
