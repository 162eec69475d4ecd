// The experimenter's monitor: create experiments, hand out the participant links, and watch
// one experiment live over `WS /ws/monitor/{code}` (see CONTRACT.md §4 and README.md).
//
// No framework and no build step: the page's HTML is static (monitor.html) and this module
// fills it. State lives in plain objects; the DOM is updated from them when a frame arrives,
// and a timer redraws what moves by itself (countdowns, charts, "connected for").

import { SynclabSocket } from "./synclab.js";
import { drawSteps } from "./chart.js";
import qrcode from "./vendor/qrcode-generator.mjs";

const TOKEN_KEY = "synclab.monitor.token";
const PAGE_SIZE = 20;
const LOG_ROWS = 25;
/** The most points a chart keeps per participant; past it every second old point is dropped. */
const MAX_POINTS = 4000;
const PALETTE = ["#0b62c4", "#d1495b", "#2a9d4b", "#e08a00", "#7b4fc9", "#00838f", "#8d6e63", "#c2185b"];

const $ = (selector, root = document) => root.querySelector(selector);

// --------------------------------------------------------------------------------- DOM helpers

/** An element with attributes (`class`, `data-*`, `on*` handlers, properties) and children. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else if (name in el && !name.includes("-")) el[name] = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

function setText(el, text) {
  const value = String(text);
  if (el.textContent !== value) el.textContent = value;
}

function summaryList(dl, rows) {
  dl.replaceChildren(...rows.map(([term, value, id]) => h("div", {}, h("dt", {}, term), h("dd", { id }, value))));
}

// ---------------------------------------------------------------------------------- formatting

function formatClock(ms) {
  const total = Math.max(0, Math.ceil(ms / 1000));
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const seconds = String(total % 60).padStart(2, "0");
  return hours ? `${hours}:${String(minutes).padStart(2, "0")}:${seconds}` : `${minutes}:${seconds}`;
}

function formatTime(ms) {
  return ms === null || ms === undefined ? "—" : new Date(ms).toLocaleTimeString();
}

function formatIso(iso) {
  return iso ? new Date(iso).toLocaleString() : "—";
}

function formatValue(value) {
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(2);
  const text = JSON.stringify(value);
  return text === undefined ? "—" : text.length > 80 ? `${text.slice(0, 77)}…` : text;
}

/** JSON indented by object, with arrays of plain values kept on one line: short and editable. */
function compactJson(value, indent = "") {
  if (Array.isArray(value) && value.every((v) => v === null || typeof v !== "object")) return JSON.stringify(value);
  if (value === null || typeof value !== "object") return JSON.stringify(value);
  const inner = `${indent}  `;
  const items = Array.isArray(value)
    ? value.map((v) => inner + compactJson(v, inner))
    : Object.entries(value).map(([k, v]) => `${inner}${JSON.stringify(k)}: ${compactJson(v, inner)}`);
  const [open, close] = Array.isArray(value) ? ["[", "]"] : ["{", "}"];
  return items.length ? `${open}\n${items.join(",\n")}\n${indent}${close}` : `${open}${close}`;
}

function formatNumber(value, digits = 1) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "—";
}

// ------------------------------------------------------------------------------------ the token

/**
 * The token from the address's fragment, `#token=` (which the browser never sends: no access log
 * sees it), or from an old link's `?token=`; then removed from the address bar. Else the one in
 * localStorage.
 */
function takeToken() {
  const url = new URL(window.location.href);
  const fragment = new URLSearchParams(url.hash.slice(1));
  const fromUrl = fragment.get("token") || url.searchParams.get("token");
  if (fromUrl) {
    localStorage.setItem(TOKEN_KEY, fromUrl);
    url.searchParams.delete("token");
    fragment.delete("token");
    const rest = fragment.toString();
    history.replaceState(history.state, "", url.pathname + url.search + (rest ? `#${rest}` : ""));
  }
  return localStorage.getItem(TOKEN_KEY);
}

function showTokenForm(show) {
  $("#token-form").hidden = !show;
  $("#token-saved").hidden = show;
}

/** Keep `token` (null: forget it); who it is is asked again (`loadAccount`). */
function useToken(token) {
  if (token) localStorage.setItem(TOKEN_KEY, token);
  else localStorage.removeItem(TOKEN_KEY);
  app.token = token;
  showAccount(null);
  showTokenForm(!token);
}

/**
 * The token's account, `GET api/me` (`{"name", "role"}`), asked once per token before a view is
 * shown. The page offers only what the role may do: what needs `admin` (class `needs-admin`: the
 * create form, the experiment's and each group's controls, the downloads) is shown for an admin
 * only, and for a `watch` token a note (class `role-note`) says why it is not there.
 */
async function loadAccount() {
  if (app.account) return;
  const token = app.token;
  const account = await api("api/me");
  if (app.token === token) showAccount(account); // unless the token changed meanwhile
}

function showAccount(account) {
  app.account = account;
  if (account) document.body.dataset.role = account.role;
  else delete document.body.dataset.role;
  for (const el of document.querySelectorAll(".account-name")) setText(el, account ? `'${account.name}'` : "");
  for (const el of document.querySelectorAll(".account-role")) setText(el, account ? account.role : "");
  setText($("#token-account"), account ? `Token '${account.name}' (role ${account.role})` : "Token");
}

// ---------------------------------------------------------------------------------- the REST API

class ApiError extends Error {
  constructor(status, message, field) {
    super(message);
    this.status = status;
    this.field = field;
  }
}

/** The `{"error": ...}` body of a refused request as a message; plain text bodies as they are. */
function errorMessage(response, text) {
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    return { message: text.trim() || response.statusText, field: null };
  }
  const error = body && body.error;
  if (typeof error === "string") return { message: error, field: body.field ?? null };
  if (error && typeof error === "object") {
    const message = error.message || JSON.stringify(error);
    return { message: error.code ? `${error.code}: ${message}` : message, field: error.field ?? body.field ?? null };
  }
  return { message: text, field: null };
}

