// dealrisk manager page: vanilla JS, no dependencies, no CDN. Every value from the API is inserted as
// text (textContent / createTextNode), never as HTML, so a deal name cannot inject markup.
//
// State lives in the URL (?pipeline=&view=&owner=&team=&min_amount=&close_before=&sort=&page=&deal=
// &since=), so a view survives a reload and can be shared. Each view load gets a sequence number and an
// AbortController: starting a new load aborts the previous one, and a response whose number is not the
// latest is dropped, so one pipeline's figures can never be shown under another's name.
"use strict";

const KEY_STORE = "dealrisk.apiKey";
const SVG_NS = "http://www.w3.org/2000/svg";
const PAGE_SIZE = 25;
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) node.setAttribute(k, v);
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

const missing = (x) => x === null || x === undefined || Number.isNaN(x);
const money = (x) => (missing(x) ? "–" : Number(x).toLocaleString("en-US", { maximumFractionDigits: 0 }));
const pct = (x, d = 0) => (missing(x) ? "–" : `${(100 * x).toFixed(d)}%`);
const num = (x, d = 1) => (missing(x) ? "–" : Number(x).toFixed(d));
const day = (x) => (missing(x) ? "–" : String(x).slice(0, 10));
const byText = (a, b) => a.localeCompare(b, undefined, { sensitivity: "base" }) || a.localeCompare(b);

class ApiError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

// ---- API ------------------------------------------------------------------------------------------
async function api(path, { accept = "application/json", signal } = {}) {
  const key = sessionStorage.getItem(KEY_STORE);
  const res = await fetch(path, { headers: { Authorization: `Bearer ${key}`, Accept: accept }, signal });
  if (res.status === 401) { logout("That key was not accepted."); throw new ApiError("unauthorised", 401); }
  if (!res.ok) {
    let detail = res.statusText;
    try { detail = (await res.json()).detail; } catch (_) { /* not JSON */ }
    throw new ApiError(`${res.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`,
      res.status);
  }
  return accept === "text/csv" ? res.blob() : res.json();
}

// ---- URL state ------------------------------------------------------------------------------------
const VIEWS = { cold: "Going cold", stale: "Clean-up: effectively dead deals", changes: "What changed",
  teams: "Teams and owners", forecast: "Forecast", model: "Model", deal: "Deal" };
const FILTERS = ["owner", "team", "min_amount", "close_before"];
const SORTS = { value_at_risk: "Value at risk", cold_risk: "Cold risk", amount: "Amount",
  close_date: "Close date (soonest)", days_in_stage: "Days in stage" };

function state() {
  const q = new URLSearchParams(location.search);
  return {
    pipeline: q.get("pipeline") || "", view: VIEWS[q.get("view")] ? q.get("view") : "cold",
    owner: q.get("owner") || "", team: q.get("team") || "", min_amount: q.get("min_amount") || "",
    close_before: q.get("close_before") || "", sort: SORTS[q.get("sort")] ? q.get("sort") : "",
    page: Math.max(1, parseInt(q.get("page") || "1", 10) || 1), deal: q.get("deal") || "",
    since: q.get("since") || "",
  };
}

function urlFor(changes) {
  const next = { ...state(), ...changes };
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(next)) {
    if (v === "" || v === null || v === undefined) continue;
    if ((k === "page" && v === 1) || (k === "view" && v === "cold")) continue;
    if (k === "deal" && next.view !== "deal") continue;
    q.set(k, String(v));
  }
  return `${location.pathname}?${q}`;
}

function navigate(changes, { replace = false, focus = false } = {}) {
  const url = urlFor(changes);
  if (replace) history.replaceState(null, "", url); else history.pushState(null, "", url);
  return load({ focus });
}

function filterQuery(s, { withAmount = true } = {}) {
  const q = new URLSearchParams();
  if (s.owner) q.set("owner", s.owner);
  if (s.team) q.set("team", s.team);
  if (withAmount && s.min_amount) q.set("min_amount", s.min_amount);
  if (withAmount && s.close_before) q.set("close_before", s.close_before);
  return q;
}

function filterText(s, { withAmount = true } = {}) {
  const parts = [];
  if (s.owner) parts.push(`owner ${s.owner}`);
  if (s.team) parts.push(`team ${s.team}`);
  if (withAmount && s.min_amount) parts.push(`amount at least ${money(s.min_amount)}`);
  if (withAmount && s.close_before) parts.push(`expected close before ${s.close_before}`);
  return parts.length ? `Filtered to ${parts.join(", ")}.` : "No filters: every open deal of the pipeline.";
}

// ---- sign in / out --------------------------------------------------------------------------------
let pipelines = [];

function logout(message) {
  sessionStorage.removeItem(KEY_STORE);
  abortCurrent();
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("model").textContent = "";
  $("view-body").replaceChildren();
  $("api-key").focus();
}

async function connect({ focus = false } = {}) {
  try {
    const data = await api("/v1/pipelines");
    pipelines = data.pipelines.map((p) => p.name);
    if (!pipelines.length) { $("login-error").textContent = "This key may see no pipeline."; return; }
    $("pipeline").replaceChildren(...pipelines.map((p) => el("option", { value: p }, p)));
    $("login").hidden = true;
    $("app").hidden = false;
    await load({ focus });
  } catch (e) {
    if (e.status !== 401) $("login-error").textContent = e.message;
  }
}

