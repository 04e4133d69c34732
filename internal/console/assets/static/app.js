// Ferry's web console. Everything shown comes from the MMC's admin API:
// live state from the server-sent event stream /ui/events, actions
// through /ui/api/… with the session's CSRF token. Text from the network
// is only ever set as textContent (never parsed as HTML).
"use strict";

const csrf = document.querySelector('meta[name="csrf-token"]').content;
const $ = (id) => document.getElementById(id);
let state = {};
const samples = new Map(); // migration id → [{t, remaining, dirty, rate}]
let selected = null; // migration shown in detail

// ---- helpers -------------------------------------------------------------

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "on") for (const [ev, f] of Object.entries(v)) e.addEventListener(ev, f);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

// refill rebuilds a table's rows only when what they show changed: rows
// rebuilt every second would swallow a click that lands mid-rebuild.
function refill(tbody, data, build) {
  const key = JSON.stringify(data);
  if (tbody.dataset.key === key) return;
  tbody.dataset.key = key;
  fill(tbody, build());
}

const pct = (x) => (100 * (x || 0)).toFixed(0) + " %";
const mbit = (bytesPerSec) => ((8 * (bytesPerSec || 0)) / 1e6).toFixed(1) + " Mbit/s";
const mib = (bytes) => ((bytes || 0) / 1048576).toFixed(1) + " MiB";
const when = (t) => (t ? new Date(t).toLocaleTimeString() : "");
const ended = (s) => s === "completed" || s === "cancelled" || s === "failed";

function toast(msg, bad) {
  const t = $("toast");
  t.textContent = msg;
  t.className = bad ? "bad" : "";
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (t.hidden = true), 5000);
}

async function api(method, path, body) {
  const res = await fetch("/ui/api/" + path, {
    method,
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = { error: text }; }
  if (res.status === 401) location.assign("/ui/login");
  if (!res.ok) throw new Error((data && data.error) || res.status + " " + res.statusText);
  return data;
}

async function act(label, f) {
  try {
    await f();
    toast(label + ": done");
  } catch (e) {
    toast(label + ": " + e.message, true);
  }
}

// ---- views ---------------------------------------------------------------

for (const b of document.querySelectorAll("nav button")) {
  b.addEventListener("click", () => show(b.dataset.view));
}

function show(view) {
  for (const b of document.querySelectorAll("nav button")) b.classList.toggle("active", b.dataset.view === view);
  for (const s of document.querySelectorAll("main > section")) s.hidden = s.id !== "view-" + view;
  if (view === "audit") loadAudit();
}

function renderPending() {
  const pending = (state.agents || []).filter((a) => a.state === "pending");
  $("pending-none").hidden = pending.length > 0;
  refill($("pending").tBodies[0], pending, () => pending.map((a) => el("tr", { "data-agent": a.id },
    el("td", {}, a.id), el("td", {}, a.hostname), el("td", {}, a.site), el("td", {}, a.enrol_addr),
    el("td", {}, when(a.enrolled_at)),
    el("td", {},
      el("button", { class: "approve", on: { click: () => act("approve " + a.id, () => api("POST", "agents/" + encodeURIComponent(a.id) + "/approve", {})) } }, "Approve"),
      el("button", { class: "reject", on: { click: () => act("reject " + a.id, () => api("POST", "agents/" + encodeURIComponent(a.id) + "/reject", {})) } }, "Reject")))));
}

function renderSites() {
  const hosts = state.hosts || [];
  const vms = state.vms || [];
  const bySite = new Map();
  for (const h of hosts) {
    if (!bySite.has(h.site)) bySite.set(h.site, []);
    bySite.get(h.site).push(h);
  }
  const blocks = [];
  for (const [site, hs] of [...bySite.entries()].sort()) {
    const rows = [];
    for (const h of hs.sort((a, b) => a.id.localeCompare(b.id))) {
      rows.push(el("tr", { class: "host" + (h.online ? "" : " offline"), "data-host": h.id },
        el("td", {}, h.id + (h.online ? "" : " (offline)")), el("td", {}, ""), el("td", {}, pct(h.cpu)), el("td", {}, pct(h.mem)),
        el("td", {}, mbit(h.net)), el("td", {}, h.vms + " VMs")));
      for (const v of vms.filter((v) => v.host === h.id)) {
        rows.push(el("tr", { class: "vm", "data-vm": v.id },
          el("td", {}, ""), el("td", {}, v.id + " (" + v.state + ")"), el("td", {}, pct(v.cpu)), el("td", {}, pct(v.mem)),
          el("td", {}, mbit(v.net)), el("td", {}, "dirty " + mbit(v.dirty))));
      }
    }
    blocks.push(el("div", { class: "site" }, el("h3", {}, "Site " + site),
      el("table", {}, el("thead", {}, el("tr", {}, ...["Host", "VM", "CPU", "Memory", "Network", ""].map((x) => el("th", {}, x)))), el("tbody", {}, ...rows))));
  }
  $("sites").replaceChildren(...blocks);
}

function renderMigrateForm() {
  const vmSel = $("migrate-vm"), toSel = $("migrate-to");
  const keep = (sel, opts) => {
    const cur = sel.value;
    const want = opts.join("\n");
    if (sel.dataset.opts === want) return;
    sel.dataset.opts = want;
    sel.replaceChildren(...opts.map((o) => el("option", { value: o }, o)));
    if (opts.includes(cur)) sel.value = cur;
  };
  keep(vmSel, (state.vms || []).filter((v) => v.state === "running").map((v) => v.id).sort());
  keep(toSel, (state.hosts || []).filter((h) => h.online).map((h) => h.id).sort());
}

$("migrate-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const req = { vm: $("migrate-vm").value, to: $("migrate-to").value };
  const cap = parseFloat($("migrate-cap").value);
  if (cap > 0) req.max_bandwidth = (cap * 1e6) / 8;
  act("migrate " + req.vm + " to " + req.to, async () => {
    const m = await api("POST", "migrations", req);
    selected = m.id;
  });
});

