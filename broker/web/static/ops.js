// The ops view: reads /ui/api/ops and draws it. Text goes in with textContent only.
"use strict";

const SVG = "http://www.w3.org/2000/svg";

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 120) return `${seconds} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h`;
  return `${Math.round(seconds / 86400)} d`;
}

function fill(tableId, rows) {
  const body = document.querySelector(`#${tableId} tbody`);
  body.replaceChildren();
  for (const cells of rows) {
    const tr = document.createElement("tr");
    for (const [value, cls] of cells) tr.append(el("td", value, cls));
    body.append(tr);
  }
}

function drawGraph(flows) {
  const graph = document.getElementById("graph");
  graph.replaceChildren();
  const senders = [...new Set(flows.map((f) => f.sender))].sort();
  const recipients = [...new Set(flows.map((f) => f.recipient))].sort();
  const rowH = 34;
  const height = Math.max(senders.length, recipients.length, 1) * rowH + 20;
  const width = 900;
  const left = 190;
  const right = width - 230;
  graph.setAttribute("height", height);
  graph.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const y = (list, name) => 20 + list.indexOf(name) * rowH + rowH / 2 - 10;
  const pairs = new Map();
  for (const f of flows) {
    const key = `${f.sender}\u0000${f.recipient}`;
    const p = pairs.get(key) || { sender: f.sender, recipient: f.recipient, disclosed: 0, refused: 0, perHour: 0, purposes: [] };
    p.disclosed += f.disclosed;
    p.refused += f.refused;
    p.perHour += f.per_hour;
    p.purposes.push(f.purpose);
    pairs.set(key, p);
  }
  const max = Math.max(1, ...[...pairs.values()].map((p) => p.disclosed + p.refused));
  for (const p of pairs.values()) {
    const y1 = y(senders, p.sender);
    const y2 = y(recipients, p.recipient);
    const widthPx = 1.5 + (6 * (p.disclosed + p.refused)) / max;
    const path = svg("path", {
      d: `M ${left} ${y1} C ${(left + right) / 2} ${y1}, ${(left + right) / 2} ${y2}, ${right} ${y2}`,
      class: p.disclosed ? "edge" : "edge refused",
      "stroke-width": widthPx,
      "data-from": p.sender,
      "data-to": p.recipient,
    });
    path.append(svg("title", {}, `${p.sender} → ${p.recipient}: ${p.disclosed} disclosed, ${p.refused} refused`));
    graph.append(path);
  }
  senders.forEach((name) => {
    const cy = y(senders, name);
    graph.append(svg("circle", { cx: left, cy, r: 6, class: "node" }));
    graph.append(svg("text", { x: left - 10, y: cy + 4, "text-anchor": "end" }, name));
  });
  recipients.forEach((name) => {
    const cy = y(recipients, name);
    graph.append(svg("circle", { cx: right, cy, r: 6, class: "node" }));
    const label = [...pairs.values()].filter((p) => p.recipient === name)
      .map((p) => `${p.disclosed} (${p.perHour.toFixed(2)}/h)`).join(", ");
    graph.append(svg("text", { x: right + 10, y: cy + 4 }, `${name}  ${label}`));
  });
}

// Accepts both this module's shape and broker.ops.metrics.ops_snapshot's (count, referral_id, at).
function normalise(data) {
  const flows = (data.flows || []).map((f) => ({
    sender: f.sender, recipient: f.recipient, purpose: f.purpose,
    disclosed: f.disclosed ?? f.count ?? 0, refused: f.refused ?? 0, per_hour: f.per_hour ?? 0,
  }));
  const overdue = (data.overdue || []).map((o) => ({
    message_id: o.message_id ?? o.referral_id, purpose: o.purpose, recipient: o.recipient,
    due_at: o.due_at, overdue_s: o.overdue_s ?? null, acknowledged_at: o.acknowledged_at ?? null,
  }));
  const health = {};
  for (const [k, v] of Object.entries(data.health || {})) {
    if (v === null || typeof v === "object") continue;
    health[k] = v === true || v === "reachable" ? "up" : v === false || v === "unreachable" ? "down" : String(v);
  }
  return {
    generated_at: data.generated_at ?? data.at, flows, overdue, health,
    agencies: data.agencies || [], overdue_total: data.overdue_total ?? overdue.length,
    overdue_late: data.overdue_late ?? overdue.filter((o) => o.acknowledged_at).length,
    dlq: data.dlq ?? null, quarantine: data.quarantine ?? null,
    credentials: data.credentials || [],
    horizons: data.horizons ?? null,
  };
}