/** A request to the API with the token; resolves to the parsed JSON (or the Response for `raw`). */
async function api(path, { method = "GET", body, raw = false } = {}) {
  const headers = { Authorization: `Bearer ${app.token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (error) {
    throw new ApiError(0, `could not reach the server (${error.message})`, null);
  }
  if (!response.ok) {
    const { message, field } = errorMessage(response, await response.text());
    // a watch token refused an admin's act keeps its place; a wrong or revoked token is forgotten
    if (response.status === 401 || (response.status === 403 && !/ has the role /.test(message))) tokenRefused();
    throw new ApiError(response.status, message, field);
  }
  return raw ? response : response.json();
}

function tokenRefused() {
  useToken(null);
}

function showError(error) {
  const box = $("#error");
  const where = error.status ? `${error.status}: ` : "";
  const field = error.field ? ` (field: ${error.field})` : "";
  box.textContent = `${where}${error.message}${field}`;
  box.hidden = false;
  if (!(error instanceof ApiError)) console.error(error);
}

function clearError() {
  $("#error").hidden = true;
  $("#error").textContent = "";
}

/** Run an async UI action: errors are shown, never swallowed. */
function guarded(fn) {
  return async (...args) => {
    try {
      await fn(...args);
    } catch (error) {
      showError(error);
    }
  };
}

// ------------------------------------------------------------------------------------- routing

const app = { token: null, account: null, games: [], page: 1, live: null, routes: 0 };

function currentExperiment() {
  return new URL(window.location.href).searchParams.get("experiment");
}

function navigate(code) {
  const url = new URL(window.location.href);
  url.search = code ? `?experiment=${encodeURIComponent(code)}` : "";
  history.pushState({}, "", url.pathname + url.search);
  route();
}

async function route() {
  const turn = ++app.routes;
  clearError();
  if (app.live) {
    app.live.close();
    app.live = null;
  }
  const code = currentExperiment();
  $("#home").hidden = true;
  $("#experiment").hidden = true;
  if (!app.token) {
    showError({ message: "Enter the experimenter token to use the monitor." });
    return;
  }
  try {
    await loadAccount();
  } catch (error) {
    showError(error);
    return;
  }
  if (turn !== app.routes || !app.account) return; // the user went elsewhere, or the token changed, meanwhile
  $("#home").hidden = !!code;
  $("#experiment").hidden = !code;
  if (code) await openExperiment(code);
  else await openHome();
}

// ------------------------------------------------------------------------- home: create and list

async function openHome() {
  document.title = "synclab monitor";
  await Promise.all([guarded(loadGames)(), guarded(loadExperiments)()]);
}

async function loadGames() {
  if (app.games.length) return;
  const body = await api("api/games");
  app.games = body.results;
  const select = $("#f-game");
  select.replaceChildren(
    ...app.games.map((g) => h("option", { value: g.name }, g.name)),
    // a game of one's own named by import path, as the guide does (the list holds registered games)
    h("option", { value: "" }, "Another game, by import path…"),
  );
  showGame();
}

/** The chosen game's doc, schema and default config; its smallest group size as the default. */
function showGame() {
  const byPath = $("#f-game").value === "";
  $("#game-path-field").hidden = !byPath;
  if (byPath) {
    setText($("#game-doc"), "A game of your own, named by its import path (module:Class); the server imports it and fills in its defaults.");
    setText($("#game-schema"), "");
    $("#f-config").value = "";
    $("#f-group_size").min = 1;
    $("#f-group_size").removeAttribute("max");
    return;
  }
  const game = app.games.find((g) => g.name === $("#f-game").value);
  if (!game) return;
  const missing = game.view_missing ? `\nThis game cannot be played: ${game.view_missing}.` : "";
  setText($("#game-doc"), `${game.doc || "(no description)"}\nGroup sizes: ${game.group_sizes.join(" to ")}.${missing}`);
  setText($("#game-schema"), JSON.stringify(game.config_schema, null, 2));
  $("#f-config").value = compactJson(game.default_config);
  $("#f-group_size").value = game.group_sizes[0];
  $("#f-group_size").min = game.group_sizes[0];
  if (game.group_sizes[1] !== null && game.group_sizes[1] !== undefined) $("#f-group_size").max = game.group_sizes[1];
  else $("#f-group_size").removeAttribute("max");
}

const INTEGER_FIELDS = ["participants", "group_size", "blocks", "num_subperiods"];
const NUMBER_FIELDS = ["period_length", "rate_limit", "bonus_points", "block_pause"];

/** The POST body from the form; empty optional fields are left out (or null: continuous, no limit). */
function experimentRequest(form) {
  const body = { game: form.game.value || form.game_path.value.trim(), matching: form.matching.value };
  for (const name of [...INTEGER_FIELDS, ...NUMBER_FIELDS]) {
    const raw = form[name].value.trim();
    if (raw === "") {
      if (name === "num_subperiods" || name === "rate_limit") body[name] = null;
      continue;
    }
    const value = Number(raw);
    if (!Number.isFinite(value) || (INTEGER_FIELDS.includes(name) && !Number.isInteger(value))) {
      const kind = INTEGER_FIELDS.includes(name) ? "a whole number" : "a number";
      throw new ApiError(0, `${name}: expected ${kind}, got ${JSON.stringify(raw)}`, name);
    }
    body[name] = value;
  }
  const config = form.config.value.trim();
  if (config) {
    try {
      body.config = JSON.parse(config);
    } catch (error) {
      throw new ApiError(0, `config: expected JSON, got an error: ${error.message}`, "config");
    }
  }
  return body;
}

function markInvalid(form, field) {
  for (const el of form.elements) el.removeAttribute("aria-invalid");
  const el = field && form.elements.namedItem(field);
  if (el && el.focus) {
    el.setAttribute("aria-invalid", "true");
    el.focus();
  }
}

async function createExperiment(event) {
  event.preventDefault();
  const form = event.currentTarget;
  clearError();
  try {
    const created = await api("api/experiments", { method: "POST", body: experimentRequest(form) });
    markInvalid(form, null);
    navigate(created.code);
  } catch (error) {
    markInvalid(form, error.field === "game" && form.game.value === "" ? "game_path" : error.field);
    showError(error);
  }
}

async function loadExperiments(page = app.page) {
  const body = await api(`api/experiments?page=${page}&page_size=${PAGE_SIZE}`);
  app.page = body.current_page;
  $("#experiments tbody").replaceChildren(
    ...body.results.map((x) =>
      h(
        "tr",
        { "data-code": x.code },
        h("td", {}, h("a", { href: `monitor?experiment=${encodeURIComponent(x.code)}`, onclick: follow(x.code) }, x.code)),
        h("td", {}, x.game),
        h("td", {}, h("span", { class: "badge", "data-status": x.status }, x.status)),
        h("td", {}, String(x.num_participants)),
        h("td", {}, String(x.group_size)),
        h("td", {}, String(x.blocks)),
        h("td", {}, formatIso(x.created_at)),
      ),
    ),
  );
  if (!body.results.length) {
    $("#experiments tbody").append(h("tr", {}, h("td", { colSpan: 7 }, "No experiments yet.")));
  }
  setText($("#page-info"), `Page ${body.current_page} of ${body.num_pages} (${body.count} experiments)`);
  $("#page-previous").disabled = !body.previous;
  $("#page-next").disabled = !body.next;
}

/** A link handler that stays in the page (the link still works opened in a new tab). */
function follow(code) {
  return (event) => {
    if (event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
    event.preventDefault();
    navigate(code);
  };
}

// ---------------------------------------------------------------------- one experiment, live

async function openExperiment(code) {
  document.title = `synclab monitor · ${code}`;
  setText($("#x-code"), code);
  for (const id of ["#x-participants tbody", "#x-groups", "#x-log tbody", "#x-blocks tbody"]) $(id).replaceChildren();
  $("#x-summary").replaceChildren();
  $("#x-stats").replaceChildren();
  setText($("#control-result"), "");
  setText($("#live-state"), "");
  delete $("#live-state").dataset.snapshots;
  delete $("#live-state").dataset.lastClose;
  let detail;
  try {
    detail = await api(`api/experiments/${encodeURIComponent(code)}`);
  } catch (error) {
    showError(error);
    return;
  }
  if (currentExperiment() !== code) return; // the user went elsewhere meanwhile
  app.live = new LiveExperiment(detail);
  app.live.connect();
}

/**
 * What the monitor knows of one experiment: the REST detail, then the socket's snapshot and
 * every frame after it. A new snapshot (after a reconnect, e.g. a 4008 for falling behind)
 * replaces the state; the charts keep the points they had.
 */
class LiveExperiment {
  constructor(detail) {
    this.code = detail.code;
    this.detail = detail;
    this.status = detail.status;
    this.blocks = [];
    this.groups = new Map();
    this.people = new Map(detail.participants.map((p, i) => [p.code, { ...p, index: i, connected: false }]));
    this.stats = null;
    this.lastSeq = detail.last_seq;
    this.lastLatency = null;
    this.socket = null;
    this.timer = null;
    this.renderSummary();
    this.renderParticipants();
  }

  connect() {
    // the token goes in the first frame, never in the URL (see README: the monitor's socket)
    this.socket = new SynclabSocket(`ws/monitor/${encodeURIComponent(this.code)}`, {
      opening: () => ({ channel: "auth", payload: { token: app.token } }),
      maxDelay: 8000,
    });
    const s = this.socket;
    s.onState((state, detail) => this.socketState(state, detail));
    s.on("snapshot", (p) => this.snapshot(p));
    s.on("events", (p) => this.events(p));
    s.on("connection", (p) => this.connection(p));
    s.on("stats", (p) => this.statsFrame(p));
    s.on("experiment", (p) => this.experimentFrame(p));
    s.connect();
    this.timer = setInterval(() => this.tick(), 250);
    this.deliveries = watchDeliveries(this.code);
  }

  /** Stop; what this experiment's requests bring back later no longer touches the page. */
  close() {
    this.closed = true;
    clearInterval(this.timer);
    if (this.deliveries) this.deliveries.stop();
    if (this.socket) this.socket.close();
  }

  socketState(state, detail) {
    const el = $("#live-state");
    el.dataset.state = state;
    if (state === "closed") el.dataset.lastClose = String(detail.code);
    if (state === "connecting") setText(el, detail.attempt ? `Reconnecting (attempt ${detail.attempt + 1})…` : "Connecting…");
    else if (state === "open") setText(el, "Live");
    else if (detail.code === 4401 || detail.code === 4403) {
      setText(el, "Not live");
      showError({ message: `The server refused the token for the live view: ${detail.reason || detail.code}` });
      tokenRefused();
    } else if (detail.code === 4404) {
      setText(el, "Not live");
      showError({ message: `The server knows no experiment ${this.code} (socket closed 4404).` });
    } else if (detail.final) setText(el, `Not live (closed ${detail.code}).`);
    else {
      const why = detail.code === 4008 ? "the page fell behind" : `closed ${detail.code}`;
      setText(el, `Connection lost (${why}); reconnecting in ${(detail.retryIn / 1000).toFixed(1)} s.`);
    }
  }

  now() {
    return this.socket ? this.socket.serverNow() : Date.now();
  }

  // ------------------------------------------------------------------------------- frames

  snapshot(p) {
    const el = $("#live-state");
    el.dataset.snapshots = String(Number(el.dataset.snapshots || 0) + 1);
    if (p.experiment) {
      this.detail = { ...this.detail, ...p.experiment };
      this.status = p.experiment.status ?? this.status;
      // The REST detail's links stay: they are the page's own http(s) origin.
      for (const { code, label, url } of p.experiment.participants || []) {
        this.person(code, { label, url: this.people.get(code)?.url || url });
      }
    }
    this.blocks = p.blocks || [];
    this.lastSeq = p.last_seq ?? this.lastSeq;
    const at = p.server_time ?? this.now();
    for (const person of p.participants || []) this.person(person.code, person);
    const seen = new Set();
    for (const g of p.groups || []) {
      const group = this.group(g.id);
      Object.assign(group, {
        block: g.block, index: g.index, phase: g.phase, members: g.members || [],
        started_at: g.started_at ?? null, ends_at: g.ends_at ?? null, ended_at: g.ended_at ?? null,
        paused_at: g.paused_at ?? null, // unknown from an older snapshot: the countdown shows "paused"
        subperiod: g.subperiod ?? null, num_subperiods: g.num_subperiods ?? null,
        period_length: g.period_length ?? null, decisions: { ...(g.decisions || {}) },
      });
      for (const [code, value] of Object.entries(group.decisions)) this.point(group, code, at, value);
      seen.add(group.id);
      // a group that has had its period, running, paused or ended (a finished one looked back at)
      const played = group.phase === "running" || group.phase === "paused" || (group.phase === "ended" && group.started_at !== null);
      if (played && !group.backfilled) {
        group.backfilled = true; // once per group and page: later snapshots keep the points they have
        this.backfill(group, this.lastSeq);
      }
    }
    for (const id of [...this.groups.keys()]) if (!seen.has(id)) this.dropGroup(id);
    this.fillLog(this.lastSeq); // every snapshot: after a reconnect, what was stored while away
    this.renderSummary();
    this.renderBlocks();
    this.renderParticipants();
    for (const group of this.groups.values()) this.renderGroup(group);
  }

  events(list) {
    const touched = new Set();
    for (const e of list) {
      this.lastSeq = Math.max(this.lastSeq ?? 0, e.seq ?? 0);
      if (typeof e.latency === "number") this.lastLatency = e.latency;
      if (e.group !== null && e.group !== undefined) {
        const group = this.group(e.group);
        this.apply(group, e);
        touched.add(group);
      }
    }
    for (const group of touched) this.renderGroup(group);
    if (touched.size) this.renderBlocks();
    this.renderLog(list);
    this.renderStats();
  }

  /** One event's effect on its group's phase, clock and decisions. */
  apply(group, e) {
    const v = e.value;
    if (e.participant && !group.members.includes(e.participant)) group.members.push(e.participant);
    switch (e.channel) {
      case "decisions":
        if (e.participant) this.decide(group, e.participant, e.ts, v);
        break;
      case "group_decisions":
        if (v && typeof v === "object") for (const [code, d] of Object.entries(v)) this.decide(group, code, e.ts, d);
        break;
      case "subperiod":
        if (v && typeof v.index === "number") group.subperiod = v.index + 1;
        if (v && v.group_decisions) for (const [code, d] of Object.entries(v.group_decisions)) this.decide(group, code, e.ts, d);
        break;
      case "state":
        if (v === "period_start") {
          group.phase = "running";
          group.started_at = e.ts;
          group.ended_at = null;
          group.paused_at = null;
          group.subperiod = group.num_subperiods ? 0 : null;
          const length = group.period_length ?? this.blockOf(group)?.period_length;
          group.ends_at = length ? e.ts + length * 1000 : null;
        } else if (v === "period_end") {
          group.phase = "ended";
          group.ended_at = e.ts;
          group.paused_at = null;
        }
        break;
      case "period":
        if (v && typeof v === "object") {
          group.phase = v.status;
          group.paused_at = v.status === "paused" ? e.ts : null;
          if (v.started_at !== undefined) group.started_at = v.started_at;
          if (v.ends_at !== undefined) group.ends_at = v.ends_at;
          if (v.subperiod !== undefined) group.subperiod = v.subperiod;
          if (v.num_subperiods !== undefined) group.num_subperiods = v.num_subperiods;
        }
        break;
      case "control":
        group.lastControl = v && v.action ? `${v.action} at ${formatTime(e.ts)}` : formatValue(v);
        break;
      case "game_fault": // the game's hook failed: the group waits on it, or was ended without it
        group.fault = v && v.error
          ? `the game failed at ${formatTime(e.ts)} (${v.hook ?? "no hook"}: ${v.error})${v.ended ? ", ended without it" : ""}`
          : formatValue(v);
        break;
      default:
        break;
    }
  }

  connection(p) {
    const person = this.person(p.participant, {
      connected: !!p.connected,
      connected_since: p.connected ? p.at : null,
      disconnected_at: p.connected ? null : p.at,
      user_agent: p.user_agent ?? undefined,
      group: p.group ?? undefined,
    });
    this.renderPerson(person);
  }

  statsFrame(p) {
    this.stats = p;
    if (p.status) this.status = p.status;
    this.renderStats();
    this.renderStatus();
  }

  /** The status changed: the REST detail has the times that came with it (started, finished). */
  async experimentFrame(p) {
    if (p.status) this.status = p.status;
    this.renderStatus();
    try {
      const detail = await api(`api/experiments/${encodeURIComponent(this.code)}`);
      if (this.closed) return;
      this.detail = { ...this.detail, ...detail };
      this.status = detail.status;
      this.renderSummary();
    } catch (error) {
      showError(error);
    }
  }

  // ---------------------------------------------------------------------------- the state

  person(code, fields) {
    if (!code) return null;
    let person = this.people.get(code);
    if (!person) {
      person = { code, label: code.slice(0, 6), url: null, index: this.people.size, connected: false };
      this.people.set(code, person);
    }
    for (const [key, value] of Object.entries(fields)) if (value !== undefined && key !== "index") person[key] = value;
    return person;
  }

  group(id) {
    let group = this.groups.get(id);
    if (!group) {
      group = {
        id, block: null, index: null, phase: "waiting", members: [], started_at: null, ends_at: null,
        ended_at: null, paused_at: null, subperiod: null, num_subperiods: null, period_length: null,
        decisions: {}, series: new Map(), points: 0, lastControl: null, el: null,
      };
      this.groups.set(id, group);
    }
    return group;
  }

  dropGroup(id) {
    const group = this.groups.get(id);
    if (group && group.el) group.el.root.remove();
    this.groups.delete(id);
  }

  blockOf(group) {
    return this.blocks.find((b) => b.index === group.block) || null;
  }

  decide(group, code, ts, value) {
    if (!group.members.includes(code)) group.members.push(code);
    group.decisions[code] = value;
    this.point(group, code, ts, value);
  }

  /**
   * Draw the group's chart from its period's start, not from when the page opened: the stored
   * decisions up to `uptoSeq` (what the snapshot covered) go before the points the page has.
   */
  async backfill(group, uptoSeq) {
    let body;
    try {
      body = await api(`/api/experiments/${encodeURIComponent(this.code)}/groups/${group.id}/history?upto_seq=${uptoSeq}`);
    } catch (error) {
      console.warn(`synclab: group ${group.id}'s history could not be loaded`, error);
      return;
    }
    if (this.groups.get(group.id) !== group || !body.points.length) return;
    const kept = group.series;
    group.series = new Map();
    group.points = 0;
    for (const point of body.points) {
      for (const [code, value] of Object.entries(point.decisions)) this.point(group, code, point.ts, value);
    }
    for (const [code, points] of kept) for (const p of points) this.point(group, code, p.t, p.v);
    this.renderGroup(group);
  }

  /** A chart point, kept only when the value changed: the chart is a step function. */
  point(group, code, ts, value) {
    if (typeof value !== "number" || !Number.isFinite(value) || typeof ts !== "number") return;
    let points = group.series.get(code);
    if (!points) group.series.set(code, (points = []));
    const last = points[points.length - 1];
    if (last && last.v === value) return;
    if (last && ts < last.t) ts = last.t;
    points.push({ t: ts, v: value });
    group.points += 1;
    if (points.length > MAX_POINTS) {
      const half = points.length >> 1;
      const thinned = points.slice(0, half).filter((_, i) => i % 2 === 0);
      group.series.set(code, thinned.concat(points.slice(half)));
    }
  }

  label(code) {
    const person = this.people.get(code);
    return person ? person.label : code.slice(0, 6);
  }

  color(code) {
    const person = this.people.get(code);
    return PALETTE[(person ? person.index : 0) % PALETTE.length];
  }

  // --------------------------------------------------------------------------- rendering

  renderStatus() {
    const badge = $("#x-status");
    setText(badge, this.status);
    badge.dataset.status = this.status;
  }

  renderSummary() {
    const d = this.detail;
    this.renderStatus();
    summaryList($("#x-summary"), [
      ["Game", d.game],
      ["Participants", String(d.num_participants)],
      ["Group size", String(d.group_size)],
      ["Blocks", `${d.blocks} (pause ${d.block_pause} s)`],
      ["Created", formatIso(d.created_at)],
      ["Started", formatIso(d.started_at)],
      ["Finished", formatIso(d.finished_at)],
      ["Config", h("code", {}, JSON.stringify(d.config))],
      // an online experiment's shared join link (issue 19), to share or show on a screen
      ...(d.join_url ? [["Join link", h("span", { class: "join-link" }, h("a", { href: d.join_url }, d.join_url), " ",
        qrSvg(d.join_url, "QR code of the join link")), "join-link"]] : []),
    ]);
    this.renderStats();
  }

  renderStats() {
    const s = this.stats || {};
    const lat = s.latency_ms || {};
    const writer = s.writer || {};
    summaryList($("#x-stats"), [
      ["Events per second", formatNumber(s.events_per_second), "stat-rate"],
      ["Broadcast latency last / p50 / max (ms)", `${formatNumber(lat.last)} / ${formatNumber(lat.p50)} / ${formatNumber(lat.max)}`, "stat-latency"],
      ["Latest event latency (ms)", formatNumber(this.lastLatency), "stat-event-latency"],
      ["Writer batches / committed", `${writer.batches ?? "—"} / ${writer.committed ?? "—"}`, "stat-writer"],
      ["Last seq", String(this.lastSeq ?? "—"), "stat-seq"],
    ]);
  }

  /**
   * A block's status as its groups show it: the snapshot's status only changes with a new
   * snapshot, the groups' phases change with every event.
   */
  blockStatus(block) {
    const phases = [...this.groups.values()].filter((g) => g.block === block.index).map((g) => g.phase);
    if (!phases.length) return block.status;
    if (phases.every((phase) => phase === "ended")) return "done";
    if (phases.some((phase) => phase === "running" || phase === "paused")) return "running";
    return block.status;
  }

  renderBlocks() {
    $("#x-blocks tbody").replaceChildren(
      ...this.blocks.map((b) =>
        h(
          "tr",
          {},
          h("td", { title: `index ${b.index} in the API and the exports` }, String(b.index + 1)),
          h("td", {}, String(b.period_length)),
          h("td", {}, b.num_subperiods ? String(b.num_subperiods) : "continuous"),
          h("td", {}, b.rate_limit ? String(b.rate_limit) : "none"),
          h("td", {}, String(b.bonus_points)),
          h("td", {}, b.matching),
          h("td", {}, h("span", { class: "badge", "data-status": this.blockStatus(b) }, this.blockStatus(b))),
        ),
      ),
    );
  }

  renderParticipants() {
    const rows = [...this.people.values()].map((person) => {
      const copy = h("button", { type: "button", class: "noprint", onclick: () => copyText(person.url, `Link of ${person.label} copied.`) }, "Copy");
      copy.setAttribute("aria-label", `Copy the link of ${person.label}`);
      person.el = {
        group: h("td", { class: "noprint" }),
        connection: h("td", { class: "noprint connection" }),
        agent: h("td", { class: "noprint agent" }),
      };
      const row = h(
        "tr",
        { "data-participant": person.code },
        h("th", { scope: "row" }, person.label),
        h("td", { class: "link" }, person.url ? h("a", { href: person.url }, person.url) : "—", " ", person.url ? copy : null),
        h("td", { class: "qr" }, person.url ? qrSvg(person.url, `QR code of the link of ${person.label}`) : null),
        person.el.group,
        person.el.connection,
        person.el.agent,
      );
      person.el.row = row;
      this.renderPerson(person);
      return row;
    });
    $("#x-participants tbody").replaceChildren(...rows);
  }

  renderPerson(person) {
    if (!person) return;
    if (!person.el) return this.renderParticipants();
    const now = this.now();
    person.el.row.dataset.connected = String(!!person.connected);
    setText(person.el.group, person.group ?? "—");
    let text;
    if (person.connected) text = `connected since ${formatTime(person.connected_since)} (${formatClock(now - (person.connected_since ?? now))})`;
    else if (person.disconnected_at) text = `disconnected at ${formatTime(person.disconnected_at)}`;
    else text = "not connected";
    setText(person.el.connection, text);
    person.el.connection.className = `noprint connection ${person.connected ? "connected" : "disconnected"}`;
    setText(person.el.agent, person.user_agent || "—");
  }

  renderGroup(group) {
    if (!group.el) this.buildGroup(group);
    const el = group.el;
    el.root.dataset.phase = group.phase;
    setText(el.title, `Group ${group.id}`);
    // counted from 1, as the participant page does; the API and the exports give the index, from 0
    setText(el.block, group.block === null ? "" : `block ${group.block + 1}${group.index === null ? "" : ` · #${group.index}`}`);
    setText(el.phase, group.phase);
    el.phase.dataset.phase = group.phase;
    const sub = group.num_subperiods ? `subperiod ${group.subperiod ?? 0} of ${group.num_subperiods}` : "continuous time";
    setText(el.sub, `${sub}${group.lastControl ? ` · last control: ${group.lastControl}` : ""}${group.fault ? ` · ${group.fault}` : ""}`);
    el.members.replaceChildren(
      ...group.members.map((code) =>
        h(
          "li",
          { "data-participant": code },
          h("span", { class: "swatch", style: `background:${this.color(code)}`, "aria-hidden": "true" }),
          `${this.label(code)}: ${code in group.decisions ? formatValue(group.decisions[code]) : "—"}`,
        ),
      ),
    );
    this.renderClock(group);
    this.renderChart(group);
  }

  buildGroup(group) {
    const controls = ["start", "pause", "resume", "end"].map((action) =>
      h("button", { type: "button", "data-action": action, "data-group": group.id, class: action === "end" ? "danger" : "" }, action),
    );
    const el = {
      title: h("span"),
      block: h("span", { class: "help" }),
      phase: h("span", { class: "badge phase" }),
      countdown: h("span", { class: "countdown", role: "timer", "aria-live": "off" }),
      sub: h("p", { class: "help sub" }),
      members: h("ul", { class: "members", "aria-label": "Current decisions" }),
      canvas: h("canvas", { role: "img", height: 150, "data-points": "0" }),
      summary: h("p", { class: "chart-summary" }),
    };
    const controlsBox = h("div", { class: "buttons needs-admin", role: "group" }, controls);
    controlsBox.setAttribute("aria-label", `Controls of group ${group.id}`);
    el.root = h(
      "article",
      { class: "group", "data-group": group.id },
      h("h4", {}, el.title, el.phase, el.block),
      h("p", {}, el.countdown),
      el.sub,
      el.members,
      el.canvas,
      el.summary,
      controlsBox,
    );
    group.el = el;
    const box = $("#x-groups");
    const after = [...box.children].find((child) => {
      const other = this.groups.get(Number(child.dataset.group)) || this.groups.get(child.dataset.group);
      return other && order(other) > order(group);
    });
    box.insertBefore(el.root, after || null);
  }

  /** The countdown to `ends_at` on the server's clock; frozen while paused. */
  renderClock(group) {
    const el = group.el.countdown;
    const now = this.now();
    let remaining = null;
    let text;
    if (group.phase === "running" && group.ends_at) {
      remaining = group.ends_at - now;
      text = `${formatClock(remaining)} left`;
    } else if (group.phase === "paused" && group.ends_at && group.paused_at) {
      remaining = group.ends_at - (group.paused_at ?? now);
      text = `${formatClock(remaining)} left (paused)`;
    } else if (group.phase === "running") text = `running for ${formatClock(now - (group.started_at ?? now))}`;
    else if (group.phase === "ended") text = `ended at ${formatTime(group.ended_at)}`;
    else if (group.phase === "waiting") text = "waiting for every member";
    else text = group.phase;
    if (remaining === null) delete el.dataset.remainingMs;
    else el.dataset.remainingMs = String(Math.max(0, Math.round(remaining)));
    setText(el, text);
  }

  renderChart(group) {
    const { canvas, summary } = group.el;
    const parts = group.members.map((code) => `${this.label(code)} ${code in group.decisions ? formatValue(group.decisions[code]) : "—"}`);
    const text = `Decisions: ${parts.join(", ") || "none yet"}`;
    setText(summary, text);
    canvas.setAttribute("aria-label", text);
    canvas.dataset.points = String(group.points);
    drawChart(canvas, group, this.now(), (code) => this.color(code), this.periodLength(group));
  }

  /** The group's period length in seconds (its own, else its block's), or null when not known. */
  periodLength(group) {
    return group.period_length ?? this.blockOf(group)?.period_length ?? null;
  }

  renderLog(list) {
    const body = $("#x-log tbody");
    body.prepend(...list.slice(-LOG_ROWS).reverse().map((e) => this.logRow(e)));
    while (body.rows.length > LOG_ROWS) body.deleteRow(-1);
  }

  logRow(e) {
    const attrs = e.bot ? { class: "bot", title: "made by a server-side bot standing in for the participant" } : {};
    return h(
      "tr",
      { ...attrs, "data-seq": String(e.seq) },
      h("td", {}, String(e.seq)),
      h("td", {}, formatTime(e.ts)),
      h("td", {}, String(e.group ?? "—")),
      h("td", {}, this.who(e)),
      h("td", {}, e.channel),
      h("td", { class: "value", title: JSON.stringify(e.value) ?? "" }, this.eventValue(e)),
      h("td", {}, formatNumber(e.latency)),
    );
  }

  /**
   * Who an event is from: its participant (a bot standing in, marked), or the server, with the
   * participant it sent the event to alone (`recipient`: a result's, a game's private message) after an arrow.
   */
  who(e) {
    if (e.participant) return `${this.label(e.participant)}${e.bot ? " (bot)" : ""}`;
    return e.recipient ? `server → ${this.label(e.recipient)}` : "server";
  }

  /**
   * The latest events stored up to `uptoSeq` (what a snapshot covered), merged into the log by
   * `seq`: a page opened on a finished experiment, or mid-run, shows what happened last, and one
   * that reconnected to a fresh snapshot (4008) what was stored while it was away (the socket
   * only sends what is stored after its snapshot). `seq` has no gaps, so they are the events
   * after `uptoSeq - LOG_ROWS`. A row the page has already (live, with its latency) is kept.
   */
  async fillLog(uptoSeq) {
    if (!uptoSeq) return;
    const after = Math.max(0, uptoSeq - LOG_ROWS);
    let found;
    try {
      found = await api(`api/experiments/${encodeURIComponent(this.code)}/events?after_seq=${after}&page_size=${LOG_ROWS}`);
    } catch (error) {
      if (!this.closed) showError(error);
      return;
    }
    if (this.closed) return; // the page went on to another experiment meanwhile: not its log
    const body = $("#x-log tbody");
    const rows = new Map([...body.rows].map((row) => [Number(row.dataset.seq), row]));
    for (const r of found.results) {
      if (r.seq > uptoSeq || rows.has(r.seq)) continue;
      const ts = Date.parse(r.timestamp.replace(/(\.\d{3})\d*/, "$1"));
      rows.set(r.seq, this.logRow({ ...r, ts, latency: null }));
    }
    const newest = [...rows].sort(([a], [b]) => b - a).slice(0, LOG_ROWS);
    body.replaceChildren(...newest.map(([, row]) => row));
    $("#x-log").dataset.filled = "true";
  }

  /** An event's value for the log, with participants' labels for their codes. */
  eventValue(e) {
    const v = e.value;
    const decisions = e.channel === "group_decisions" ? v : e.channel === "subperiod" ? v?.group_decisions : null;
    if (!decisions || typeof decisions !== "object") return formatValue(v);
    const list = Object.entries(decisions).map(([code, d]) => `${this.label(code)} ${formatValue(d)}`).join(", ");
    return e.channel === "subperiod" ? `#${v.index}: ${list}` : list;
  }

  /** What moves without frames: countdowns, running charts, connection durations. */
  tick() {
    for (const group of this.groups.values()) {
      if (!group.el) continue;
      this.renderClock(group);
      if (group.phase === "running") drawChart(group.el.canvas, group, this.now(), (code) => this.color(code), this.periodLength(group));
    }
    for (const person of this.people.values()) if (person.connected && person.el) this.renderPerson(person);
  }
}

