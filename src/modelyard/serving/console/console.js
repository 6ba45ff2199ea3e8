// modelyard console: vanilla JS, no dependencies. Every data call goes through the JSON API with the
// pasted key (sessionStorage, this tab only). Text from the server is only ever inserted with
// textContent / createTextNode, never as HTML.
"use strict";

const KEY_STORAGE = "modelyard.apiKey";
const SVG_NS = "http://www.w3.org/2000/svg";
let modelLabels = [];

// ------------------------------------------------------------------ helpers

function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

function getKey() { return sessionStorage.getItem(KEY_STORAGE) || ""; }

class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
  describe() {
    const what = { 401: "Unauthorized", 403: "Forbidden", 404: "Not found", 429: "Rate limited" }[this.status]
      || (this.status >= 500 ? "Server error" : this.status ? "Request failed" : "Network error");
    let text = `${this.status || ""} ${what}${this.code ? " (" + this.code + ")" : ""}: ${this.message}`.trim();
    if (this.retryAfter) text += ` — retry after ${this.retryAfter}s`;
    return text;
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const key = getKey();
  if (key) headers.Authorization = "Bearer " + key;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    throw new ApiError(0, "network_error", `cannot reach the server (${err.message})`);
  }
  let payload = null;
  const text = await response.text();
  try { payload = text ? JSON.parse(text) : null; } catch (_) { payload = null; }
  if (!response.ok) {
    const e = payload && payload.error ? payload.error : {};
    throw new ApiError(response.status, e.code || "http_error", e.message || text.slice(0, 300) || response.statusText,
      response.headers.get("Retry-After"));
  }
  return payload;
}

function showError(id, err) {
  const box = $(id);
  if (!err) { box.hidden = true; box.textContent = ""; return; }
  box.textContent = err instanceof ApiError ? err.describe() : `Error: ${err.message || err}`;
  box.hidden = false;
  if (!(err instanceof ApiError)) console.error(err);
}

async function panel(errorId, work) {
  try {
    await work();
    showError(errorId, null);
  } catch (err) {
    showError(errorId, err);
  }
}

function fmtTime(iso) {
  const d = new Date(iso);
  return isNaN(d) ? String(iso) : d.toLocaleString();
}

function pct(x) { return x == null ? "–" : (100 * x).toFixed(1) + "%"; }

// ------------------------------------------------------------------ key

async function checkKey() {
  const status = $("key-status");
  if (!getKey()) {
    status.className = "status";
    status.textContent = "No API key: paste one above (an admin key shows every panel).";
    return false;
  }
  try {
    const info = await api("GET", "/v1/model");
    modelLabels = info.labels || [];
    $("model-name").textContent = `${info.app || info.name || ""} v${info.version ?? "?"} @${info.alias || ""}`;
    status.className = "status ok";
    status.textContent = `Key accepted. Serving ${info.app || info.name} version ${info.version}; labels: ${modelLabels.join(", ")}.`;
    return true;
  } catch (err) {
    status.className = "status error";
    status.textContent = err instanceof ApiError ? err.describe() : String(err);
    return false;
  }
}

// ------------------------------------------------------------------ try the model

function renderScores(scores, best) {
  const box = $("try-scores");
  box.replaceChildren();
  for (const [label, p] of Object.entries(scores).sort((a, b) => b[1] - a[1])) {
    const fill = el("div", { class: "fill" });
    fill.style.setProperty("width", (100 * p).toFixed(1) + "%");
    box.append(el("div", { class: "bar" + (label === best ? " best" : ""), "data-label": label },
      el("span", { class: "name" }, label), el("div", { class: "track" }, fill), el("span", { class: "p" }, pct(p))));
  }
}

