// pxp dashboard: plain JS, no build step, no third-party code. Charts are drawn by hand on <canvas>.
"use strict";

const KEY = "pxp.apiKey";
const POLL_MS = 2000;
const PALETTE = ["#3b6fe0", "#e0793b", "#2a9d5b", "#b03bd0", "#d03b5c", "#8a7a1e", "#1fa3b5", "#555"];
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

const $ = (id) => document.getElementById(id);
let selected = null;        // id of the job shown in the detail panel
let detailVersion = null;   // updated_at of the job last drawn
let timer = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "style") node.style.cssText = v;  // CSSOM, allowed by the page's CSP
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

class AuthError extends Error {}

async function api(path, asBlob) {
  const key = sessionStorage.getItem(KEY);
  const resp = await fetch(path, { headers: { Authorization: "Bearer " + key } });
  if (resp.status === 401) throw new AuthError("the API key was refused");
  if (!resp.ok) {
    let detail = resp.statusText;
    try { detail = (await resp.json()).detail || detail; } catch (e) { /* not JSON */ }
    throw new Error(`${path}: HTTP ${resp.status} ${detail}`);
  }
  return asBlob ? resp.blob() : resp.json();
}

function fmtPct(x) { return x == null ? "–" : (100 * x).toFixed(1) + "%"; }
function fmtNum(x) { return x == null ? "–" : Number(x).toLocaleString("en-US"); }
function fmtBytes(n) {
  if (n == null) return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}
function fmtTime(s) { return s ? new Date(s).toLocaleString() : "–"; }

// Sign in / out ------------------------------------------------------------------------------

async function signIn(key) {
  sessionStorage.setItem(KEY, key);
  try {
    await api("/v1/jobs?limit=1");
  } catch (e) {
    sessionStorage.removeItem(KEY);
    $("signin-error").textContent = e instanceof AuthError ? "That API key is not valid." : e.message;
    return;
  }
  $("signin-error").textContent = "";
  showApp();
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  clearTimeout(timer);
  selected = null;
  $("app").hidden = true;
  $("session").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = message || "";
}

function showApp() {
  const key = sessionStorage.getItem(KEY);
  $("signin").hidden = true;
  $("app").hidden = false;
  $("session").hidden = false;
  $("whoami").textContent = "key " + key.split("_").slice(0, 2).join("_") + "_…";
  tick();
}

async function tick() {
  clearTimeout(timer);
  try {
    await refreshJobs();
    if (selected) await refreshDetail();
  } catch (e) {
    if (e instanceof AuthError) { signOut("Signed out: " + e.message); return; }
    console.error(e);
  }
  timer = setTimeout(tick, POLL_MS);
}

// Job list -----------------------------------------------------------------------------------

async function refreshJobs() {
  const page = await api("/v1/jobs?limit=50");
  const rows = $("job-rows");
  rows.replaceChildren(...page.items.map(jobRow));
  $("jobs-empty").hidden = page.items.length > 0;
  $("jobs-updated").textContent = "updated " + new Date().toLocaleTimeString();
}

function jobRow(job) {
  const bar = el("span", { class: "bar" }, el("span", { style: `width:${Math.round(100 * job.progress)}%` }));
  const criterion = (job.metrics && job.metrics.chosen_label) || "";
  const tr = el("tr", { "data-job": job.id, class: job.id === selected ? "selected" : "", onclick: () => select(job.id) },
    el("td", {}, el("code", {}, job.id.slice(0, 12))),
    el("td", {}, criterion),
    el("td", {}, el("span", { class: "status " + job.status }, job.status)),
    el("td", {}, bar, " ", job.stage || ""),
    el("td", {}, job.metrics && job.metrics.test_apr != null ? job.metrics.test_apr.toFixed(3) : "–"),
    el("td", {}, fmtTime(job.created_at)));
  return tr;
}

async function select(id) {
  selected = id;
  detailVersion = null;
  for (const tr of $("job-rows").children) tr.classList.toggle("selected", tr.dataset.job === id);
  $("detail").hidden = false;
  try { await refreshDetail(); } catch (e) { if (e instanceof AuthError) signOut("Signed out: " + e.message); else console.error(e); }
}