function order(group) {
  return (group.block ?? 1e9) * 1e6 + (group.index ?? 0) * 1e3 + (typeof group.id === "number" ? group.id / 1e9 : 0);
}

// -------------------------------------------------------------------------------------- chart

/**
 * Each member's decision over the period as a step line: x from the period's start to its end
 * (a period not started yet: over its configured `length`, in seconds; or to now, when neither
 * is known), y over the range of the values seen (at least 0–1). The axis's span in seconds is
 * the canvas's `data-axis-seconds`.
 */
function drawChart(canvas, group, now, colorOf, length = null) {
  const all = [...group.series.values()].flat();
  const cursor = group.ended_at ?? (group.phase === "paused" ? group.paused_at ?? now : now);
  const t0 = group.started_at ?? (all.length ? Math.min(...all.map((p) => p.t)) : now);
  const t1 = group.ends_at ?? (length ? t0 + length * 1000 : Math.max(cursor, t0 + 10_000));
  canvas.dataset.axisSeconds = String(Math.round((t1 - t0) / 1000));
  drawSteps(canvas, {
    series: [...group.series].map(([code, points]) => ({ points, color: colorOf(code) })),
    t0,
    t1,
    cursor,
    showCursor: group.phase === "running" || group.phase === "paused",
    format: formatValue,
  });
}