// ---- loading: one current load, newer wins -------------------------------------------------------
let seq = 0;
let controller = null;

function abortCurrent() {
  if (controller) controller.abort();
  controller = null;
}

async function load({ focus = false, keepError = false } = {}) {
  const s = state();
  if (!pipelines.includes(s.pipeline)) {
    if (s.pipeline) {
      showError(`Pipeline "${s.pipeline}" is not available with this key; showing ${pipelines[0]}.`);
      history.replaceState(null, "", urlFor({ pipeline: pipelines[0] }));
      return load({ focus, keepError: true });
    }
    history.replaceState(null, "", urlFor({ pipeline: pipelines[0] }));
    return load({ focus });
  }
  abortCurrent();
  const mine = ++seq;
  controller = new AbortController();
  const signal = controller.signal;
  const isCurrent = () => mine === seq;
  syncControls(s);
  if (!keepError) showError("");
  // Old results go before the request starts: nothing from the previous view can stay on screen.
  $("view-title").textContent = s.view === "deal" ? `Deal ${s.deal}`
    : s.view === "model" ? "The model being served" : `${VIEWS[s.view]} · ${s.pipeline}`;
  $("view-scope").textContent = "";
  $("view-body").replaceChildren();
  $("view").setAttribute("aria-busy", "true");
  $("view").dataset.pipeline = s.pipeline;
  $("status").textContent = `Loading ${VIEWS[s.view].toLowerCase()} for ${s.pipeline}…`;
  try {
    const rendered = await VIEW_LOADERS[s.view](s, signal);
    if (!isCurrent()) return;
    $("view-body").replaceChildren(...rendered.nodes);
    $("view-scope").textContent = rendered.scope || "";
    $("status").textContent = `${VIEWS[s.view]} for ${s.pipeline} loaded.`;
    if (focus) $("view-title").focus();
  } catch (e) {
    if (!isCurrent() || e.name === "AbortError") return;
    $("view-body").replaceChildren();
    $("status").textContent = "";
    if (e.status !== 401) showError(e.message);
  } finally {
    if (isCurrent()) $("view").setAttribute("aria-busy", "false");
  }
  if (isCurrent()) loadPickers(s, mine);
}

function showError(message) { $("app-error").textContent = message || ""; }