function renderExplanation(exp) {
  const box = $("explain-tokens");
  box.replaceChildren();
  const max = Math.max(1e-9, ...exp.attributions.map(Math.abs));
  exp.units.forEach((unit, i) => {
    const a = exp.attributions[i] / max;
    const span = el("span", { class: "tok", title: exp.attributions[i].toFixed(4) }, unit);
    const rgb = a >= 0 ? "46,125,50" : "198,40,40";
    span.style.setProperty("background-color", `rgba(${rgb},${Math.min(1, Math.abs(a)) * 0.6})`);
    box.append(span, " ");
  });
  $("explain-status").textContent =
    `${exp.method} attributions for “${exp.target}” (green supports it, red argues against it)` +
    (exp.truncated ? "; the text was truncated" : "");
}

async function classify(event) {
  event.preventDefault();
  const text = $("try-text").value;
  if (!text.trim()) return;
  $("try-run").disabled = true;
  await panel("try-error", async () => {
    $("try-result").hidden = true;
    const res = await api("POST", "/v1/predict", { texts: [text] });
    const pred = res.predictions[0];
    $("try-label").textContent = pred.label;
    $("try-id").textContent = pred.id ? `id ${pred.id}` : "";
    renderScores(pred.scores, pred.label);
    $("explain-tokens").replaceChildren();
    $("explain-status").textContent = "explaining…";
    $("try-result").hidden = false;
    try {
      const exp = await api("POST", "/v1/explain", { text, method: "ig" });
      renderExplanation(exp.explanation);
    } catch (err) {
      const why = err instanceof ApiError ? err.describe() : String(err);
      $("explain-status").textContent = (err.status === 404 || err.status === 501)
        ? `Explanations are unavailable on this server: ${why}` : `Explanation failed: ${why}`;
    }
  });
  $("try-run").disabled = false;
  loadRecent();
  loadTraffic();
}

// ------------------------------------------------------------------ recent predictions + feedback

function confidence(scores) {
  const values = Object.values(scores || {});
  return values.length ? Math.max(...values) : null;
}

async function sendFeedback(pred, select, button, msg) {
  button.disabled = true;
  msg.className = "msg";
  msg.textContent = "sending…";
  try {
    await api("POST", "/v1/feedback", { prediction_id: pred.id, label: select.value });
    msg.className = "msg ok";
    msg.textContent = `sent: ${select.value}`;
  } catch (err) {
    msg.className = "msg bad";
    msg.textContent = err instanceof ApiError ? err.describe() : String(err);
    if (err.status === 404) msg.textContent += " (feedback is only accepted with the key that made the prediction)";
  }
  button.disabled = false;
}

async function loadRecent() {
  await panel("recent-error", async () => {
    const rows = await api("GET", "/admin/v1/predictions?limit=25");
    const body = $("recent-table").tBodies[0];
    body.replaceChildren();
    for (const pred of rows.slice().reverse()) {
      const labels = Object.keys(pred.scores || {}).length ? Object.keys(pred.scores) : modelLabels;
      const select = el("select", { "aria-label": "correct label" }, ...labels.map((l) => el("option", { value: l }, l)));
      select.value = pred.label;
      const button = el("button", { type: "button", class: "secondary send" }, "Send");
      const msg = el("span", { class: "msg" });
      button.addEventListener("click", () => sendFeedback(pred, select, button, msg));
      body.append(el("tr", { "data-id": pred.id },
        el("td", {}, fmtTime(pred.at)), el("td", {}, pred.version ?? ""), el("td", { class: "input" }, pred.text),
        el("td", { class: "label" }, pred.label), el("td", {}, pct(confidence(pred.scores))),
        el("td", { class: "fb" }, select, " ", button, msg)));
    }
    if (!rows.length) body.append(el("tr", {}, el("td", { colspan: "6", class: "muted" }, "no predictions logged yet")));
  });
}

// ------------------------------------------------------------------ label next (active learning)

// The queue lives in this page only: the server answers the uploaded file's rows (less texts with feedback),
// and each answer is one POST /admin/v1/label (stored as feedback). Reloading the same file resumes.
const labelQueue = { items: [], index: 0, labels: [], multi: false, stored: 0, skipped: 0, chosen: new Set() };