function sample(m) {
  if (!m.live) return;
  let s = samples.get(m.id);
  if (!s) samples.set(m.id, (s = []));
  const t = Date.parse(state.time);
  if (s.length && s[s.length - 1].t === t) return;
  s.push({ t, remaining: m.live.remaining, dirty: m.live.dirty_rate, rate: m.live.rate });
  if (s.length > 600) s.shift();
}

function renderMigrations() {
  const ms = (state.migrations || []).slice().sort((a, b) => Date.parse(b.created) - Date.parse(a.created)).slice(0, 50);
  for (const m of ms) sample(m);
  const progress = (m) => (m.live ? m.live.progress : m.state === "completed" ? 1 : m.progress || 0);
  // The rows are rebuilt when the set of migrations or a state changes;
  // progress and rate, which change every second while one copies, are
  // updated in place (a row rebuilt under the pointer loses the click).
  const shown = ms.map((m) => [m.id, m.vm, m.from, m.to, m.state, m.path, m.by]);
  const tbody = $("migrations").tBodies[0];
  refill(tbody, [selected, shown], () => ms.map((m) => {
    const row = el("tr", { "data-migration": m.id, "data-state": m.state, class: m.id === selected ? "selected" : "" },
      el("td", {}, el("a", { href: "#", on: { click: (e) => { e.preventDefault(); selected = m.id; renderDetail(); renderMigrations(); } } }, m.id)),
      el("td", {}, m.vm), el("td", {}, m.from + " → " + m.to), el("td", { class: "state" }, m.state),
      el("td", {}, el("progress", { max: "1" })), el("td", { class: "path" }, m.path || ""), el("td", { class: "rate" }, ""),
      el("td", {}, m.by),
      el("td", {}, ended(m.state) ? "" : el("button", { class: "cancel", on: { click: () => act("cancel " + m.id, () => api("POST", "migrations/" + encodeURIComponent(m.id) + "/cancel", {})) } }, "Cancel")));
    return row;
  }));
  for (const m of ms) {
    const row = tbody.querySelector('tr[data-migration="' + CSS.escape(m.id) + '"]');
    if (!row) continue;
    row.querySelector("progress").value = progress(m);
    row.querySelector("td.rate").textContent = m.live ? mbit(m.live.rate) : "";
  }
  renderDetail();
}