function syncControls(s) {
  $("pipeline").value = s.pipeline;
  $("f-min").value = s.min_amount;
  $("f-close").value = s.close_before;
  for (const [id, value] of [["f-owner", s.owner], ["f-team", s.team]]) {
    const select = $(id);
    if (value && ![...select.options].some((o) => o.value === value)) select.append(el("option", { value }, value));
    select.value = value;
  }
  for (const a of document.querySelectorAll("#tabs a")) {
    const view = a.dataset.view;
    a.setAttribute("href", urlFor({ view, page: 1 }));
    if (view === s.view) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
}

// Owner and team pickers from the pipeline's own data, sorted case-insensitively.
const pickerCache = new Map();
async function loadPickers(s, mine) {
  try {
    let names = pickerCache.get(s.pipeline);
    if (!names) {
      const p = encodeURIComponent(s.pipeline);
      const [owners, teams] = await Promise.all([
        api(`/v1/pipelines/${p}/health?by=owner`), api(`/v1/pipelines/${p}/health?by=team`)]);
      names = { owner: Object.keys(owners.by_owner || {}).filter((n) => !n.startsWith("(")).sort(byText),
        team: Object.keys(teams.by_team || {}).filter((n) => !n.startsWith("(")).sort(byText) };
      pickerCache.set(s.pipeline, names);
    }
    if (mine !== seq) return;
    for (const [id, list, all] of [["f-owner", names.owner, "all owners"], ["f-team", names.team, "all teams"]]) {
      const select = $(id);
      // A choice the user made while the names were loading wins over the URL's (it is not applied yet).
      const value = select.dataset.picked !== undefined ? select.value : (id === "f-owner" ? s.owner : s.team);
      const options = [el("option", { value: "" }, all), ...list.map((n) => el("option", { value: n }, n))];
      if (value && !list.includes(value)) options.push(el("option", { value }, value));
      select.replaceChildren(...options);
      select.value = value;
    }
  } catch (_) { /* the pickers are a convenience; the view itself reported any error */ }
}

// ---- shared pieces --------------------------------------------------------------------------------
function table(caption, head, rows, { numeric = [] } = {}) {
  const th = head.map((h, i) => el("th", { scope: "col", class: numeric.includes(i) ? "num" : null }, h));
  const body = rows.map((cells) => el("tr", {}, ...cells.map((c, i) =>
    el("td", { class: numeric.includes(i) ? "num" : null }, c))));
  return el("div", { class: "table-wrap" }, el("table", {}, el("caption", {}, caption),
    el("thead", {}, el("tr", {}, ...th)), el("tbody", {}, ...body)));
}

function figure(label, value) {
  return el("div", { class: "figure" }, el("div", { class: "label" }, label), el("div", { class: "value" }, value));
}

function dealLink(id) {
  const a = el("a", { href: urlFor({ view: "deal", deal: id }), class: "deal-link" }, id);
  return a;
}

function band(d) {
  return el("span", { class: `band ${d.risk_band}` }, `${pct(d.cold_risk)} ${d.risk_band}`);
}

// Why a deal is going cold: only what raises the risk, and not the stage itself (it has its column).
function whyList(reasons) {
  const raising = (reasons || []).filter((r) => r.effect > 0 && !String(r.feature).startsWith("stage"));
  if (!raising.length) return el("span", { class: "muted" }, "–");
  return el("ul", { class: "reasons" }, ...raising.slice(0, 2).map((r) => el("li", {}, r.text)));
}

function chartBlock(title, chart, summary, alternative) {
  const id = `c${Math.random().toString(36).slice(2, 8)}`;
  chart.setAttribute("role", "img");
  chart.setAttribute("aria-labelledby", `${id}-t ${id}-d`);
  chart.prepend(svg("desc", { id: `${id}-d` }, summary));
  chart.prepend(svg("title", { id: `${id}-t` }, title));
  return el("figure", { class: "chart" }, chart, el("figcaption", {}, el("strong", {}, title), " ", summary),
    alternative ? el("details", {}, el("summary", {}, `${title}: as a table`), alternative) : null);
}

// ---- Going cold and clean-up ---------------------------------------------------------------------
async function dealList(s, signal, kind) {
  const p = encodeURIComponent(s.pipeline);
  const q = kind === "at-risk" ? filterQuery(s) : filterQuery(s, { withAmount: false });
  q.set("limit", String(PAGE_SIZE));
  q.set("offset", String((s.page - 1) * PAGE_SIZE));
  if (s.sort) q.set("sort", s.sort);  // else the list's own default (value at risk; days in stage)
  const requests = [api(`/v1/pipelines/${p}/${kind}?${q}`, { signal })];
  if (kind === "at-risk") requests.push(api(`/v1/pipelines/${p}/health`, { signal }));
  const [data, health] = await Promise.all(requests);
  $("model").textContent = `model version ${data.model_version}`;
  const nodes = [];
  if (health) nodes.push(healthFigures(health, s.pipeline));
  const sortSelect = el("select", { id: "sort" }, ...Object.entries(SORTS).map(([v, label]) =>
    el("option", { value: v }, label)));
  const effectiveSort = s.sort || (kind === "stale" ? "days_in_stage" : "value_at_risk");
  sortSelect.value = effectiveSort;
  sortSelect.addEventListener("change", () => navigate({ sort: sortSelect.value, page: 1 }));
  const first = data.total ? data.offset + 1 : 0, last = data.offset + data.deals.length;
  const summary = el("p", { id: "list-count" }, `${data.total} deal(s); showing ${first}–${last}.`);
  nodes.push(el("div", { class: "list-head" }, el("label", {}, "Sort by ", sortSelect), summary));
  const rows = data.deals.map((d) => [
    String(d.rank), dealLink(d.deal_id), d.owner ?? "–", d.team ?? "–",
    `${d.stage ?? "–"} (${num(d.days_in_stage, 0)} d${missing(d.stage_limit_days) ? "" : ` / limit ${num(d.stage_limit_days, 0)}`})`,
    money(d.amount), money(d.value_at_risk), band(d), pct(d.close_probability, 1), day(d.expected_close_date),
    whyList(d.reasons)]);
  const caption = kind === "at-risk"
    ? `Deals going cold in ${data.pipeline}, ranked by ${SORTS[effectiveSort].toLowerCase()}`
    : `Effectively dead deals in ${data.pipeline} (close probability under 2%, over twice their stage's limit)`;
  const tbl = table(caption, ["#", "Deal", "Owner", "Team", "Stage (days)", "Amount", "Value at risk",
    "Cold risk", "Close prob.", "Close date", "Why"], rows, { numeric: [0, 5, 6, 7, 8] });
  tbl.querySelector("table").id = "deals";
  tbl.querySelector("table").dataset.pipeline = data.pipeline;
  nodes.push(rows.length ? tbl : el("p", { class: "muted" }, "No deals match."));
  nodes.push(pager(s, data.total));
  const scope = kind === "at-risk"
    ? `${filterText(s)} Value at risk = amount × close probability × cold risk. Deals with close ` +
      "probability under 2% stalled past twice their stage's limit are in Clean-up."
    : `${filterText(s, { withAmount: false })} Close these as lost, or revive them on purpose.`;
  return { nodes, scope };
}

function pager(s, total) {
  const pages = Math.max(1, Math.ceil(total / PAGE_SIZE));
  const prev = el("a", { href: urlFor({ page: s.page - 1 }), class: "button secondary", rel: "prev" }, "Previous");
  const next = el("a", { href: urlFor({ page: s.page + 1 }), class: "button secondary", rel: "next" }, "Next");
  const nav = el("nav", { class: "pager", "aria-label": "Pages" });
  nav.append(s.page > 1 ? prev : el("span", { class: "muted" }, "Previous"),
    el("span", { id: "page-of" }, ` Page ${s.page} of ${pages} `),
    s.page < pages ? next : el("span", { class: "muted" }, "Next"));
  return nav;
}

function healthFigures(data, pipeline) {
  const h = (data.pipelines || {})[pipeline] || data.overall;
  const box = el("section", { class: "health", "aria-label": `Health of ${pipeline}`, "data-pipeline": data.pipeline });
  box.append(el("h3", {}, `Health of ${data.pipeline}, ${day(data.since)} to ${day(data.until)} (whole pipeline)`),
    el("div", { class: "figures" },
      figure("Open deals", String(h.open_deals)), figure("Avg deal size", money(h.avg_deal_size)),
      figure("Win rate", pct(h.win_rate)), figure("Avg cycle (days)", num(h.avg_cycle_days)),
      figure("Sales velocity / day", money(h.sales_velocity)), figure("Stalled deals", String(h.stalled_count))));
  if (h.funnel && h.funnel.length) box.append(funnelChart(h.funnel));
  return box;
}

function funnelChart(funnel) {
  const width = 560, row = 26, left = 130, barMax = width - left - 190;
  const chart = svg("svg", { width, height: funnel.length * row + 4, viewBox: `0 0 ${width} ${funnel.length * row + 4}` });
  const maxReached = Math.max(1, ...funnel.map((f) => f.reached));
  funnel.forEach((f, i) => {
    const y = i * row + 4, w = (barMax * f.reached) / maxReached, lostW = w * (f.lost_share || 0);
    chart.append(svg("text", { x: 0, y: y + 14 }, f.stage));
    chart.append(svg("rect", { class: "bar", x: left, y, width: Math.max(0, w - lostW), height: row - 8 }));
    chart.append(svg("rect", { class: "lost", x: left + w - lostW, y, width: lostW, height: row - 8 }));
    chart.append(svg("text", { x: left + w + 6, y: y + 14 },
      `${f.reached} reached · ${pct(f.moved_on_share)} on · ${pct(f.lost_share)} lost`));
  });
  const alt = table("Funnel by stage", ["Stage", "Reached", "Moved on", "Lost there"],
    funnel.map((f) => [f.stage, String(f.reached), pct(f.moved_on_share), pct(f.lost_share)]), { numeric: [1, 2, 3] });
  return chartBlock("Funnel", chart, `Deals that reached each stage in the window; the red end is the share lost there.`, alt);
}

// ---- What changed ---------------------------------------------------------------------------------
async function changesView(s, signal) {
  const since = s.since || new Date(Date.now() - 7 * 86400000).toISOString().slice(0, 10);
  const data = await api(`/v1/pipelines/${encodeURIComponent(s.pipeline)}/changes?since=${since}`, { signal });
  $("model").textContent = `model version ${data.model_version}`;
  const sinceInput = el("input", { type: "date", id: "since", value: since });
  const form = el("form", { class: "inline" }, el("label", {}, "Since ", sinceInput), el("button", { type: "submit" }, "Show"));
  form.addEventListener("submit", (ev) => { ev.preventDefault(); navigate({ since: sinceInput.value }); });
  const block = (title, head, rows, numeric) => el("section", { "data-pipeline": data.pipeline },
    el("h3", {}, `${title} (${rows.length})`),
    rows.length ? table(title, head, rows, { numeric }) : el("p", { class: "muted" }, "None."));
  const nodes = [form,
    block("Close dates pushed", ["Deal", "Owner", "From", "To", "Days later"],
      data.close_date_pushed.map((c) => [dealLink(c.deal_id), c.owner ?? "–", day(c.close_date_before), day(c.close_date_after), num(c.days_pushed, 0)]), [4]),
    block("Newly at risk", ["Deal", "Owner", "Stage", "Amount", "Cold risk", "Value at risk"],
      data.newly_at_risk.map((c) => [dealLink(c.deal_id), c.owner ?? "–", c.stage ?? "–", money(c.amount), pct(c.cold_risk), money(c.value_at_risk)]), [3, 4, 5]),
    block("Stage moves", ["Deal", "Owner", "From", "To", "Direction"],
      data.stage_moves.map((c) => [dealLink(c.deal_id), c.owner ?? "–", c.stage_before ?? "–", c.stage_after ?? "–", c.direction]), []),
    block("Amounts changed", ["Deal", "Owner", "From", "To", "Change"],
      data.amount_changed.map((c) => [dealLink(c.deal_id), c.owner ?? "–", money(c.amount_before), money(c.amount_after), money(c.change)]), [2, 3, 4]),
    block("Close dates pulled in", ["Deal", "Owner", "From", "To", "Days earlier"],
      data.close_date_pulled_in.map((c) => [dealLink(c.deal_id), c.owner ?? "–", day(c.close_date_before), day(c.close_date_after), num(-c.days_pushed, 0)]), [4]),
  ];
  return { nodes, scope: `From ${day(data.since)} to ${day(data.until)}, whole pipeline (the filters do not apply here).` };
}

// ---- Teams and owners -----------------------------------------------------------------------------
async function teamsView(s, signal) {
  const p = encodeURIComponent(s.pipeline);
  const q = filterQuery(s);
  q.set("limit", "1000");
  const [teams, owners, cold] = await Promise.all([
    api(`/v1/pipelines/${p}/health?by=team`, { signal }), api(`/v1/pipelines/${p}/health?by=owner`, { signal }),
    api(`/v1/pipelines/${p}/at-risk?${q}`, { signal })]);
  $("model").textContent = `model version ${cold.model_version}`;
  const group = (key) => {
    const out = {};
    for (const d of cold.deals) {
      const name = d[key] ?? (key === "team" ? "(no team)" : "(no owner)");
      out[name] = out[name] || { count: 0, high: 0, value: 0 };
      out[name].count += 1;
      out[name].high += d.risk_band === "high" ? 1 : 0;
      out[name].value += d.value_at_risk || 0;
    }
    return out;
  };
  const section = (key, health) => {
    const risk = group(key);
    const names = [...new Set([...Object.keys(health), ...Object.keys(risk)])].sort(byText);
    const rows = names.map((n) => {
      const h = health[n] || {}, r = risk[n] || { count: 0, high: 0, value: 0 };
      const pick = n.startsWith("(") ? n : el("a", { href: urlFor({ view: "cold", [key]: n, page: 1 }) }, n);
      return [pick, String(h.open_deals ?? 0), pct(h.win_rate), money(h.avg_deal_size), num(h.avg_cycle_days),
        String(h.stalled_count ?? 0), String(r.count), String(r.high), money(r.value)];
    });
    return el("section", { "data-pipeline": teams.pipeline }, el("h3", {}, key === "team" ? "By team" : "By owner"),
      table(`${key === "team" ? "Teams" : "Owners"} of ${teams.pipeline}: health (${day(teams.since)} to ${day(teams.until)}) and deals going cold`,
        [key === "team" ? "Team" : "Owner", "Open deals", "Win rate", "Avg deal size", "Avg cycle (days)", "Stalled",
          "Going cold", "High risk", "Value at risk"], rows, { numeric: [1, 2, 3, 4, 5, 6, 7, 8] }));
  };
  const truncated = cold.total > cold.deals.length ? ` Going-cold counts cover the first ${cold.deals.length} of ${cold.total} deals.` : "";
  return { nodes: [section("team", teams.by_team || {}), section("owner", owners.by_owner || {})],
    scope: `Health figures cover the whole pipeline; going-cold columns follow the filters. ${filterText(s)}${truncated} ` +
      "Pick a name to see its deals." };
}

// ---- Forecast -------------------------------------------------------------------------------------
async function forecastView(s, signal) {
  const data = await api(`/v1/pipelines/${encodeURIComponent(s.pipeline)}/forecast?months=3`, { signal });
  $("model").textContent = `model version ${data.model_version}`;
  const buckets = data.periods.map((b) => ({ ...b, label: b.period }));
  const shown = (b) => b.total || b;  // the chart shows everything expected in the month
  const width = 600, height = 250, left = 80, bottom = 34, top = 24;
  const slot = (width - left - 90) / Math.max(1, buckets.length);  // 90 px on the right for the last labels
  const max = Math.max(1, ...buckets.map((b) => Math.max(shown(b).p90, shown(b).expected_won_amount)));
  const y = (v) => top + (height - top - bottom) * (1 - v / max);
  const chart = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}` });
  for (const t of [0, 0.5, 1]) {
    chart.append(svg("line", { class: "grid", x1: left, x2: width, y1: y(max * t), y2: y(max * t) }));
    chart.append(svg("text", { x: 0, y: y(max * t) + 4 }, money(max * t)));
  }
  buckets.forEach((month, i) => {
    const b = { ...shown(month), label: month.label, deals: month.deals };
    const cx = left + slot * i + slot / 2, bw = slot * 0.35;
    chart.append(svg("rect", { class: "bar", x: cx - bw / 2, y: y(b.expected_won_amount), width: bw, height: y(0) - y(b.expected_won_amount) }));
    chart.append(svg("line", { class: "range", x1: cx + bw / 2 + 8, x2: cx + bw / 2 + 8, y1: y(b.p10), y2: y(b.p90) }));
    chart.append(svg("text", { x: cx - bw / 2, y: y(b.expected_won_amount) - 6 }, money(b.expected_won_amount)));
    chart.append(svg("text", { x: cx + bw / 2 + 12, y: y(b.p90) + 4, class: "small" }, `P90 ${money(b.p90)}`));
    chart.append(svg("text", { x: cx + bw / 2 + 12, y: y(b.p10) + 4, class: "small" }, `P10 ${money(b.p10)}`));
    chart.append(svg("text", { x: cx - bw / 2, y: height - 12 }, `${b.label} (${b.deals} deals)`));
  });
  const row = (label, b) => [label, missing(b.deals) ? "–" : String(b.deals), money(b.pipeline_amount), money(b.expected_won_amount),
    missing(b.p10) ? "–" : money(b.p10), missing(b.p50) ? "–" : money(b.p50), missing(b.p90) ? "–" : money(b.p90)];
  // A month's open deals, then (when the model gives them) deals not created yet and the two together.
  const rows = [];
  for (const b of buckets) {
    rows.push(row(`${b.label}${b.new_deals ? " · open deals" : ""}`, b));
    if (b.new_deals) {
      rows.push(row(`${b.label} · deals not yet created`, { ...b.new_deals, deals: null, pipeline_amount: null }));
    }
    if (b.total) rows.push(row(`${b.label} · total`, { ...b.total, deals: null, pipeline_amount: null }));
  }
  // Expected values add up exactly; quantiles of a sum are not sums of quantiles, so none are shown.
  const expected = buckets.reduce((acc, b) => acc + (b.total || b).expected_won_amount, 0);
  rows.push(row(`All ${buckets.length} months (expected value only)`, { deals: null, pipeline_amount: null,
    expected_won_amount: expected, p10: null, p50: null, p90: null }));
  if (data.unscheduled && data.unscheduled.deals) rows.push(row("No expected close date", data.unscheduled));
  if (data.later) rows.push(row("Due later (expected value only)", { ...data.later, p10: null, p50: null, p90: null }));
  const tbl = table(`Forecast of won amount for ${data.pipeline}`, ["Period", "Deals", "Pipeline amount", "Expected won",
    "P10", "P50", "P90"], rows, { numeric: [1, 2, 3, 4, 5, 6] });
  tbl.id = "forecast-table";
  tbl.dataset.pipeline = data.pipeline;
  const summary = buckets.map((m) => { const b = shown(m); return `${m.label}: expected ${money(b.expected_won_amount)} (P10 ${money(b.p10)}, P90 ${money(b.p90)})`; }).join("; ");
  return { nodes: [chartBlock("Expected won amount by month", chart, `Bars: expected won amount; lines: P10 to P90. ${summary}.`), tbl,
    el("p", { class: "muted" }, `${data.note}. ${data.method}.`)],
    scope: "Whole pipeline (the filters do not apply here). P10: 9 times in 10 at least this much is won." };
}

// ---- Model card -----------------------------------------------------------------------------------
async function modelView(s, signal) {
  const m = await api("/v1/model", { signal });
  $("model").textContent = `model version ${m.model_version}`;
  const meta = m.metadata || {};
  const facts = el("dl", { class: "facts" },
    ...[["Version", m.model_version], ["Trained at", m.trained_at ?? "–"], ["Trained on data up to", meta.data_end ?? "–"],
      ["Data fingerprint", meta.data_fingerprint ?? "–"], ["Cold horizon (days)", num(m.horizon_days, 0)],
      ["Loaded at", m.loaded_at], ["Note", meta.data_note ?? "–"]].flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  const nodes = [facts, ...(await monitorSection(signal))];
  const names = { roc_auc: "ROC AUC (higher is better)", pr_auc: "PR AUC (higher)", brier: "Brier (lower)",
    log_loss: "Log loss (lower)", ece: "Calibration error (lower)", n: "Test snapshots", positive_rate: "Positive rate" };
  for (const [head, title] of [["cold", "Cold risk"], ["close", "Close probability"]]) {
    const byModel = (m.metrics_by_model || {})[head] || { served: (m.metrics || {})[head] || {} };
    const models = Object.keys(byModel).filter((k) => k !== "served");
    const rows = Object.keys(names).filter((k) => models.some((mm) => k in byModel[mm]))
      .map((k) => [names[k], ...models.map((mm) => (k === "n" ? num(byModel[mm][k], 0) : num(byModel[mm][k], 3)))]);
    const served = (m.served || {})[head];
    const header = models.map((mm) => (mm === served ? `${mm} (served)` : mm));
    nodes.push(el("h3", {}, `${title}: test-window metrics`),
      table(`${title}: the model beside its baselines (stage prior = a CRM's stage probability)`, ["Metric", ...header], rows,
        { numeric: models.map((_, i) => i + 1) }));
    const curve = (m.calibration || {})[head] || [];
    if (curve.length) nodes.push(calibrationChart(title, curve));
  }
  return { nodes, scope: "The model the service scores with now; metrics are from the time-split test window." };
}