function labelStatus() {
  const q = labelQueue;
  const left = q.items.length - q.index;
  $("label-status").textContent = `${q.stored} labelled, ${q.skipped} skipped, ${left} left in the queue.`;
}

function showLabelItem() {
  const q = labelQueue;
  labelStatus();
  const item = q.items[q.index];
  $("label-card").hidden = !item;
  if (!item) {
    if (q.items.length) $("label-status").textContent += " Done: run `modelyard retrain` to learn from the answers.";
    return;
  }
  $("label-meta").textContent = `row ${item.row}` + (item.pred ? ` · model says ${item.pred}` : "") +
    (item.score != null ? ` · score ${item.score.toFixed(3)}` : "");
  $("label-text").textContent = item.text;
  $("label-msg").textContent = "";
  $("label-msg").className = "msg";
  q.chosen = new Set();
  const box = $("label-buttons");
  box.replaceChildren();
  q.labels.forEach((label, i) => {
    const button = el("button", { type: "button", class: "answer", "data-label": label, title: `key ${i + 1}` }, label);
    button.addEventListener("click", () => (q.multi ? toggleLabel(button, label) : sendLabel({ label })));
    box.append(button);
  });
  $("label-save").hidden = !q.multi;
}

function toggleLabel(button, label) {
  const chosen = labelQueue.chosen;
  if (chosen.has(label)) chosen.delete(label); else chosen.add(label);
  button.classList.toggle("chosen", chosen.has(label));
}

function labelBusy(busy) {
  for (const b of $("label-card").querySelectorAll("button")) b.disabled = busy;
}

async function sendLabel(answer) {
  const q = labelQueue;
  const item = q.items[q.index];
  if (!item) return;
  labelBusy(true);
  $("label-msg").className = "msg";
  $("label-msg").textContent = "saving…";
  try {
    await api("POST", "/admin/v1/label", { text: item.text, ...answer });
    q.stored += 1;
    q.index += 1;
    showLabelItem();
  } catch (err) {
    $("label-msg").className = "msg bad";
    $("label-msg").textContent = err instanceof ApiError ? err.describe() : String(err);
  }
  labelBusy(false);
}

function skipLabel() {
  labelQueue.skipped += 1;
  labelQueue.index += 1;
  showLabelItem();
}

async function loadLabelQueue(event) {
  event.preventDefault();
  const file = $("label-file").files[0];
  if (!file) { showError("label-error", new Error("choose a queue file first")); return; }
  $("label-load").disabled = true;
  await panel("label-error", async () => {
    const csv = await file.text();
    const res = await api("POST", "/admin/v1/label/queue", { csv, text_column: $("label-column").value.trim() || "text" });
    Object.assign(labelQueue, { items: res.items, index: 0, labels: res.labels, multi: res.multi_label, stored: 0, skipped: 0 });
    showLabelItem();
    const left = [["already labelled", res.already_labelled], ["repeated", res.duplicates], ["empty", res.empty],
      ["too long", res.too_long]].filter(([, n]) => n).map(([what, n]) => `${n} ${what}`).join(", ");
    $("label-status").textContent = `${file.name}: ${res.rows_in_file} rows` + (left ? ` (left out: ${left})` : "") +
      (res.truncated ? `; the first ${res.items.length} are queued` : "") + ". " + $("label-status").textContent;
  });
  $("label-load").disabled = false;
}