function chart(svgEl, series) {
  // series: [{points: [[x, y]], cls}]; x in seconds, y any unit.
  const W = 400, H = 150, P = 4;
  let xmax = 1, ymax = 1;
  for (const s of series) for (const [x, y] of s.points) { xmax = Math.max(xmax, x); ymax = Math.max(ymax, y); }
  const nodes = [svg("rect", { x: 0, y: 0, width: W, height: H, class: "bg" })];
  for (const s of series) {
    if (!s.points.length) continue;
    const pts = s.points.map(([x, y]) => (P + (x / xmax) * (W - 2 * P)).toFixed(1) + "," + (H - P - (y / ymax) * (H - 2 * P)).toFixed(1)).join(" ");
    nodes.push(svg("polyline", { points: pts, class: s.cls }));
  }
  const label = svg("text", { x: W - P, y: 14, class: "axis", "text-anchor": "end" });
  label.textContent = "max " + ymax.toFixed(1) + " · " + xmax.toFixed(0) + " s";
  nodes.push(label);
  svgEl.replaceChildren(...nodes);
}

function renderDetail() {
  const m = (state.migrations || []).find((x) => x.id === selected);
  $("detail").hidden = !m;
  if (!m) return;
  $("detail-title").textContent = "Migration " + m.id + ": " + m.vm + " " + m.from + " → " + m.to;
  const facts = [["State", m.state], ["Path", m.path || "—"], ["Reason", m.reason]];
  if (m.live) {
    facts.push(["Remaining", mib(m.live.remaining) + " of " + mib(m.live.total)], ["Round", m.live.round],
      ["Throughput", mbit(m.live.rate)], ["Dirty rate", mbit(m.live.dirty_rate)],
      ["Expected downtime", m.live.expected_downtime_ms + " ms"], ["ETA", m.live.eta_s.toFixed(1) + " s"]);
  }
  if (m.max_bandwidth) facts.push(["Bandwidth cap", mbit(m.max_bandwidth)]);
  if (ended(m.state)) facts.push(["Total", m.total_ms + " ms"], ["Downtime", m.downtime_ms + " ms"], ["On the wire", mib(m.bytes_on_wire)]);
  if (m.error) facts.push(["Error", m.error]);
  $("cap-form").hidden = !["planned", "preparing", "transferring"].includes(m.state) || !!m.armed_at;
  $("detail-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { "data-fact": k }, v)]));
  const s = samples.get(m.id) || [];
  const t0 = s.length ? s[0].t : 0;
  chart($("chart-remaining"), [{ cls: "remaining", points: s.map((p) => [(p.t - t0) / 1000, p.remaining / 1048576]) }]);
  chart($("chart-rates"), [
    { cls: "dirty", points: s.map((p) => [(p.t - t0) / 1000, (8 * p.dirty) / 1e6]) },
    { cls: "rate", points: s.map((p) => [(p.t - t0) / 1000, (8 * p.rate) / 1e6]) },
  ]);
  renderTimeline(m);
}

$("cap-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const id = selected;
  const mbitps = parseFloat($("cap-value").value);
  if (!id || !(mbitps >= 0)) return;
  act("bandwidth cap of " + id, () => api("POST", "migrations/" + encodeURIComponent(id) + "/bandwidth", { max_bandwidth: (mbitps * 1e6) / 8 }));
});

// The switch-over, from the source's pause to the destination running.
function renderTimeline(m) {
  const steps = [["paused", m.paused_at], ["last byte sent", m.sent_at], ["verified", m.verified_at], ["committed", m.committed_at], ["resumed", m.resumed_at]]
    .filter(([, t]) => t);
  const box = $("timeline");
  if (!m.paused_at || steps.length < 2) { box.replaceChildren(); return; }
  const p0 = Date.parse(m.paused_at);
  box.replaceChildren(el("h3", {}, "Switch-over"), el("ol", { class: "timeline" },
    ...steps.map(([name, t]) => el("li", { "data-step": name }, "+" + (Date.parse(t) - p0) + " ms  " + name))));
}

