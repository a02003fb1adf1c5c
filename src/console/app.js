// cardfleet operator console: plain JavaScript over the /v1 API.
// The API token lives in this tab's sessionStorage only; it is sent as a
// bearer header and never put in a URL. Live views poll the API once a
// second while they are shown (the batch view reads the batch status and
// the batch's cards; the fleet view the racks and dead letters).
"use strict";

const TOKEN_KEY = "cardfleet.token";
const PAGE = 50;
const POLL_MS = 1000;
const MAX_SELECT = 10000;

const state = {
  me: null,
  page: 0,
  lastPageSize: 0,
  rows: [],
  selected: new Map(), // card_id -> profile
  batch: null,
  timer: null,
  view: null,
};

const $ = (id) => document.getElementById(id);

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

function say(text, isError) {
  const m = $("message");
  m.textContent = text;
  m.hidden = !text;
  m.className = isError ? "error" : "info";
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = "Bearer " + token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
    credentials: "omit",
  });
  const type = response.headers.get("content-type") || "";
  const data = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) {
    const message = data && data.message ? data.message : "HTTP " + response.status;
    const code = data && data.code ? data.code : "http_" + response.status;
    if (response.status === 401 && state.me) signOut();
    throw new ApiError(response.status, code, message);
  }
  return data;
}

function report(e) {
  say(e instanceof ApiError ? e.message + " (" + e.code + ")" : String(e), true);
}

function has(role) {
  return !!state.me && state.me.roles.includes(role);
}

// ---- sign-in -------------------------------------------------------------

async function signIn(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  try {
    state.me = await api("GET", "/v1/me");
  } catch (e) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.me = null;
    report(e);
    return;
  }
  $("token").value = "";
  say("");
  $("whoami").textContent = state.me.name + " (" + state.me.roles.join(", ") + ")";
  $("who").hidden = false;
  $("nav").hidden = false;
  let first = null;
  for (const tab of document.querySelectorAll("#nav button")) {
    const allowed = has(tab.dataset.role);
    tab.hidden = !allowed;
    if (allowed && !first) first = tab.dataset.view;
  }
  $("initialize").hidden = !has("operator");
  show(first || "signin");
  if (!first) say("This token holds no role the console serves.", true);
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  state.me = null;
  state.selected.clear();
  state.batch = null;
  $("puk-value").textContent = "";
  $("puk-value").hidden = true;
  for (const id of ["new-token", "enroll-token"]) {
    $(id).textContent = "";
    $(id).hidden = true;
  }
  $("who").hidden = true;
  $("nav").hidden = true;
  show("signin");
}

// ---- views ---------------------------------------------------------------

function show(view) {
  state.view = view;
  for (const section of document.querySelectorAll(".view")) {
    section.hidden = section.id !== "view-" + view;
  }
  for (const tab of document.querySelectorAll("#nav button")) {
    tab.setAttribute("aria-current", tab.dataset.view === view ? "page" : "false");
  }
  if (view !== "officer") {
    $("puk-value").textContent = "";
    $("puk-value").hidden = true;
  }
  clearInterval(state.timer);
  state.timer = null;
  const live = { batch: refreshBatch, fleet: refreshFleet }[view];
  if (live) {
    live();
    state.timer = setInterval(live, POLL_MS);
  }
  if (view === "search") search();
  if (view === "admin") refreshAdmin();
  if (view === "audit") refreshAudit();
}

// ---- search and selection -----------------------------------------------

function filterQuery() {
  const q = new URLSearchParams();
  const add = (key, id) => {
    const v = $(id).value.trim();
    if (v) q.set(key, v);
  };
  add("type", "f-type");
  add("state", "f-state");
  add("card_number", "f-number");
  add("chip_serial", "f-serial");
  add("batch_id", "f-batch");
  return q;
}