function labelKeys(event) {
  // number keys answer, "s" skips — only while the card is shown and no text field has the focus
  if ($("label-card").hidden || ["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement.tagName)) return;
  const buttons = $("label-buttons").querySelectorAll("button");
  const n = Number(event.key);
  if (n >= 1 && n <= buttons.length) buttons[n - 1].click();
  else if (event.key === "s") skipLabel();
}

// ------------------------------------------------------------------ charts (inline SVG)

const W = 360, H = 170, PAD = { l: 44, r: 8, t: 10, b: 24 };

function frame(yMax, yFmt, xLabels) {
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
  root.append(svg("line", { class: "axis", x1: PAD.l, y1: H - PAD.b, x2: W - PAD.r, y2: H - PAD.b }));
  root.append(svg("line", { class: "axis", x1: PAD.l, y1: PAD.t, x2: PAD.l, y2: H - PAD.b }));
  for (const f of [0, 0.5, 1]) {
    const y = H - PAD.b - f * (H - PAD.t - PAD.b);
    const t = svg("text", { class: "label", x: PAD.l - 4, y: y + 3, "text-anchor": "end" });
    t.textContent = yFmt(f * yMax);
    root.append(t);
  }
  xLabels.forEach(([x, text], i) => {
    const t = svg("text", { class: "label", x, y: H - 6, "text-anchor": i === 0 ? "start" : "end" });
    t.textContent = text;
    root.append(t);
  });
  return root;
}

function emptyChart(message) {
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}` });
  const t = svg("text", { class: "empty", x: W / 2, y: H / 2, "text-anchor": "middle" });
  t.textContent = message;
  root.append(t);
  return root;
}

function seriesChart(buckets, valueOf, yMax, yFmt, kind) {
  const points = buckets.map((b, i) => [i, valueOf(b), b]).filter(([, v]) => v != null);
  if (!buckets.length || !points.length) return emptyChart("no traffic in this window");
  const xs = (i) => PAD.l + (buckets.length === 1 ? 0.5 : i / (buckets.length - 1)) * (W - PAD.l - PAD.r);
  const ys = (v) => H - PAD.b - (yMax ? v / yMax : 0) * (H - PAD.t - PAD.b);
  const hhmm = (iso) => new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const root = frame(yMax, yFmt, [[PAD.l, hhmm(buckets[0].start)], [W - PAD.r, hhmm(buckets[buckets.length - 1].start)]]);
  if (kind === "line") {
    root.append(svg("polyline", { class: "line", points: points.map(([i, v]) => `${xs(i)},${ys(v)}`).join(" ") }));
  } else {
    const bw = Math.max(1, (0.8 * (W - PAD.l - PAD.r)) / buckets.length);
    for (const [i, v] of points) {
      if (v > 0) root.append(svg("rect", { class: "bar-rect", x: xs(i) - bw / 2, y: ys(v), width: bw, height: H - PAD.b - ys(v) }));
    }
  }
  for (const [i, v, b] of points) {
    if (kind === "line" || v > 0) {
      const c = svg("circle", { class: "pt", cx: xs(i), cy: ys(v), r: kind === "line" ? 2.5 : 2, "data-value": v });
      const title = svg("title", {});
      title.textContent = `${fmtTime(b.start)}: ${yFmt(v)}`;
      c.append(title);
      root.append(c);
    }
  }
  return root;
}

function mixChart(mix) {
  const entries = Object.entries(mix);
  const total = entries.reduce((s, [, n]) => s + n, 0);
  if (!total) return emptyChart("no traffic in this window");
  const rowH = Math.min(28, (H - PAD.t - PAD.b) / entries.length);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
  entries.forEach(([label, n], i) => {
    const y = PAD.t + i * rowH;
    const name = svg("text", { class: "label", x: 4, y: y + rowH * 0.65 });
    name.textContent = label;
    const w = (n / total) * (W - 150);
    const rect = svg("rect", { class: "bar-rect", x: 90, y: y + 3, width: Math.max(1, w), height: rowH - 6, "data-label": label });
    const value = svg("text", { class: "label", x: 94 + w, y: y + rowH * 0.65 });
    value.textContent = `${n} (${pct(n / total)})`;
    root.append(name, rect, value);
  });
  return root;
}

async function loadTraffic() {
  await panel("traffic-error", async () => {
    const since = $("traffic-since").value;
    const t = await api("GET", `/admin/v1/traffic?since=${encodeURIComponent(since)}`);
    const maxReq = Math.max(1, ...t.buckets.map((b) => b.requests));
    $("traffic-summary").textContent =
      `${t.total} predictions in the last ${since} (${t.bucket_s}s buckets)` +
      (t.mean_latency_ms != null ? `, mean latency ${t.mean_latency_ms.toFixed(1)} ms` : "");
    $("chart-requests").replaceChildren(seriesChart(t.buckets, (b) => b.requests, maxReq, (v) => String(Math.round(v)), "bars"));
    const pct0 = (x) => (100 * x).toFixed(0) + "%";
    $("chart-confidence").replaceChildren(seriesChart(t.buckets, (b) => b.mean_confidence, 1, pct0, "line"));
    $("chart-mix").replaceChildren(mixChart(t.class_mix));
  });
  await loadDrift();
}

function renderDrift(report) {
  const status = $("drift-status");
  status.className = report.status === "drift" ? "error" : "";
  status.textContent = report.status === "no_report"
    ? report.message
    : `status: ${report.status}` + (report.version != null ? ` · version ${report.version}` : "") +
      (report.n_live != null ? ` · ${report.n_live} live vs ${report.n_reference} reference` : "") +
      (report.at ? ` · ${fmtTime(report.at)}` : "") + (report.message ? ` · ${report.message}` : "");
  const body = $("drift-table").tBodies[0];
  body.replaceChildren();
  for (const [name, s] of Object.entries(report.signals || {})) {
    body.append(el("tr", { class: s.drift ? "drift" : "ok", "data-signal": name },
      el("td", {}, name), el("td", {}, s.value.toFixed(4)), el("td", {}, s.threshold),
      el("td", {}, s.drift ? "DRIFT (above threshold)" : "ok")));
  }
}

async function loadDrift() {
  await panel("drift-error", async () => renderDrift(await api("GET", "/admin/v1/drift")));
}

async function runDrift() {
  $("drift-run").disabled = true;
  await panel("drift-error", async () => renderDrift(await api("POST", "/admin/v1/drift", { since: "7d" })));
  $("drift-run").disabled = false;
}

// ------------------------------------------------------------------ registry

async function loadRegistry() {
  await panel("registry-error", async () => {
    const versions = await api("GET", "/admin/v1/versions");
    const body = $("registry-table").tBodies[0];
    body.replaceChildren();
    for (const v of versions.slice().reverse()) {
      const aliases = el("td", { class: "aliases" }, ...v.aliases.map((a) => el("span", { class: "badge " + a }, a)));
      body.append(el("tr", { "data-version": v.version },
        el("td", {}, "v" + v.version), aliases, el("td", {}, pct(v.test_accuracy)), el("td", {}, pct(v.test_macro_f1)),
        el("td", {}, v.run_id), el("td", {}, fmtTime(v.created_at))));
    }
  });
}

// ------------------------------------------------------------------ start

async function refreshAll() {
  if (!(await checkKey())) {
    // Still call the panels: their errors (401/403) are shown where the data would be.
    if (!getKey()) return;
  }
  await Promise.all([loadRecent(), loadTraffic(), loadRegistry()]);
}

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    $("api-key").value = "";
    refreshAll();
  });
  $("key-forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    $("model-name").textContent = "";
    checkKey();
  });
  $("try-form").addEventListener("submit", classify);
  $("recent-refresh").addEventListener("click", loadRecent);
  $("traffic-refresh").addEventListener("click", loadTraffic);
  $("traffic-since").addEventListener("change", loadTraffic);
  $("drift-run").addEventListener("click", runDrift);
  $("registry-refresh").addEventListener("click", loadRegistry);
  $("label-form").addEventListener("submit", loadLabelQueue);
  $("label-skip").addEventListener("click", skipLabel);
  $("label-save").addEventListener("click", () => sendLabel({ labels: [...labelQueue.chosen] }));
  document.addEventListener("keydown", labelKeys);
  refreshAll();
});