// Job detail ---------------------------------------------------------------------------------

async function refreshDetail() {
  const job = await api(`/v1/jobs/${selected}`);
  $("detail-id").textContent = job.id;
  const status = $("detail-status");
  status.textContent = job.status;
  status.className = "status " + job.status;
  $("detail-stage").textContent = TERMINAL.has(job.status)
    ? `finished ${fmtTime(job.finished_at)}`
    : `${job.stage || ""} ${fmtPct(job.progress)}${job.trial != null ? ", trial " + job.trial : ""} ${job.message || ""}`;
  $("detail-error").textContent = job.error ? `${job.error.type}: ${job.error.message}` : "";
  if (detailVersion === job.updated_at) return;
  detailVersion = job.updated_at;
  const result = job.result || {};
  drawCurves(result);
  const artifacts = TERMINAL.has(job.status) ? await api(`/v1/jobs/${job.id}/artifacts`) : [];
  renderArtifacts(job, artifacts);
  renderCompression(result, artifacts);
  await drawHistory(job, result, artifacts);
  $("detail").dataset.rendered = job.id;
}

function drawCurves(result) {
  const curves = result.curves || [];
  const legend = $("curves-legend");
  const labels = [...new Set(curves.map((c) => c.label))];
  const series = curves.map((c) => ({
    label: `${c.label} (${c.split})`,
    xs: c.rates, ys: c.accuracies,
    color: PALETTE[labels.indexOf(c.label) % PALETTE.length],
    dashed: c.split !== "test", points: true,
  }));
  const vlines = result.chosen_rate != null && curves.length ? [{ x: result.chosen_rate, label: "chosen " + fmtPct(result.chosen_rate) }] : [];
  drawChart($("curves"), { series, vlines, xLabel: "pruning rate (components removed)", yLabel: "top-1 accuracy",
    xRange: [0, 1], yRange: [0, 1], empty: "no curves yet" });
  legend.replaceChildren(...curves.map((c) => el("li", { "data-label": c.label, "data-split": c.split },
    el("i", { style: `border-top: 3px ${c.split === "test" ? "solid" : "dashed"} ${PALETTE[labels.indexOf(c.label) % PALETTE.length]}` }),
    `${c.label} (${c.split}): A_PR ${c.apr.toFixed(3)}, safe rate ${fmtPct(c.safe_rate)}`)));
}

async function drawHistory(job, result, artifacts) {
  const note = $("history-note");
  const study = artifacts.find((a) => a.name === "study");
  if (!study) {
    drawChart($("history"), { series: [], empty: result.search ? "study not available" : "no search in this job" });
    note.textContent = "";
    return;
  }
  const data = JSON.parse(await (await api(study.url, true)).text());
  const done = (data.history || []).filter((r) => r.state === "COMPLETE" && r.value != null).sort((a, b) => a.number - b.number);
  let best = -Infinity;
  const bestXs = [], bestYs = [];
  for (const r of done) { best = Math.max(best, r.value); bestXs.push(r.number); bestYs.push(best); }
  const xs = done.map((r) => r.number);
  const ys = done.map((r) => r.value);
  const lo = Math.min(...ys, data.default_value ?? Infinity), hi = Math.max(...ys, data.default_value ?? -Infinity);
  const pad = Math.max(0.01, (hi - lo) * 0.1);
  drawChart($("history"), {
    series: [
      { label: "trial A_PR", xs, ys, color: PALETTE[0], points: true, noLine: true },
      { label: "best so far", xs: bestXs, ys: bestYs, color: PALETTE[1], step: true },
    ],
    hlines: data.default_value != null ? [{ y: data.default_value, label: "default composite", color: PALETTE[2] }] : [],
    xLabel: "trial", yLabel: "A_PR (search split)",
    xRange: [Math.min(0, ...xs), Math.max(1, ...xs)], yRange: [lo - pad, hi + pad], integerX: true,
    empty: "no complete trials",
  });
  note.textContent = `${data.trials_completed ?? done.length} complete, ${data.trials_pruned ?? 0} pruned; study ${data.study_name || ""}`;
}