function renderPolicyStatus() {
  const st = state.policy;
  const held = (st && st.held) || [];
  let text = "";
  if (!st) text = "The policy engine's status is not available right now.";
  else if (st.mode === "off") text = "The policy is off: nothing is evaluated.";
  else if (!st.evaluated_at) text = "The policy engine (mode " + st.mode + ") has not evaluated since this MMC took the lead.";
  else if (!held.length && !st.decided) text = "At " + when(st.evaluated_at) + " no VM violated its SLA (mode " + st.mode + ").";
  else if (!held.length) text = "At " + when(st.evaluated_at) + ": " + st.decided + " decision(s), nothing held back (mode " + st.mode + ").";
  else text = "Held back at " + when(st.evaluated_at) + " (mode " + st.mode + "):";
  $("policy-summary").textContent = text;
  $("held").hidden = !held.length;
  refill($("held").tBodies[0], held, () => held.map((h) => el("tr", { "data-held": h.vm }, el("td", {}, h.vm), el("td", {}, h.host), el("td", {}, h.reason))));
}

function renderDecisions() {
  renderPolicyStatus();
  const ds = (state.decisions || []).slice().reverse();
  refill($("decisions").tBodies[0], ds, () => ds.map((d) => el("tr", {},
    el("td", {}, when(d.time)), el("td", {}, d.vm), el("td", {}, d.from + " → " + (d.to || "—")),
    el("td", {}, d.mode), el("td", {}, d.action), el("td", {}, d.reason))));
}

function renderAlarms() {
  const as = state.alarms || [];
  const open = as.filter((a) => !a.acked_at).length;
  $("alarm-count").textContent = open ? "(" + open + ")" : "";
  refill($("alarms").tBodies[0], as, () => as.map((a) => el("tr", { "data-alarm": a.seq, class: a.acked_at ? "acked" : "open" },
    el("td", {}, a.seq), el("td", {}, when(a.time)), el("td", {}, a.host), el("td", {}, a.kind), el("td", {}, a.message),
    el("td", {}, a.acked_at ? "acknowledged by " + a.acked_by :
      el("button", { class: "ack", on: { click: () => act("acknowledge alarm " + a.seq, () => api("POST", "alarms/" + a.seq + "/ack", {})) } }, "Acknowledge")))));
}

async function loadAudit() {
  try {
    const es = await api("GET", "audit?order=newest&limit=200");
    fill($("audit").tBodies[0], (es || []).map((e) => el("tr", {},
      el("td", {}, e.seq), el("td", {}, when(e.time)), el("td", {}, e.actor), el("td", {}, e.action),
      el("td", {}, e.target), el("td", {}, e.source), el("td", {}, e.outcome), el("td", {}, e.detail))));
  } catch (e) {
    toast("audit: " + e.message, true);
  }
}
$("audit-refresh").addEventListener("click", loadAudit);

$("logout").addEventListener("click", async () => {
  await fetch("/ui/logout", { method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": csrf } });
  location.assign("/ui/login");
});

// ---- live state ------------------------------------------------------------

function render() {
  renderPending();
  renderSites();
  renderMigrateForm();
  renderMigrations();
  renderDecisions();
  renderAlarms();
  const errs = state.errors ? Object.entries(state.errors).map(([k, v]) => k + ": " + v).join("; ") : "";
  $("conn").textContent = errs ? "partial: " + errs : "live " + when(state.time);
  $("conn").className = "conn " + (errs ? "warn" : "ok");
}

const events = new EventSource("/ui/events");
events.addEventListener("state", (ev) => {
  state = JSON.parse(ev.data);
  render();
});
events.addEventListener("logout", () => location.assign("/ui/login"));
events.addEventListener("error", () => {
  $("conn").textContent = "reconnecting…";
  $("conn").className = "conn warn";
});