// -------------------------------------------------------------------------------- QR and copy

/** The QR code of `text` as an SVG of one path: no HTML strings, scales to any size. */
function qrSvg(text, label) {
  const qr = qrcode(0, "M");
  qr.addData(text);
  qr.make();
  const n = qr.getModuleCount();
  const margin = 2;
  let d = "";
  for (let row = 0; row < n; row += 1) {
    for (let col = 0; col < n; col += 1) {
      if (qr.isDark(row, col)) d += `M${col + margin} ${row + margin}h1v1h-1z`;
    }
  }
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  const size = n + 2 * margin;
  svg.setAttribute("viewBox", `0 0 ${size} ${size}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  svg.setAttribute("shape-rendering", "crispEdges");
  svg.dataset.modules = String(n);
  const background = document.createElementNS(ns, "rect");
  background.setAttribute("width", String(size));
  background.setAttribute("height", String(size));
  background.setAttribute("fill", "#fff");
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", d);
  path.setAttribute("fill", "#000");
  svg.append(background, path);
  return svg;
}

/** Copy to the clipboard; where the page is not a secure context, through a selected textarea. */
async function copyText(text, done) {
  const status = $("#copy-result");
  try {
    if (navigator.clipboard && window.isSecureContext) await navigator.clipboard.writeText(text);
    else {
      const area = h("textarea", { value: text, readOnly: true, style: "position:fixed;opacity:0" });
      document.body.append(area);
      area.select();
      const ok = document.execCommand("copy");
      area.remove();
      if (!ok) throw new Error("the browser refused");
    }
    setText(status, done);
  } catch (error) {
    setText(status, `Could not copy (${error.message}); select the link and copy it by hand.`);
  }
}

// ----------------------------------------------------------------------- controls and downloads

// ------------------------------------------------------------------------ scores on their way to oTree

/**
 * The experiment's deliveries to oTree (GET .../deliveries), looked at every few seconds while
 * it is open: the panel shows itself once there is one, with the refused and failing ones first.
 */
function watchDeliveries(code) {
  let timer = null;
  let stopped = false;
  const order = { refused: 0, failing: 1, pending: 2, delivered: 3 };
  async function look() {
    try {
      const body = await api(`api/experiments/${encodeURIComponent(code)}/deliveries?page_size=1000`);
      if (stopped) return;
      const rows = [...body.results].sort((a, b) => order[a.status] - order[b.status]);
      $("#x-deliveries-section").hidden = rows.length === 0;
      const count = (status) => rows.filter((r) => r.status === status).length;
      setText($("#x-deliveries-summary"),
        `${count("delivered")} delivered, ${count("failing")} failing (retried), ${count("pending")} pending`
        + (count("refused") ? `, ${count("refused")} refused (never posted)` : ""));
      $("#x-deliveries tbody").replaceChildren(...rows.map((r) => h("tr", { "data-status": r.status },
        h("td", {}, h("code", {}, r.participant.slice(0, 8))),
        h("td", {}, h("code", {}, r.label ?? "")),
        h("td", {}, h("span", { class: "badge", "data-status": r.status }, r.status)),
        h("td", {}, String(r.attempts)),
        h("td", {}, r.last_error ?? ""),
        h("td", {}, r.next_at ? formatIso(r.next_at) : ""),
        h("td", {}, r.delivered_at ? formatIso(r.delivered_at) : ""),
      )));
    } catch (error) {
      if (!stopped) showError(error);
      return; // no more looks after a refusal: the error says why
    }
    if (!stopped) timer = setTimeout(look, 3000);
  }
  look();
  return { stop() { stopped = true; clearTimeout(timer); } };
}

async function control(action, groupId) {
  const live = app.live;
  if (!live) return;
  if (action === "end" && !window.confirm(groupId ? `End group ${groupId} now?` : `End experiment ${live.code} now?`)) return;
  clearError();
  const query = groupId ? `?group=${encodeURIComponent(groupId)}` : "";
  const result = await api(`api/experiments/${encodeURIComponent(live.code)}/${action}${query}`, { method: "POST" });
  const which = result.groups.length ? `group${result.groups.length > 1 ? "s" : ""} ${result.groups.join(", ")}` : "no group changed";
  setText($("#control-result"), `${result.action}: ${which}; experiment ${result.status}.`);
  live.status = result.status;
  live.renderStatus();
}

/** A download that carries the token: fetched with the header, saved from a Blob. */
async function download(path) {
  const live = app.live;
  if (!live) return;
  clearError();
  const response = await api(`api/experiments/${encodeURIComponent(live.code)}/${path}`, { raw: true });
  const blob = await response.blob();
  const disposition = response.headers.get("content-disposition") || "";
  const named = /filename="?([^";]+)"?/.exec(disposition);
  const table = new URLSearchParams(path.split("?")[1] || "").get("table");
  const extension = path.startsWith("export.json") ? "json" : "csv";
  const name = named ? named[1] : `${live.code}-${table || "export"}.${extension}`;
  const url = URL.createObjectURL(blob);
  const link = h("a", { href: url, download: name, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  setText($("#control-result"), `Downloaded ${name} (${blob.size} bytes).`);
}

// ------------------------------------------------------------------------------------ start-up

function wire() {
  $("#token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("#token-input").value.trim();
    if (!value) return;
    $("#token-input").value = "";
    useToken(value);
    route();
  });
  $("#forget-token").addEventListener("click", () => {
    useToken(null);
    route();
  });
  $("#f-game").addEventListener("change", showGame);
  $("#create-form").addEventListener("submit", createExperiment);
  $("#page-previous").addEventListener("click", guarded(() => loadExperiments(app.page - 1)));
  $("#page-next").addEventListener("click", guarded(() => loadExperiments(app.page + 1)));
  $("#home-link").addEventListener("click", follow(null));
  $("#back-link").addEventListener("click", follow(null));
  $("#experiment").addEventListener(
    "click",
    guarded(async (event) => {
      const button = event.target.closest("button");
      if (!button) return;
      if (button.dataset.action) await control(button.dataset.action, button.dataset.group || null);
      else if (button.dataset.download) await download(button.dataset.download);
    }),
  );
  $("#copy-all").addEventListener("click", () => {
    const people = app.live ? [...app.live.people.values()] : [];
    copyText(people.map((p) => `${p.label}\t${p.url}`).join("\n"), `${people.length} links copied.`);
  });
  $("#print-links").addEventListener("click", () => window.print());
  window.addEventListener("popstate", route);
}

wire();
app.token = takeToken();
showTokenForm(!app.token);
route();