const DAY_S = 86400;

// The health panel's lines for broker.ops.health.horizons: [name, text, up|down].
function horizonLines(h) {
  if (!h) return [];
  const lines = [];
  const a = h.auditor || {};
  if (a.checkpoint_age_s !== null && a.checkpoint_age_s !== undefined) {
    lines.push(["auditor checkpoint", `${a.checkpoint_age_s} s ago${a.size !== null && a.size !== undefined ? `, ${a.size} entries` : ""}`, "up"]);
  }
  for (const [name, c] of [["registry expires", h.registry], ["first certificate expires", h.certificate]]) {
    if (!c) continue;
    const days = Math.floor(Math.abs(c.seconds_left) / DAY_S);
    const text = c.seconds_left > 0 ? `in ${days} days (${c.kind} ${c.subject})` : `EXPIRED ${days} days ago (${c.kind} ${c.subject})`;
    lines.push([name, text, c.seconds_left > 14 * DAY_S ? "up" : "down"]);
  }
  const cal = h.calendar || {};
  if (cal.last_day) {
    const text = cal.days_left >= 0 ? `${cal.last_day} (in ${cal.days_left} days)` : `ENDED ${cal.last_day}: Encompass deadlines follow the conservative rule`;
    lines.push(["school calendar ends", text, cal.days_left > 14 ? "up" : "down"]);
  } else {
    lines.push(["school calendar ends", "no term dates", "down"]);
  }
  return lines;
}

function render(raw) {
  const data = normalise(raw);
  document.getElementById("generated").textContent = `as of ${data.generated_at}`;
  const health = document.getElementById("health");
  health.replaceChildren();
  for (const [name, state] of Object.entries(data.health)) {
    const li = el("li", `${name}: ${state}`, state);
    li.dataset.component = name;
    health.append(li);
  }
  for (const [name, text, state] of horizonLines(data.horizons)) {
    const li = el("li", `${name}: ${text}`, state);
    li.dataset.component = name;
    health.append(li);
  }
  document.getElementById("dlq").textContent = data.dlq === null ? "unknown" : data.dlq;
  document.getElementById("quarantine").textContent =
    data.quarantine === null ? "not tracked by the broker" : data.quarantine;
  drawGraph(data.flows);
  fill("flows", data.flows.map((f) => [
    [f.sender], [f.recipient], [f.purpose],
    [f.disclosed, "num"], [f.refused, "num"], [f.per_hour.toFixed(3), "num"],
  ]));
  fill("lag", data.agencies.map((a) => [
    [a.agency], [a.unacknowledged, "num"], [duration(a.oldest_unacknowledged_s), "num"],
  ]));
  // The store's count (the figure /metrics and cairn status show), late ones included.
  document.getElementById("overdue-total").textContent =
    `${data.overdue_total} (${data.overdue_late} acknowledged late)`;
  fill("overdue", data.overdue.map((o) => [
    [o.message_id], [o.purpose], [o.recipient], [o.due_at], [duration(o.overdue_s), "num"],
    [o.acknowledged_at ? `late, ${o.acknowledged_at}` : "not yet"],
  ]));
  document.getElementById("credentials-total").textContent = data.credentials.length;
  fill("credentials", data.credentials.map((c) => [
    [c.kind], [c.subject], [c.expires_at],
    [c.seconds_left > 0 ? duration(c.seconds_left) : "expired", "num"],
  ]));
}

async function refresh() {
  const error = document.getElementById("error");
  const windowS = document.getElementById("window").value;
  try {
    const response = await fetch(`/ui/api/ops?window_s=${encodeURIComponent(windowS)}`, {
      credentials: "same-origin",
      cache: "no-store",
    });
    const body = await response.json();
    if (!response.ok) throw new Error(body.detail || body.title || response.statusText);
    render(body);
    error.hidden = true;
    document.body.dataset.loaded = "true";
  } catch (exc) {
    error.textContent = `Could not load the ops data: ${exc.message}`;
    error.hidden = false;
  }
}

document.getElementById("window").addEventListener("change", refresh);
refresh();
setInterval(refresh, 15000);