// The live check `dealrisk monitor` (cron) left for the served version: state, reasons, calibration.
const MONITOR_STATES = { ok: "ok", watch: "watch", retrain: "retrain" };
async function monitorSection(signal) {
  const title = el("h3", { id: "monitor-title" }, "Live check");
  let report;
  try {
    report = await api("/v1/model/monitor", { signal });
  } catch (err) {
    if (err.status !== 404) throw err;
    return [title, el("p", { id: "monitor-state", class: "muted" },
      "Not checked yet: the monitor (dealrisk monitor, run from cron) has no report for this version.")];
  }
  const state = MONITOR_STATES[report.state] || "unknown";
  const nodes = [title,
    el("p", { id: "monitor-state" }, "State: ", el("strong", { class: `state ${state}` }, state),
      ` (scores from ${day(report.since)} to ${day(report.until)}; ${num(report.n_points, 0)} checked)`),
    el("ul", { class: "reasons", id: "monitor-reasons" }, ...(report.reasons || []).map((r) => el("li", {}, r)))];
  for (const [head, label] of [["cold", "Cold risk"], ["close", "Close probability"]]) {
    const part = (report.calibration || {})[head];
    if (!part || !(part.by_band || []).length) continue;
    nodes.push(table(`${label}: observed rate against predicted, per risk band, on outcomes known since (${part.state})`,
      ["Band", "Scores", "Predicted", "Observed"],
      part.by_band.map((r) => [r.band, num(r.n, 0), pct(r.predicted, 1), pct(r.observed, 1)]),
      { numeric: [1, 2, 3] }));
  }
  return nodes;
}

