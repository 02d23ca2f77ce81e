// Mosaic's dashboard: polls the admin API of the host that served this page (same origin,
// with the token kept in this tab's session) and draws what it answers.
"use strict";

const TOKEN_KEY = "mosaic-admin-token";
const POLL_MS = 2000;
const $ = (selector) => document.querySelector(selector);

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function askForToken(reason) {
  sessionStorage.removeItem(TOKEN_KEY);
  $("#dashboard").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = reason || "";
  $("#token").focus();
}

async function api(method, path) {
  const response = await fetch(path, { method, headers: { authorization: "Bearer " + token() } });
  if (response.status === 401) {
    askForToken("That token was refused: copy it again from .mosaic/admin-token.");
    throw new Error("unauthorized");
  }
  const text = await response.text();
  let body;
  try { body = JSON.parse(text); } catch (_) { body = { detail: text }; }
  return { status: response.status, body };
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function short(digest) {
  return digest ? String(digest).replace(/^sha256:/, "").slice(0, 12) : "";
}

function when(ms) {
  return ms ? new Date(ms).toLocaleString() : "";
}

// Requests/s and errors/s between consecutive samples: [[at, requests/s, errors/s], ...].
function rates(rows) {
  const out = [];
  for (let i = 1; i < rows.length; i++) {
    const seconds = (rows[i][0] - rows[i - 1][0]) / 1000;
    if (seconds <= 0) continue;
    out.push([rows[i][0], Math.max(0, rows[i][1] - rows[i - 1][1]) / seconds, Math.max(0, rows[i][2] - rows[i - 1][2]) / seconds]);
  }
  return out;
}

const SVG = "http://www.w3.org/2000/svg";

function chart(points) {
  const width = 160, height = 28;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const top = Math.max(1, ...points.map((p) => p[1]));
  const line = (index, color) => {
    if (points.length < 2) return;
    const path = points.map((p, i) => `${(i / (points.length - 1)) * width},${height - 1 - (p[index] / top) * (height - 2)}`).join(" ");
    const polyline = document.createElementNS(SVG, "polyline");
    polyline.setAttribute("points", path);
    polyline.setAttribute("fill", "none");
    polyline.setAttribute("stroke", color);
    polyline.setAttribute("stroke-width", "1.5");
    svg.appendChild(polyline);
  };
  line(1, "#3461c1");
  line(2, "#b3261e");
  const title = document.createElementNS(SVG, "title");
  title.textContent = `requests/s (blue) and errors/s (red), peak ${top.toFixed(1)}/s`;
  svg.appendChild(title);
  return svg;
}

async function act(name, action) {
  const verb = action === "rollback" ? "Roll back" : "Promote the canary of";
  if (!confirm(`${verb} ${name}?`)) return;
  $("#message").textContent = `${action} of ${name}...`;
  const { status, body } = await api("POST", `/v1/components/${encodeURIComponent(name)}/${action}`);
  $("#message").className = status === 200 ? "ok" : "error";
  $("#message").textContent = status === 200
    ? `${action} of ${name}: now ${short(body.version || body.digest)}`
    : `${action} of ${name} failed: ${body.detail || body.error || status}`;
  refresh();
}

// The buttons outlive each redraw (the table is drawn again every poll): the same element
// moves into the new row, so a click that began on it still lands.
const buttons = new Map();

function button(label, className, onClick, name) {
  const key = `${className} ${name}`;
  let b = buttons.get(key);
  if (!b) {
    b = document.createElement("button");
    b.textContent = label;
    b.className = className;
    b.dataset.component = name;
    b.addEventListener("click", onClick);
    buttons.set(key, b);
  }
  return b;
}

function drawComponents(components, series) {
  const body = $("#components tbody");
  body.replaceChildren();
  for (const c of components) {
    const row = document.createElement("tr");
    row.dataset.component = c.name;
    const points = rates((series.components || {})[c.name] || []);
    const last = points[points.length - 1] || [0, 0, 0];
    cell(row, c.name);
    cell(row, short(c.version), "version").title = c.version;
    cell(row, c.world);
    cell(row, c.route || (c.composed_into && c.composed_into.length ? "in " + c.composed_into.join(", ") : ""));
    cell(row, last[1].toFixed(1), "number requests-rate");
    const errorRate = last[1] > 0 ? (100 * last[2]) / last[1] : 0;
    cell(row, `${errorRate.toFixed(1)}% (${c.errors} of ${c.requests})`, "number" + (errorRate > 0 ? " error" : ""));
    cell(row, String(c.in_flight), "number");
    cell(row, "").appendChild(chart(points));
    const canary = cell(row, "", "canary");
    if (c.canary) {
      canary.textContent = `${short(c.canary.version)} takes ${c.canary.share_percent}% `;
      canary.appendChild(button("Promote", "promote", () => act(c.name, "promote"), c.name));
    } else if (c.last_canary) {
      canary.textContent = c.last_canary;
      canary.className = "canary muted";
    }
    const actions = cell(row, "");
    if (c.world !== "dependency" || c.version) {
      actions.appendChild(button("Roll back", "rollback danger", () => act(c.name, "rollback"), c.name));
    }
    body.appendChild(row);
  }
}

function drawHistory(entries) {
  const body = $("#history tbody");
  body.replaceChildren();
  const by = (action) =>
    action === "manifest" ? "host start (spin.toml)"
      : action === "auto_rollback" || action === "canary_step" ? "canary policy"
      : "operator (admin API)";
  for (const e of entries) {
    const row = document.createElement("tr");
    cell(row, when(e.at_unix_ms));
    cell(row, e.component);
    cell(row, e.action + (e.canary ? ` ${(e.canary.share_bp || 0) / 100}%` : ""));
    cell(row, short(e.digest), "version");
    cell(row, short(e.previous), "version");
    cell(row, by(e.action));
    cell(row, e.reason || "", e.reason ? "error" : "");
    body.appendChild(row);
  }
}

function drawCluster(cluster) {
  const section = $("#cluster-section");
  if (!cluster) { section.hidden = true; return; }
  section.hidden = false;
  const body = $("#cluster tbody");
  body.replaceChildren();
  for (const h of cluster.hosts || []) {
    const row = document.createElement("tr");
    cell(row, h.host + (h.host === cluster.this_host ? " (this one)" : ""));
    cell(row, h.http_addr || "");
    cell(row, h.alive ? "yes" : "no", h.alive ? "ok" : "error");
    cell(row, `${Math.round((h.silent_ms || 0) / 1000)} s ago`);
    cell(row, Object.entries(h.versions || {}).map(([name, digest]) => `${name} ${short(digest)}`).join(", "));
    body.appendChild(row);
  }
}

let refreshing = false;

async function refresh() {
  if (!token() || refreshing) return;
  refreshing = true;
  try {
    const [status, series, history, cluster] = await Promise.all([
      api("GET", "/v1/status"),
      api("GET", "/v1/series"),
      api("GET", "/v1/history?limit=50"),
      api("GET", "/v1/cluster"),
    ]);
    $("#login").hidden = true;
    $("#dashboard").hidden = false;
    const components = status.body;
    drawComponents(components, series.body);
    drawHistory(history.body.history || []);
    drawCluster(cluster.status === 200 ? cluster.body : null);
    $("#summary").textContent = `${components.length} components, updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    if (err.message !== "unauthorized") $("#summary").textContent = `cannot reach the host: ${err.message}`;
  } finally {
    refreshing = false;
  }
}

$("#login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("#token").value.trim());
  $("#login-error").textContent = "";
  refresh();
});

if (token()) refresh(); else askForToken();
setInterval(refresh, POLL_MS);