// The latency sub-dict's layout is the pipeline's; accept an explicit speed-up, or a time of
// the original and of the compressed model (flat numbers, or objects holding a median/mean/ms).
function timeOf(value) {
  if (typeof value === "number") return value;
  if (value && typeof value === "object") {
    const key = Object.keys(value).find((k) => /median|mean|ms|seconds|_s$/.test(k) && typeof value[k] === "number");
    return key ? value[key] : null;
  }
  return null;
}

function speedup(latency) {
  if (!latency) return null;
  const keys = Object.keys(latency);
  const explicit = keys.find((k) => /speed_?up/i.test(k) && typeof latency[k] === "number");
  if (explicit) return latency[explicit];
  const find = (re, not) => keys.find((k) => re.test(k) && !(not && not.test(k)) && timeOf(latency[k]) != null);
  const before = find(/original|before|unpruned|dense|baseline/i);
  const after = find(/compressed|after|pruned/i, /unpruned/i);
  const b = before && timeOf(latency[before]), a = after && timeOf(latency[after]);
  return b && a ? b / a : null;
}

function renderCompression(result, artifacts) {
  const c = result.compression;
  const body = $("compression").tBodies[0];
  if (!c) { body.replaceChildren(el("tr", {}, el("td", {}, "no exported model (yet)"))); return; }
  const model = artifacts.find((a) => a.name === "model.safetensors" || a.name === "model");
  const rows = [
    ["criterion / rate", `${c.criterion ?? result.chosen_label} at ${fmtPct(c.rate ?? result.chosen_rate)}`],
    ["model file", model ? `${model.filename}, ${fmtBytes(model.size_bytes)}` : "–"],
    ["parameters", `${fmtNum(c.params_before)} → ${fmtNum(c.params_after)} (−${fmtPct(c.params_removed_fraction)})`],
    ["MACs", `${fmtNum(c.macs_before)} → ${fmtNum(c.macs_after)} (−${fmtPct(c.flops_removed_fraction)})`],
    ["test accuracy", `${fmtPct(c.test_accuracy)} (unpruned ${fmtPct(c.unpruned_test_accuracy)})`],
  ];
  const s = speedup(c.latency);
  if (c.latency) {
    const show = (v) => (typeof v === "number" ? +v.toFixed(3) : typeof v === "object" ? JSON.stringify(v) : v);
    const parts = Object.entries(c.latency).map(([k, v]) => `${k}: ${show(v)}`);
    rows.push(["measured speed-up", s ? s.toFixed(2) + "×" : "–"]);
    rows.push(["latency", parts.join(", ")]);
  }
  body.replaceChildren(...rows.map(([k, v]) => el("tr", { "data-key": k }, el("th", {}, k), el("td", {}, v))));
}

function renderArtifacts(job, artifacts) {
  const list = $("artifacts");
  if (!artifacts.length) { list.replaceChildren(el("li", {}, TERMINAL.has(job.status) ? "none" : "when the job finishes")); return; }
  list.replaceChildren(...artifacts.map((a) => el("li", {},
    el("a", { href: "#", "data-artifact": a.name, onclick: (ev) => { ev.preventDefault(); download(a); } }, a.filename),
    ` ${fmtBytes(a.size_bytes)} `, el("code", { title: a.sha256 }, "sha256 " + a.sha256.slice(0, 12)))));
}