function calibrationChart(title, curve) {
  const size = 240, pad = 36;
  const chart = svg("svg", { width: size + pad, height: size + pad, viewBox: `0 0 ${size + pad} ${size + pad}` });
  const x = (v) => pad + v * (size - 10), y = (v) => size - v * (size - 10);
  chart.append(svg("line", { class: "grid", x1: x(0), y1: y(0), x2: x(1), y2: y(1) }));
  chart.append(svg("line", { class: "axis", x1: x(0), y1: y(0), x2: x(1), y2: y(0) }));
  chart.append(svg("line", { class: "axis", x1: x(0), y1: y(0), x2: x(0), y2: y(1) }));
  chart.append(svg("text", { x: pad + 70, y: size + 24 }, "predicted"));
  chart.append(svg("text", { x: 0, y: 12 }, "observed"));
  chart.append(svg("text", { x: pad - 4, y: size + 14 }, "0%"));
  chart.append(svg("text", { x: x(1) - 30, y: size + 14 }, "100%"));
  chart.append(svg("text", { x: 0, y: y(1) + 14 }, "100%"));
  chart.append(svg("polyline", { class: "line", points: curve.map((b) => `${x(b.predicted)},${y(b.observed)}`).join(" ") }));
  for (const b of curve) chart.append(svg("circle", { class: "dot", cx: x(b.predicted), cy: y(b.observed), r: 3 }));
  const alt = table(`${title}: calibration by bin`, ["Predicted", "Observed", "Snapshots"],
    curve.map((b) => [pct(b.predicted, 1), pct(b.observed, 1), num(b.count, 0)]), { numeric: [0, 1, 2] });
  return chartBlock(`${title} calibration`, chart, "Observed rate against predicted probability per bin; the diagonal is perfect calibration.", alt);
}

