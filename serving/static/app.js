// dealrisk manager page: vanilla JS, no dependencies. Every value from the API is inserted as text
// (textContent / createTextNode), never as HTML, so a deal name cannot inject markup.
"use strict";

const KEY_STORE = "dealrisk.apiKey";
const SVG_NS = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

const money = (x) => (x === null || x === undefined ? "–" :
  Number(x).toLocaleString(undefined, { maximumFractionDigits: 0 }));
const pct = (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(0)}%`);
const num = (x, d = 1) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));

class ApiError extends Error {}

async function api(path, accept = "application/json") {
  const key = sessionStorage.getItem(KEY_STORE);
  const res = await fetch(path, { headers: { Authorization: `Bearer ${key}`, Accept: accept } });
  if (res.status === 401) { logout("That key was not accepted."); throw new ApiError("unauthorised"); }
  if (!res.ok) {
    let detail = res.statusText;
    try { detail = (await res.json()).detail; } catch (_) { /* not JSON */ }
    throw new ApiError(`${res.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
  }
  return accept === "text/csv" ? res.blob() : res.json();
}

function filterQuery() {
  const q = new URLSearchParams();
  const owner = $("f-owner").value.trim(), team = $("f-team").value.trim(), min = $("f-min").value;
  if (owner) q.set("owner", owner);
  if (team) q.set("team", team);
  if (min !== "") q.set("min_amount", min);
  return q;
}

function showError(message) { $("app-error").textContent = message || ""; }

function logout(message) {
  sessionStorage.removeItem(KEY_STORE);
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("model").textContent = "";
}

async function connect() {
  try {
    const data = await api("/v1/pipelines");
    const select = $("pipeline");
    select.replaceChildren(...data.pipelines.map((p) => el("option", { value: p.name }, p.name)));
    if (!data.pipelines.length) { $("login-error").textContent = "This key may see no pipeline."; return; }
    $("login").hidden = true;
    $("app").hidden = false;
    await refresh();
  } catch (e) {
    if (!(e instanceof ApiError) || e.message !== "unauthorised") $("login-error").textContent = e.message;
  }
}

async function refresh() {
  showError("");
  const p = encodeURIComponent($("pipeline").value);
  const results = await Promise.allSettled([
    api(`/v1/pipelines/${p}/at-risk?${filterQuery()}&limit=50`).then(renderAtRisk),
    api(`/v1/pipelines/${p}/health?by=team`).then(renderHealth),
    api(`/v1/pipelines/${p}/forecast?months=3`).then(renderForecast),
  ]);
  const failed = results.filter((r) => r.status === "rejected").map((r) => r.reason.message);
  if (failed.length) showError(failed.join(" · "));
}

function renderAtRisk(data) {
  $("model").textContent = `model version ${data.model_version}`;
  $("risk-count").textContent = `${data.total} open deal(s) match; showing ${data.deals.length}`;
  const rows = data.deals.map((d) => {
    const reasons = el("ul", { class: "reasons" }, ...d.reasons.slice(0, 2).map((r) => el("li", {}, r.text)));
    const band = el("span", { class: `band ${d.risk_band}` }, `${pct(d.cold_risk)} ${d.risk_band}`);
    return el("tr", {},
      el("td", {}, String(d.rank)), el("td", {}, d.deal_id), el("td", {}, d.owner ?? "–"),
      el("td", {}, d.team ?? "–"),
      el("td", {}, `${d.stage ?? "–"} (${num(d.days_in_stage, 0)} d)`),
      el("td", { class: "num" }, money(d.amount)), el("td", { class: "num" }, band),
      el("td", { class: "num" }, pct(d.close_probability)), el("td", {}, reasons));
  });
  $("at-risk").tBodies[0].replaceChildren(...rows);
}

function figure(label, value) {
  return el("div", { class: "figure" }, el("div", { class: "label" }, label), el("div", { class: "value" }, value));
}

function renderHealth(data) {
  const h = Object.values(data.pipelines)[0] || data.overall;
  $("health-window").textContent = `${data.since.slice(0, 10)} → ${data.until.slice(0, 10)}`;
  $("health-figures").replaceChildren(
    figure("Open deals", String(h.open_deals)), figure("Avg deal size", money(h.avg_deal_size)),
    figure("Win rate", pct(h.win_rate)), figure("Avg cycle (days)", num(h.avg_cycle_days)),
    figure("Sales velocity / day", money(h.sales_velocity)), figure("Stalled deals", String(h.stalled_count)));
  $("funnel").replaceChildren(funnelChart(h.funnel || []));
  const stalled = (h.stalled_deals || []).slice(0, 10).map((s) =>
    el("tr", {}, el("td", {}, s.deal_id), el("td", {}, s.stage), el("td", {}, s.owner ?? "–"),
      el("td", { class: "num" }, `${num(s.days_in_stage, 0)} / ${num(s.threshold_days, 0)} d`)));
  $("stalled").replaceChildren(stalled.length
    ? el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "Deal"), el("th", {}, "Stage"),
        el("th", {}, "Owner"), el("th", { class: "num" }, "In stage / limit"))), el("tbody", {}, ...stalled))
    : el("p", { class: "muted" }, "No stalled deals."));
}