async function download(artifact) {
  // Downloads need the Bearer header, so they go through fetch and a blob URL.
  const blob = await api(artifact.url, true);
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: artifact.filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// Charts -------------------------------------------------------------------------------------

function drawChart(canvas, opts) {
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height;
  const m = { l: 56, r: 16, t: 14, b: 44 };
  ctx.clearRect(0, 0, W, H);
  ctx.font = "12px system-ui, sans-serif";
  const series = (opts.series || []).filter((s) => s.xs && s.xs.length);
  canvas.dataset.series = JSON.stringify(series.map((s) => s.label));
  canvas.dataset.points = String(series.reduce((n, s) => n + s.xs.length, 0));
  if (!series.length) {
    ctx.fillStyle = "#6b7385";
    ctx.textAlign = "center";
    ctx.fillText(opts.empty || "no data", W / 2, H / 2);
    return;
  }
  const [x0, x1] = opts.xRange, [y0, y1] = opts.yRange;
  const X = (x) => m.l + ((x - x0) / (x1 - x0 || 1)) * (W - m.l - m.r);
  const Y = (y) => H - m.b - ((y - y0) / (y1 - y0 || 1)) * (H - m.t - m.b);
  // grid and ticks
  ctx.strokeStyle = "#e6e8ee"; ctx.fillStyle = "#6b7385"; ctx.lineWidth = 1;
  for (let i = 0; i <= 5; i++) {
    const yv = y0 + ((y1 - y0) * i) / 5;
    ctx.beginPath(); ctx.moveTo(m.l, Y(yv)); ctx.lineTo(W - m.r, Y(yv)); ctx.stroke();
    ctx.textAlign = "right"; ctx.fillText(yv.toFixed(2), m.l - 6, Y(yv) + 4);
  }
  // x ticks: five even steps, or whole numbers (trials) at a step that gives at most ~8
  const xstep = opts.integerX ? Math.max(1, Math.ceil((x1 - x0) / 8)) : (x1 - x0) / 5;
  for (let xv = x0; xv <= x1 + 1e-9; xv += xstep) {
    ctx.beginPath(); ctx.moveTo(X(xv), m.t); ctx.lineTo(X(xv), H - m.b); ctx.stroke();
    ctx.textAlign = "center"; ctx.fillText(opts.integerX ? String(Math.round(xv)) : xv.toFixed(2), X(xv), H - m.b + 16);
  }
  ctx.strokeStyle = "#1d2330";
  ctx.beginPath(); ctx.moveTo(m.l, m.t); ctx.lineTo(m.l, H - m.b); ctx.lineTo(W - m.r, H - m.b); ctx.stroke();
  ctx.fillStyle = "#1d2330"; ctx.textAlign = "center";
  ctx.fillText(opts.xLabel || "", (m.l + W - m.r) / 2, H - 8);
  ctx.save(); ctx.translate(14, (m.t + H - m.b) / 2); ctx.rotate(-Math.PI / 2); ctx.fillText(opts.yLabel || "", 0, 0); ctx.restore();
  // reference lines
  for (const v of opts.vlines || []) {
    ctx.strokeStyle = "#999"; ctx.setLineDash([4, 4]);
    ctx.beginPath(); ctx.moveTo(X(v.x), m.t); ctx.lineTo(X(v.x), H - m.b); ctx.stroke();
    ctx.setLineDash([]); ctx.fillStyle = "#555"; ctx.textAlign = "left"; ctx.fillText(v.label, X(v.x) + 4, m.t + 12);
  }
  for (const h of opts.hlines || []) {
    ctx.strokeStyle = h.color || "#999"; ctx.setLineDash([6, 4]);
    ctx.beginPath(); ctx.moveTo(m.l, Y(h.y)); ctx.lineTo(W - m.r, Y(h.y)); ctx.stroke();
    ctx.setLineDash([]); ctx.fillStyle = h.color || "#555"; ctx.textAlign = "right"; ctx.fillText(h.label, W - m.r - 4, Y(h.y) - 4);
  }
  // series
  for (const s of series) {
    ctx.strokeStyle = s.color; ctx.fillStyle = s.color; ctx.lineWidth = 2;
    ctx.setLineDash(s.dashed ? [6, 4] : []);
    if (!s.noLine) {
      ctx.beginPath();
      s.xs.forEach((x, i) => {
        if (i === 0) ctx.moveTo(X(x), Y(s.ys[i]));
        else if (s.step) { ctx.lineTo(X(x), Y(s.ys[i - 1])); ctx.lineTo(X(x), Y(s.ys[i])); }
        else ctx.lineTo(X(x), Y(s.ys[i]));
      });
      ctx.stroke();
    }
    ctx.setLineDash([]);
    if (s.points) s.xs.forEach((x, i) => { ctx.beginPath(); ctx.arc(X(x), Y(s.ys[i]), 3, 0, 2 * Math.PI); ctx.fill(); });
  }
}

// Start --------------------------------------------------------------------------------------

$("signin-form").addEventListener("submit", (ev) => { ev.preventDefault(); signIn($("apikey").value.trim()); });
$("signout").addEventListener("click", () => signOut());
if (sessionStorage.getItem(KEY)) showApp();