async function search() {
  const q = filterQuery();
  q.set("limit", String(PAGE));
  q.set("offset", String(state.page * PAGE));
  try {
    state.rows = await api("GET", "/v1/cards?" + q.toString());
  } catch (e) {
    report(e);
    return;
  }
  state.lastPageSize = state.rows.length;
  const body = $("results").tBodies[0];
  body.replaceChildren();
  for (const card of state.rows) {
    const tr = el("tr", null, { "data-card": card.card_id });
    const td = el("td");
    const box = el("input", null, {
      type: "checkbox",
      class: "pick",
      "aria-label": "Select card " + card.card_number,
      "data-id": card.card_id,
    });
    box.checked = state.selected.has(card.card_id);
    box.addEventListener("change", () => {
      if (box.checked) state.selected.set(card.card_id, card.profile);
      else state.selected.delete(card.card_id);
      updateSelection();
    });
    td.append(box);
    tr.append(td);
    for (const v of [card.card_number, card.chip_serial, card.card_type, card.profile, card.state, card.state_reason || ""]) {
      tr.append(el("td", v));
    }
    body.append(tr);
  }
  $("page-info").textContent =
    "page " + (state.page + 1) + ": " + state.rows.length + " card" + (state.rows.length === 1 ? "" : "s");
  $("prev").disabled = state.page === 0;
  $("next").disabled = state.rows.length < PAGE;
  updateSelection();
}

function updateSelection() {
  const n = state.selected.size;
  $("selected-count").textContent = n + " selected";
  $("initialize").disabled = n === 0;
  const boxes = [...document.querySelectorAll("#results .pick")];
  $("select-page").checked = boxes.length > 0 && boxes.every((b) => b.checked);
}

async function selectMatching() {
  const q = filterQuery();
  let offset = 0;
  try {
    for (;;) {
      q.set("limit", "1000");
      q.set("offset", String(offset));
      const page = await api("GET", "/v1/cards?" + q.toString());
      for (const card of page) {
        if (state.selected.size >= MAX_SELECT) break;
        state.selected.set(card.card_id, card.profile);
      }
      if (page.length < 1000 || state.selected.size >= MAX_SELECT) break;
      offset += 1000;
    }
  } catch (e) {
    report(e);
  }
  for (const b of document.querySelectorAll("#results .pick")) b.checked = state.selected.has(b.dataset.id);
  updateSelection();
}

// ---- initialize: confirmation step ---------------------------------------

function openConfirm() {
  const n = state.selected.size;
  if (n === 0) return;
  const profiles = [...new Set(state.selected.values())].sort();
  $("confirm-text").textContent =
    "Initialize " + n + " card" + (n === 1 ? "" : "s") + " with profile " + profiles.join(", ") + "?";
  $("confirm").hidden = false;
  $("confirm-next").focus();
}

function closeConfirm() {
  $("confirm").hidden = true;
  $("initialize").focus();
}

async function confirmNext() {
  const ids = [...state.selected.keys()];
  $("confirm").hidden = true;
  try {
    const outcome = await api("POST", "/v1/initializations", { card_ids: ids });
    state.selected.clear();
    const rejected = outcome.rejected.length;
    say(
      "Batch " + outcome.batch_id + ": " + outcome.accepted.length + " accepted" +
        (rejected ? ", " + rejected + " rejected (" + outcome.rejected[0].message + ")" : ""),
      false,
    );
    openBatch(outcome.batch_id);
  } catch (e) {
    report(e);
  }
}

// ---- batch view ----------------------------------------------------------

function openBatch(id) {
  state.batch = id;
  $("batch-id").value = id;
  show("batch");
}

function fillCounts(dl, counts) {
  dl.replaceChildren();
  for (const [name, n] of Object.entries(counts).sort()) {
    const wrap = el("div", null, { "data-state": name });
    wrap.append(el("dt", name), el("dd", n, { id: dl.id + "-" + name }));
    dl.append(wrap);
  }
}