// Horizontal bars: length = deals that reached the stage; red tail = share lost there.
function funnelChart(funnel) {
  const width = 460, row = 28, left = 130, barMax = width - left - 110;
  const chart = svg("svg", { width, height: Math.max(row, funnel.length * row) + 4, role: "img",
    "aria-label": "funnel by stage" });
  const maxReached = Math.max(1, ...funnel.map((f) => f.reached));
  funnel.forEach((f, i) => {
    const y = i * row + 4, w = (barMax * f.reached) / maxReached, lostW = w * (f.lost_share || 0);
    chart.append(svg("text", { x: 0, y: y + 15 }, f.stage));
    chart.append(svg("rect", { class: "bar", x: left, y, width: Math.max(0, w - lostW), height: row - 8 }));
    chart.append(svg("rect", { class: "lost", x: left + w - lostW, y, width: lostW, height: row - 8 }));
    chart.append(svg("text", { x: left + w + 6, y: y + 15 },
      `${f.reached} · on ${pct(f.moved_on_share)} · lost ${pct(f.lost_share)}`));
  });
  return chart;
}

// One group per month: a bar for the expected won amount and a whisker from P10 to P90.
function renderForecast(data) {
  const buckets = [...data.periods.map((p) => ({ ...p, label: p.period })),
    { ...data.unscheduled, label: "no date" }];
  const width = 520, height = 220, left = 70, bottom = 30, top = 10;
  const slot = (width - left) / buckets.length;
  const max = Math.max(1, ...buckets.map((b) => Math.max(b.p90, b.expected_won_amount)));
  const y = (v) => top + (height - top - bottom) * (1 - v / max);
  const chart = svg("svg", { width, height, role: "img", "aria-label": "forecast by month" });
  for (const t of [0, 0.5, 1]) {
    chart.append(svg("line", { class: "grid", x1: left, x2: width, y1: y(max * t), y2: y(max * t) }));
    chart.append(svg("text", { x: 0, y: y(max * t) + 4 }, money(max * t)));
  }
  buckets.forEach((b, i) => {
    const cx = left + slot * i + slot / 2, bw = slot * 0.4;
    chart.append(svg("rect", { class: "bar", x: cx - bw / 2, y: y(b.expected_won_amount), width: bw,
      height: y(0) - y(b.expected_won_amount) }));
    chart.append(svg("line", { class: "range", x1: cx, x2: cx, y1: y(b.p10), y2: y(b.p90) }));
    chart.append(svg("line", { class: "range", x1: cx - 6, x2: cx + 6, y1: y(b.p10), y2: y(b.p10) }));
    chart.append(svg("line", { class: "range", x1: cx - 6, x2: cx + 6, y1: y(b.p90), y2: y(b.p90) }));
    chart.append(svg("text", { x: cx - 24, y: height - 12 }, `${b.label} (${b.deals})`));
    chart.append(svg("title", {}, `${b.label}: expected ${money(b.expected_won_amount)}, ` +
      `P10 ${money(b.p10)}, P50 ${money(b.p50)}, P90 ${money(b.p90)}`));
  });
  $("forecast").replaceChildren(chart);
  $("forecast-note").textContent = `Model version ${data.model_version}; ${data.note}; ` +
    `${data.later.deals} deal(s) due later (expected ${money(data.later.expected_won_amount)}).`;
}

async function downloadCsv() {
  try {
    const p = $("pipeline").value;
    const blob = await api(`/v1/pipelines/${encodeURIComponent(p)}/at-risk?${filterQuery()}&limit=1000`,
      "text/csv");
    const link = el("a", { href: URL.createObjectURL(blob), download: `at-risk-${p}.csv` });
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);  // the browser may still be reading it
  } catch (e) { showError(e.message); }
}

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY_STORE, $("api-key").value.trim());
    $("api-key").value = "";
    connect();
  });
  $("pipeline").addEventListener("change", refresh);
  $("apply").addEventListener("click", refresh);
  $("csv").addEventListener("click", downloadCsv);
  $("logout").addEventListener("click", () => logout(""));
  if (sessionStorage.getItem(KEY_STORE)) connect();
});
