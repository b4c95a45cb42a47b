// The runbook drawn as an SVG graph: one node per step (coloured by its state), one edge
// per dependency, the same rules as the engine: no dependsOn means "the step before",
// a branch target also depends on its conditional. Edges into a skipped step (the branch
// not taken) are greyed.
//
// Layout: each step sits at the level of its longest chain of dependencies. An edge that
// spans several levels passes through an empty slot of its own at each level in between,
// so no edge crosses a node; the slots of a level are ordered by the positions of their
// neighbours (a few barycentre sweeps) to keep crossings few. Levels run left to right
// when that fits the box (scaled down to 3/4 at most), else top to bottom; what is still
// too wide is scaled to fit, and scrolls past half size. The layout is redone when the
// box changes width.
const NS = "http://www.w3.org/2000/svg";
const W = 180, H = 46, PAD = 16;
const GAPS = { across: { level: 60, lane: 22 }, down: { level: 40, lane: 20 } };
const MIN_SCALE = { across: 0.75, down: 0.5 };

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

function levelsOf(nodes) {
  const level = {};
  const byId = Object.fromEntries(nodes.map((n) => [n.id, n]));
  const depth = (id, seen = new Set()) => {
    if (id in level) return level[id];
    if (seen.has(id)) return 0;
    seen.add(id);
    return (level[id] = Math.max(0, ...byId[id].deps.map((d) => depth(d, seen) + 1)));
  };
  nodes.forEach((n) => depth(n.id));
  return level;
}

// The slots of each level (steps, and the passages of long edges) and each edge's chain of slots.
function slots(nodes) {
  const level = levelsOf(nodes);
  const layers = [];
  const slot = {};
  const add = (key, at, step) => { slot[key] = { key, step, level: at }; (layers[at] ||= []).push(slot[key]); return slot[key]; };
  for (const n of nodes) add(n.id, level[n.id], true);
  const edges = [];
  for (const n of nodes) for (const d of n.deps) {
    const chain = [slot[d]];
    for (let at = level[d] + 1; at < level[n.id]; at++) chain.push(add(`${d}→${n.id}@${at}`, at, false));
    chain.push(slot[n.id]);
    edges.push({ from: d, to: n.id, chain });
  }
  const dense = Array.from(layers, (l) => l || []);
  order(dense, edges);
  return { layers: dense, edges, slot };
}

function order(layers, edges) {
  const up = new Map(), down = new Map();
  for (const { chain } of edges) for (let i = 1; i < chain.length; i++) {
    (up.get(chain[i]) || up.set(chain[i], []).get(chain[i])).push(chain[i - 1]);
    (down.get(chain[i - 1]) || down.set(chain[i - 1], []).get(chain[i - 1])).push(chain[i]);
  }
  const index = new Map();
  const number = (layer) => layer.forEach((s, i) => index.set(s, i));
  layers.forEach(number);
  const sweep = (layer, neighbours) => {
    const centre = (s) => { const n = neighbours.get(s) || []; return n.length ? n.reduce((a, o) => a + index.get(o), 0) / n.length : index.get(s); };
    const keyed = layer.map((s, i) => [centre(s), i, s]).sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    layer.splice(0, layer.length, ...keyed.map((k) => k[2]));
    number(layer);
  };
  for (let round = 0; round < 4; round++) {
    for (let i = 1; i < layers.length; i++) sweep(layers[i], up);
    for (let i = layers.length - 2; i >= 0; i--) sweep(layers[i], down);
  }
}

// Where each slot goes, in one direction: "across" (levels left to right) or "down".
function place({ layers }, direction) {
  const gap = GAPS[direction];
  const [stepAlong, stepAcross] = direction === "across" ? [W + gap.level, H + gap.lane] : [H + gap.level, W + gap.lane];
  const at = new Map();
  layers.forEach((layer, l) => layer.forEach((s, i) => {
    const along = PAD + l * stepAlong, across = PAD + i * stepAcross;
    at.set(s, direction === "across" ? { x: along, y: across } : { x: across, y: along });
  }));
  const lanes = Math.max(1, ...layers.map((l) => l.length));
  const along = PAD * 2 + layers.length * stepAlong - gap.level;
  const across = PAD * 2 + lanes * stepAcross - gap.lane;
  return direction === "across" ? { at, width: along, height: across, direction } : { at, width: across, height: along, direction };
}

// The path of an edge through its chain of slots: curves between levels, straight through passages.
function route(chain, { at, direction }) {
  const out = (s) => direction === "across" ? [at.get(s).x + W, at.get(s).y + H / 2] : [at.get(s).x + W / 2, at.get(s).y + H];
  const into = (s) => direction === "across" ? [at.get(s).x, at.get(s).y + H / 2] : [at.get(s).x + W / 2, at.get(s).y];
  let [x, y] = out(chain[0]);
  let d = `M${x},${y}`;
  for (const s of chain.slice(1)) {
    const [tx, ty] = into(s);
    d += direction === "across" ? ` C${(x + tx) / 2},${y} ${(x + tx) / 2},${ty} ${tx},${ty}` : ` C${x},${(y + ty) / 2} ${tx},${(y + ty) / 2} ${tx},${ty}`;
    [x, y] = out(s);
    if (!s.step) d += ` L${x},${y}`;
  }
  return d;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

const FILL = { pending: "#e4e8ee", running: "#cfe3ff", retrying: "#cfe3ff", waiting: "#fff0c2", awaiting_approval: "#fff0c2",
  succeeded: "#d3f5dc", failed: "#ffd8d6", rejected: "#ffd8d6", skipped: "#eeeeee", cancelled: "#e6dcf5" };

function fitting(graph, width) {
  const across = place(graph, "across");
  return across.width * MIN_SCALE.across <= width ? across : place(graph, "down");
}

// Draws into `box`; returns update(execution, selected) to recolour it, live.
export function drawGraph(box, doc, onSelect) {
  const nodes = dependencies(doc);
  const graph = slots(nodes);
  let shapes = {}, edges = [], shown = null, direction = null;

  const draw = () => {
    const laid = fitting(graph, box.clientWidth || 1200);
    direction = laid.direction;
    const root = svg("svg", { width: laid.width, height: laid.height, viewBox: `0 0 ${laid.width} ${laid.height}`,
      role: "group", "aria-label": "Steps of the runbook", "data-direction": laid.direction });
    root.style.minWidth = `${Math.round(laid.width * MIN_SCALE.down)}px`;
    const defs = svg("defs");
    const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" });
    marker.append(svg("path", { d: "M0,0 L10,5 L0,10 z", fill: "#6b7785" }));
    defs.append(marker);
    root.append(defs);
    edges = graph.edges.map(({ from, to, chain }) => {
      const path = svg("path", { class: "edge", "marker-end": "url(#arrow)", "data-from": from, "data-to": to, d: route(chain, laid) });
      root.append(path);
      return { path, to };
    });
    shapes = {};
    for (const n of nodes) {
      const { x, y } = laid.at.get(graph.slot[n.id]);
      const g = svg("g", { class: "node", tabindex: "0", role: "button", "data-step": n.id, transform: `translate(${x},${y})` });
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
    if (shown) update(...shown);
  };

  const update = (execution, selected) => {
    shown = [execution, selected];
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

  draw();
  new ResizeObserver(() => { if (fitting(graph, box.clientWidth).direction !== direction) draw(); }).observe(box);
  return update;
}