async function refreshBatch() {
  const id = state.batch;
  if (!id) return;
  let status, cards;
  try {
    status = await api("GET", "/v1/initializations/" + encodeURIComponent(id) + "?limit=1000");
    cards = await api("GET", "/v1/cards?limit=1000&batch_id=" + encodeURIComponent(id));
  } catch (e) {
    report(e);
    return;
  }
  if (state.batch !== id) return;
  $("batch-state").textContent = status.finished ? "finished" : "running";
  const counts = {};
  for (const [k, v] of Object.entries(status.counts)) if (v > 0) counts[k] = v;
  // Jobs of a rack silent past its lease: their cards wait for it, escrowed.
  if (status.awaiting_rack > 0) counts["awaiting rack"] = status.awaiting_rack;
  fillCounts($("batch-counts"), counts);
  const byState = {};
  const numbers = {};
  for (const c of cards) {
    byState[c.state] = (byState[c.state] || 0) + 1;
    numbers[c.card_id] = c;
  }
  fillCounts($("card-counts"), byState);
  state.batchCards = numbers;
  state.batchJobs = status.cards;
  const body = $("batch-cards").tBodies[0];
  body.replaceChildren();
  for (const job of status.cards) {
    const card = numbers[job.card_id];
    const tr = el("tr", null, { "data-card": job.card_id, "data-state": job.state });
    tr.append(
      el("td", card ? card.card_number : job.card_id),
      el("td", job.lease_expired_at ? job.state + " (waiting for its rack since " + job.lease_expired_at + ")" : job.state, job.lease_expired_at ? { class: "lease-expired" } : undefined),
      el("td", job.rack_id || ""),
      el("td", job.reason || "", { class: "reason" }),
    );
    const action = el("td");
    if (!["succeeded", "failed", "cancelled"].includes(job.state)) {
      const b = el("button", "Cancel card", {
        type: "button",
        class: "cancel-card",
        "aria-label": "Cancel card " + (card ? card.card_number : job.card_id),
      });
      b.addEventListener("click", () => cancelCard(job.card_id));
      action.append(b);
    }
    tr.append(action);
    body.append(tr);
  }
  $("batch-cancel").disabled = status.finished;
  $("batch-retry").disabled = !status.cards.some(
    (j) => (j.state === "failed" || j.state === "cancelled") && numbers[j.card_id] && numbers[j.card_id].state === "produced",
  );
}

async function cancelBatch() {
  try {
    const o = await api("POST", "/v1/initializations/" + encodeURIComponent(state.batch) + "/cancel");
    say("Cancelled " + o.cancelled.length + " jobs; " + o.stopping.length + " stopping on their rack.", false);
  } catch (e) {
    report(e);
  }
  refreshBatch();
}

async function cancelCard(cardId) {
  try {
    await api(
      "POST",
      "/v1/initializations/" + encodeURIComponent(state.batch) + "/cards/" + encodeURIComponent(cardId) + "/cancel",
    );
  } catch (e) {
    report(e);
  }
  refreshBatch();
}

async function retryFailed() {
  const cards = state.batchCards || {};
  const ids = (state.batchJobs || [])
    .filter((j) => (j.state === "failed" || j.state === "cancelled") && cards[j.card_id] && cards[j.card_id].state === "produced")
    .map((j) => j.card_id);
  if (ids.length === 0) return;
  try {
    const outcome = await api("POST", "/v1/initializations", { card_ids: ids });
    say("Retry: batch " + outcome.batch_id + " with " + outcome.accepted.length + " cards.", false);
    openBatch(outcome.batch_id);
  } catch (e) {
    report(e);
  }
}

// ---- fleet view ----------------------------------------------------------

function age(iso) {
  if (!iso) return "never";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  return s + " s ago";
}

async function refreshFleet() {
  let racks, dead;
  try {
    racks = await api("GET", "/v1/racks");
    dead = await api("GET", "/v1/dead-letters?limit=50");
  } catch (e) {
    report(e);
    return;
  }
  const root = $("racks");
  root.replaceChildren();
  if (racks.length === 0) root.append(el("p", "No rack has reported yet."));
  for (const rack of racks) {
    const section = el("section", null, { class: "rack", "data-rack": rack.rack_id, "aria-label": "Rack " + rack.rack_id });
    section.append(el("h4", "Rack " + rack.rack_id));
    section.append(
      el("p", "heartbeat " + age(rack.last_heartbeat) + " · " + rack.in_flight + " in flight" + (rack.worker_id ? " · worker " + rack.worker_id : ""), {
        class: "heartbeat",
      }),
    );
    const grid = el("ul", null, { class: "slots" });
    for (const slot of rack.slots) {
      const li = el("li", null, { class: "slot state-" + slot.state, "data-slot": String(slot.slot), "data-state": slot.state });
      li.append(el("span", "slot " + slot.slot, { class: "slot-no" }), el("span", slot.state, { class: "slot-state" }));
      if (slot.chip_serial) li.append(el("span", slot.chip_serial, { class: "chip" }));
      if (slot.reason) li.append(el("span", slot.reason, { class: "reason" }));
      if (slot.state === "quarantined" || slot.state === "faulted") {
        const b = el("button", "Release", { type: "button", class: "release", "aria-label": "Release slot " + slot.slot + " of rack " + rack.rack_id });
        b.addEventListener("click", () => releaseSlot(rack.rack_id, slot.slot));
        li.append(b);
      }
      grid.append(li);
    }
    section.append(grid);
    root.append(section);
  }
  const body = $("dead-letters").tBodies[0];
  body.replaceChildren();
  if (dead.length === 0) {
    const tr = el("tr");
    tr.append(el("td", "No dead letters.", { colspan: "6" }));
    body.append(tr);
  }
  for (const d of dead) {
    const tr = el("tr");
    const details = el("details");
    details.append(el("summary", "inspect"), el("pre", d.payload));
    const cell = el("td");
    cell.append(details);
    tr.append(el("td", d.id), el("td", d.received_at), el("td", d.source), el("td", d.reason), cell);
    const action = el("td");
    if (d.redriven_at) {
      action.append(el("span", "sent again by " + d.redriven_by));
    } else {
      const b = el("button", "Redrive", { type: "button", class: "redrive", "aria-label": "Send dead letter " + d.id + " again" });
      b.addEventListener("click", () => redrive(d.id));
      action.append(b);
    }
    tr.append(action);
    body.append(tr);
  }
}