// ---- Deal view ------------------------------------------------------------------------------------
async function dealView(s, signal) {
  const id = encodeURIComponent(s.deal);
  const deal = await api(`/v1/deals/${id}`, { signal });
  const since = new Date(Math.max(Date.parse(deal.created_at), Date.now() - 26 * 7 * 86400000)).toISOString();
  const history = await api(`/v1/deals/${id}/score-history?since=${encodeURIComponent(since)}`, { signal });
  $("model").textContent = `model version ${history.model_version}`;
  const facts = el("dl", { class: "facts", "data-pipeline": deal.pipeline },
    ...[["Pipeline", deal.pipeline], ["Owner", deal.owner], ["Team", deal.team ?? "–"], ["Account", deal.account ?? "–"],
      ["Amount (at creation)", money(deal.amount)], ["Created", day(deal.created_at)],
      ["Expected close (at creation)", day(deal.expected_close_date)]].flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  const back = el("a", { href: urlFor({ view: "cold", deal: "" }) }, "← Back to the list");
  const nodes = [back, facts, el("h3", {}, "Score history (weekly)"), scoreHistory(history), el("h3", {}, "Timeline"), timeline(deal)];
  return { nodes, scope: `Scores by model version ${history.model_version}, as of each week.` };
}

function scoreHistory(h) {
  const pts = h.points;
  if (!pts.length) return el("p", { class: "muted", id: "score-history" }, "No open weeks to score in this window.");
  const width = 600, height = 200, left = 40, bottom = 28;
  const x = (i) => left + (pts.length === 1 ? (width - left) / 2 : (i * (width - left - 10)) / (pts.length - 1));
  const y = (v) => 8 + (height - bottom - 8) * (1 - v);
  const chart = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, id: "score-chart" });
  for (const t of [0, 0.5, 1]) {
    chart.append(svg("line", { class: "grid", x1: left, x2: width, y1: y(t), y2: y(t) }));
    chart.append(svg("text", { x: 0, y: y(t) + 4 }, pct(t)));
  }
  chart.append(svg("polyline", { class: "line cold", points: pts.map((p, i) => `${x(i)},${y(p.cold_risk)}`).join(" ") }));
  chart.append(svg("polyline", { class: "line close", points: pts.map((p, i) => `${x(i)},${y(p.close_probability)}`).join(" ") }));
  const end = pts[pts.length - 1];
  chart.append(svg("text", { x: x(pts.length - 1) - 70, y: y(end.cold_risk) - 6, class: "small" }, "cold risk"));
  chart.append(svg("text", { x: x(pts.length - 1) - 70, y: y(end.close_probability) + 14, class: "small" }, "close prob."));
  chart.append(svg("text", { x: left, y: height - 8 }, day(pts[0].as_of)));
  chart.append(svg("text", { x: width - 80, y: height - 8 }, day(pts[pts.length - 1].as_of)));
  const rows = pts.map((p) => [day(p.as_of), p.stage ?? "–", pct(p.cold_risk), pct(p.close_probability),
    p.changes.length ? el("ul", { class: "reasons" }, ...p.changes.map((c) =>
      el("li", {}, `${c.effect > 0 ? "▲ raised" : "▼ lowered"} risk: ${c.text}`))) : "–"]);
  const tbl = table("Weekly scores and what moved them", ["Week of", "Stage", "Cold risk", "Close prob.", "What moved the risk"],
    rows, { numeric: [2, 3] });
  tbl.id = "score-history";
  const last = pts[pts.length - 1];
  return el("div", {}, chartBlock("Cold risk and close probability by week", chart,
    `Orange: cold risk; blue: close probability. Latest (${day(last.as_of)}): cold risk ${pct(last.cold_risk)}, close probability ${pct(last.close_probability)}.`), tbl);
}