async function releaseSlot(rack, slot) {
  try {
    await api("POST", "/v1/racks/" + encodeURIComponent(rack) + "/slots/" + slot + "/release");
    say("Release of slot " + slot + " of rack " + rack + " sent to its worker.", false);
  } catch (e) {
    report(e);
  }
  refreshFleet();
}

async function redrive(id) {
  try {
    await api("POST", "/v1/dead-letters/" + id + "/redrive");
    say("Dead letter " + id + " was sent again.", false);
  } catch (e) {
    report(e);
  }
  refreshFleet();
}

// ---- administration ------------------------------------------------------

async function refreshAdmin() {
  try {
    const p = await api("GET", "/v1/processes/initialize-temporary-card");
    $("process-state").textContent = p.enabled ? "enabled" : "disabled";
    $("process-enable").disabled = p.enabled;
    $("process-disable").disabled = !p.enabled;
    const tokens = await api("GET", "/v1/tokens");
    const body = $("tokens").tBodies[0];
    body.replaceChildren();
    for (const t of tokens) {
      const tr = el("tr", null, { "data-token": t.name });
      const st = t.revoked_at ? "revoked" : t.used_at ? "used" : "active";
      tr.append(el("td", t.name), el("td", t.roles.join(", ")), el("td", t.rack_id || ""), el("td", st));
      const action = el("td");
      if (!t.revoked_at) {
        const b = el("button", "Revoke", { type: "button", "aria-label": "Revoke token " + t.name });
        b.addEventListener("click", async () => {
          try {
            await api("POST", "/v1/tokens/" + encodeURIComponent(t.name) + "/revoke");
          } catch (e) {
            report(e);
          }
          refreshAdmin();
        });
        action.append(b);
      }
      tr.append(action);
      body.append(tr);
    }
  } catch (e) {
    report(e);
  }
}

async function setProcess(enabled) {
  try {
    await api("PUT", "/v1/processes/initialize-temporary-card", { enabled });
    say("Initialize temporary card is now " + (enabled ? "enabled" : "disabled") + ".", false);
  } catch (e) {
    report(e);
  }
  refreshAdmin();
}

async function createToken(event) {
  event.preventDefault();
  const roles = [...document.querySelectorAll('#token-form input[name="role"]:checked')].map((b) => b.value);
  try {
    const t = await api("POST", "/v1/tokens", { name: $("new-token-name").value.trim(), roles });
    $("new-token").textContent = "Token " + t.name + " (shown once): " + t.token;
    $("new-token").hidden = false;
    $("new-token-name").value = "";
  } catch (e) {
    report(e);
  }
  refreshAdmin();
}

async function createEnrollmentToken(event) {
  event.preventDefault();
  const rack = $("enroll-rack").value.trim();
  try {
    const t = await api("POST", "/v1/racks/" + encodeURIComponent(rack) + "/enrollment-tokens", {
      ttl_hours: Number($("enroll-ttl").value) || 24,
    });
    $("enroll-token").textContent =
      "Enrolment token for rack " + t.rack_id + " (single use, until " + t.expires_at + "; shown once): " + t.token;
    $("enroll-token").hidden = false;
  } catch (e) {
    report(e);
  }
  refreshAdmin();
}

// ---- officer -------------------------------------------------------------

async function readPuk(event) {
  event.preventDefault();
  const card = $("puk-card").value.trim();
  const reason = $("puk-reason").value.trim();
  if (!reason) {
    say("Give the reason the PUK is needed.", true);
    return;
  }
  try {
    const r = await api("GET", "/v1/cards/" + encodeURIComponent(card) + "/puk?reason=" + encodeURIComponent(reason));
    $("puk-value").textContent = "PUK (shown once, not stored here): " + r.puk;
    $("puk-value").hidden = false;
    $("puk-reason").value = "";
    say("");
  } catch (e) {
    report(e);
  }
}

async function releaseMailers(event) {
  event.preventDefault();
  const batch = $("mailers-batch").value.trim();
  const token = sessionStorage.getItem(TOKEN_KEY);
  try {
    const response = await fetch("/v1/initializations/" + encodeURIComponent(batch) + "/pin-mailers?format=html", {
      method: "POST",
      headers: { Authorization: "Bearer " + token },
      cache: "no-store",
      credentials: "omit",
    });
    if (!response.ok) {
      const data = await response.json().catch(() => ({}));
      throw new ApiError(response.status, data.code || "http_" + response.status, data.message || "HTTP " + response.status);
    }
    const blob = await response.blob();
    const url = URL.createObjectURL(blob);
    const a = el("a", null, { href: url, download: "pin-mailers-" + batch + ".html" });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    say("Released " + (response.headers.get("x-cardfleet-letters") || "?") + " PIN letters; they cannot be released again.", false);
  } catch (e) {
    report(e);
  }
}

// ---- audit ---------------------------------------------------------------

async function refreshAudit(event) {
  if (event) event.preventDefault();
  const q = new URLSearchParams({ limit: "1000" });
  const action = $("audit-action").value.trim();
  if (action) q.set("action", action);
  let rows;
  try {
    rows = await api("GET", "/v1/audit?" + q.toString());
  } catch (e) {
    report(e);
    return;
  }
  const body = $("audit").tBodies[0];
  body.replaceChildren();
  for (const r of rows.slice(-100).reverse()) {
    const tr = el("tr", null, { "data-action": r.action });
    tr.append(
      el("td", r.at),
      el("td", r.actor),
      el("td", r.action),
      el("td", r.card_id || ""),
      el("td", r.detail ? JSON.stringify(r.detail) : ""),
    );
    body.append(tr);
  }
}

// ---- wiring --------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const token = $("token").value.trim();
    if (token) signIn(token);
  });
  $("sign-out").addEventListener("click", signOut);
  for (const tab of document.querySelectorAll("#nav button")) {
    tab.addEventListener("click", () => show(tab.dataset.view));
  }
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.page = 0;
    search();
  });
  $("prev").addEventListener("click", () => {
    state.page = Math.max(0, state.page - 1);
    search();
  });
  $("next").addEventListener("click", () => {
    state.page += 1;
    search();
  });
  $("select-page").addEventListener("change", (e) => {
    for (const card of state.rows) {
      if (e.target.checked) state.selected.set(card.card_id, card.profile);
      else state.selected.delete(card.card_id);
    }
    for (const b of document.querySelectorAll("#results .pick")) b.checked = e.target.checked;
    updateSelection();
  });
  $("select-matching").addEventListener("click", selectMatching);
  $("select-none").addEventListener("click", () => {
    state.selected.clear();
    for (const b of document.querySelectorAll("#results .pick")) b.checked = false;
    updateSelection();
  });
  $("initialize").addEventListener("click", openConfirm);
  $("confirm-next").addEventListener("click", confirmNext);
  $("confirm-cancel").addEventListener("click", closeConfirm);
  $("confirm").addEventListener("keydown", (e) => {
    if (e.key === "Escape") closeConfirm();
  });
  $("batch-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = $("batch-id").value.trim();
    if (id) openBatch(id);
  });
  $("batch-cancel").addEventListener("click", cancelBatch);
  $("batch-retry").addEventListener("click", retryFailed);
  $("process-enable").addEventListener("click", () => setProcess(true));
  $("process-disable").addEventListener("click", () => setProcess(false));
  $("token-form").addEventListener("submit", createToken);
  $("enroll-form").addEventListener("submit", createEnrollmentToken);
  $("puk-form").addEventListener("submit", readPuk);
  $("mailers-form").addEventListener("submit", releaseMailers);
  $("audit-form").addEventListener("submit", refreshAudit);
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) signIn(token);
});