function timeline(deal) {
  const items = [
    ...deal.stage_changes.map((e) => ({ at: e.changed_at, kind: "Stage", text: `moved to ${e.stage}` })),
    ...deal.activities.map((e) => ({ at: e.occurred_at, kind: "Activity", text: `${e.type}${e.direction ? ` (${e.direction})` : ""}` })),
    ...deal.field_changes.map((e) => ({ at: e.changed_at, kind: e.field === "amount" ? "Amount" : e.field === "expected_close_date" ? "Close date" : "Field",
      text: e.field === "amount" ? `amount set to ${money(e.value)}` : e.field === "expected_close_date" ? `expected close set to ${day(e.value)}` : `${e.field} set to ${e.value}` })),
    { at: deal.created_at, kind: "Created", text: `created with amount ${money(deal.amount)}` },
  ].sort((a, b) => Date.parse(b.at) - Date.parse(a.at));
  return el("ol", { class: "timeline", id: "timeline", "aria-label": "Deal timeline, newest first" },
    ...items.map((i) => el("li", {}, el("time", { datetime: i.at }, day(i.at)), " ", el("strong", {}, i.kind), ": ", i.text)));
}

const VIEW_LOADERS = {
  cold: (s, signal) => dealList(s, signal, "at-risk"), stale: (s, signal) => dealList(s, signal, "stale"),
  changes: changesView, teams: teamsView, forecast: forecastView, model: modelView, deal: dealView,
};

// ---- CSV ------------------------------------------------------------------------------------------
async function downloadCsv() {
  const s = state();
  const kind = s.view === "stale" ? "stale" : "at-risk";
  try {
    const q = kind === "at-risk" ? filterQuery(s) : filterQuery(s, { withAmount: false });
    q.set("limit", "1000");
    if (s.sort) q.set("sort", s.sort);
    const blob = await api(`/v1/pipelines/${encodeURIComponent(s.pipeline)}/${kind}?${q}`, { accept: "text/csv" });
    const link = el("a", { href: URL.createObjectURL(blob), download: `${kind}-${s.pipeline}.csv` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);  // the browser may still be reading it
    $("status").textContent = `Downloaded ${kind}-${s.pipeline}.csv.`;
  } catch (e) { showError(e.message); }
}

// ---- wiring ---------------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY_STORE, $("api-key").value.trim());
    $("api-key").value = "";
    $("login-error").textContent = "";
    connect({ focus: true });
  });
  $("pipeline").addEventListener("change", () => {
    for (const id of ["f-owner", "f-team"]) delete $(id).dataset.picked;
    navigate({ pipeline: $("pipeline").value, page: 1, deal: "",
      view: state().view === "deal" ? "cold" : state().view, owner: "", team: "" });
  });
  for (const id of ["f-owner", "f-team"]) {
    $(id).addEventListener("change", () => { $(id).dataset.picked = "1"; });
  }
  // Enter in any filter field submits the form: filters apply on Enter as on the button.
  $("filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    for (const id of ["f-owner", "f-team"]) delete $(id).dataset.picked;
    navigate({ owner: $("f-owner").value, team: $("f-team").value, min_amount: $("f-min").value,
      close_before: $("f-close").value, page: 1, view: state().view === "deal" ? "cold" : state().view });
  });
  $("clear").addEventListener("click", () => {
    for (const id of ["f-owner", "f-team"]) delete $(id).dataset.picked;
    navigate({ owner: "", team: "", min_amount: "", close_before: "", page: 1 });
  });
  $("csv").addEventListener("click", downloadCsv);
  $("logout").addEventListener("click", () => logout(""));
  // In-page links (tabs, deals, pager) change the URL without reloading the page.
  document.addEventListener("click", (ev) => {
    const a = ev.target.closest && ev.target.closest("a[href^='/?'], a[href^='?']");
    if (!a || ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.button !== 0) return;
    ev.preventDefault();
    history.pushState(null, "", a.getAttribute("href"));
    load({ focus: true });
  });
  window.addEventListener("popstate", () => { if (!$("app").hidden) load(); });
  if (sessionStorage.getItem(KEY_STORE)) connect(); else $("api-key").focus();
});
