// The participant page (/p/{code}): one socket, the screens around the game, and the game's view.
//
// The page owns what every game shares: the connection (static/synclab.js: reconnect with
// backoff, the server's clock measured over `ping`), the waiting screen, the countdown, the
// payoffs, the screen between blocks and the final one. The game itself is drawn by its view,
// an ES module served at /p/{code}/view.js (the bundled ones are in static/games/; a game names
// its own with `view`): `createView(game)` gets the object built by `gameApi()` below and
// returns hooks (see static/games/generic.js, the template to start from).

import { renderCompletionCode, renderLobby, wayBack } from "./online.js";
import { RETRY_CODES, SynclabSocket } from "./synclab.js";

const CODE = decodeURIComponent(window.location.pathname.split("/").filter(Boolean).pop() || "");
const PALETTE = ["#0b62c4", "#d1495b", "#2a9d4b", "#e08a00", "#7b4fc9", "#00838f", "#8d6e63", "#c2185b"];
const $ = (selector) => document.querySelector(selector);

/** Everything the page knows; `hello` is the last one, `period` its period as it changed since. */
const page = {
  hello: null,
  block: null,
  phase: "connecting",
  period: null,
  paused: false,
  view: null,
  viewModule: null,
  /** while the view mounts: the group's decisions that came meanwhile, `[decisions, at]` */
  missed: null,
  decisions: {},
  /** this block's score so far: `base` at server time `baseAt`, plus the flow payoff since (continuous time) */
  earned: { base: 0, baseAt: 0 },
  /** the scores of the blocks before this one, from the REST API */
  before: 0,
  /** the earlier blocks whose stored score is not available (null: past a float's range) */
  missing: [],
  sessions: [],
  /** what the page knew when it asked for `sessions`: its block, and whether that block's period had ended */
  sessionsRead: null,
  final: false,
  /** the experiment's status once the server said it is over (`experiment` frame): no block follows */
  over: null,
  /** the participant's own row from the REST API (status, completion code, …) */
  detail: null,
};

const socket = new SynclabSocket(`/ws/p/${encodeURIComponent(CODE)}`, { pingInterval: 5000 });
window.synclab = { socket, page }; // for the curious, and for the browser tests

// -------------------------------------------------------------------------------- formatting

function points(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "–";
  return value.toFixed(2);
}

/** What a score the server stores as null (past a float's range) shows: not available. */
const NOT_AVAILABLE = "—";

function clock(ms) {
  const s = Math.max(0, Math.ceil(ms / 1000));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

function show(screen) {
  for (const el of document.querySelectorAll(".screen")) el.hidden = el.id !== `screen-${screen}`;
  document.body.dataset.screen = screen;
}

function notice(text) {
  const el = $("#notice");
  el.textContent = text || "";
  el.hidden = !text;
}

// ----------------------------------------------------------------------------- the game view

/** What a view gets: the participant, the group, the config, and a way to decide. */
function gameApi(hello, root) {
  const members = hello.members;
  return {
    root,
    hello,
    me: hello.participant,
    members,
    role: hello.role,
    config: hello.config,
    /** Send a decision; it is kept and sent again after a reconnect until the server has stored it. */
    decide(value) {
      socket.send("decisions", value, { retry: true, replace: true, meta: { block: hello.block } });
      renderPending();
    },
    /** Send a frame on one of the game's own channels (kept until stored, like a decision). */
    send(channel, payload) {
      socket.send(channel, payload, { retry: true, meta: { block: hello.block } });
    },
    serverNow: () => socket.serverNow(),
    /** The period: `{started_at, ends_at, paused}` (ms), as it stands now. */
    period: () => ({ ...(page.period || {}), paused: page.paused }),
    /** "You", or "Player n" in the order of the group. */
    label: (code) => (code === hello.participant ? "You" : `Player ${members.indexOf(code) + 1}`),
    color: (code) => (code === hello.participant ? PALETTE[0] : PALETTE[1 + ((members.indexOf(code) + PALETTE.length - 1) % (PALETTE.length - 1))]),
  };
}

async function loadView() {
  if (!page.viewModule) page.viewModule = await import(`/p/${encodeURIComponent(CODE)}/view.js`);
  return page.viewModule;
}

function call(hook, ...args) {
  const fn = page.view && page.view[hook];
  if (typeof fn !== "function") return undefined;
  try {
    return fn.apply(page.view, args);
  } catch (error) {
    console.error(`synclab: the game view's ${hook} failed`, error);
    return undefined;
  }
}

async function mountView(hello) {
  call("destroy");
  page.view = null;
  // the group's changes that come while the view's module loads: drawn once it is there
  const missed = (page.missed = []);
  const root = $("#game");
  root.replaceChildren();
  // a page (re)loaded in the middle of a period draws its charts from the period's start
  const midPeriod = hello.phase === "running" || hello.phase === "paused";
  const [module, history] = await Promise.all([loadView(), midPeriod ? loadHistory(hello) : null]);
  if (page.hello !== hello) return; // a newer hello came while the module loaded
  page.missed = null;
  page.view = module.createView(gameApi(hello, root)) || {};
  for (const point of history?.points || []) call("decisions", point.decisions, point.ts);
  for (const [decisions, at] of missed) call("decisions", decisions, at);
  call("decisions", page.decisions, socket.serverNow());
  renderPayoffs();
}

/** The group's stored decisions since its period started, up to what `hello` covered; null on failure. */
async function loadHistory(hello) {
  try {
    const response = await fetch(`/p/${encodeURIComponent(CODE)}/history?upto_seq=${hello.last_seq}`, { cache: "no-store" });
    if (!response.ok) return null;
    const body = await response.json();
    return body.group === hello.group ? body : null;
  } catch (error) {
    console.warn("synclab: the period's history could not be loaded", error);
    return null;
  }
}

// ---------------------------------------------------------------------------------- payoffs

/** The view's flow payoff for the participant now, or null when the game has none. */
function flow() {
  if (!page.hello || page.phase === "waiting") return null;
  const value = call("flowPayoff", page.decisions);
  return Number.isFinite(value) ? value : null;
}

/** The block's number of subperiods (null: continuous time), known from `hello` before its period starts. */
function numSubperiods() {
  return page.hello?.num_subperiods ?? page.period?.num_subperiods ?? page.hello?.period?.num_subperiods ?? null;
}

/** This block's score so far at server time `at` (continuous time accrues the flow payoff; with
 * subperiods the score is the sum of the results so far). */
function earnedAt(at) {
  const { base, baseAt, exact } = page.earned;
  const hello = page.hello;
  if (exact || !hello || numSubperiods() || page.phase !== "running" || page.paused) return base;
  const value = flow();
  const length = (hello.period_length || 0) * 1000;
  if (value === null || !(length > 0)) return base;
  const until = Math.min(at, page.period?.ends_at ?? at);
  return base + (value * Math.max(0, until - baseAt)) / length;
}

/** Re-base the running score at `at` (before the decisions change or the clock stops). */
function rebase(at) {
  page.earned = { ...page.earned, base: earnedAt(at), baseAt: at };
}

function renderPayoffs() {
  const now = socket.serverNow();
  const value = flow();
  $("#flow").textContent = points(value);
  const earned = earnedAt(now);
  $("#earned").textContent = points(earned);
  const total = $("#total");
  total.textContent = points(page.before + earned) + (page.missing.length ? " (incomplete)" : "");
  total.title = page.missing.length ? missingNote(page.missing) : "";
}

/** Why a total leaves blocks out: their scores are stored as null, no finite number. */
function missingNote(blocks) {
  const which = blocks.map((b) => String(b + 1)).join(", ");
  return `not counting block ${which}: ${blocks.length > 1 ? "their scores are" : "its score is"} not available`;
}

function renderPending() {
  const waiting = socket.pending.filter((f) => f.channel === "decisions").length;
  $("#game").dataset.pending = String(waiting);
  $("#unsent").hidden = waiting === 0 || socket.state === "open";
}

// -------------------------------------------------------------------------------- countdown

function renderClock() {
  const el = $("#countdown");
  const period = page.period;
  if (!period || period.ends_at === null || period.ends_at === undefined) {
    el.textContent = period ? "no limit" : "–";
    delete el.dataset.remainingMs;
    return;
  }
  const now = page.paused && period.paused_at ? period.paused_at : socket.serverNow();
  const remaining = Math.max(0, period.ends_at - now);
  el.textContent = clock(remaining);
  el.dataset.remainingMs = String(Math.round(remaining));
  el.classList.toggle("urgent", remaining < 10_000 && !page.paused);
}

function tick() {
  if (page.phase === "running" || page.phase === "paused") {
    renderClock();
    renderPayoffs();
    call("frame", socket.serverNow());
  } else if (page.phase === "ended" && !page.final && page.hello) {
    renderNext();
  }
}

// ------------------------------------------------------------------------------ the screens

function setBlock(hello) {
  const n = hello.num_blocks || 1;
  $("#block").textContent = n > 1 ? `Block ${hello.block + 1} of ${n}` : "";
  const title = hello.title || hello.game;
  document.title = `${title} · synclab`;
  $("#title").textContent = title;
}

function enter(phase) {
  page.phase = phase;
  $("#paused").hidden = phase !== "paused";
  document.body.dataset.phase = phase;
  if (phase === "waiting") show("waiting");
  else if (phase === "running" || phase === "paused") show("play");
  else if (phase === "ended") finishBlock();
}

async function onHello(hello) {
  const first = page.hello === null;
  const moved = !first && hello.block !== page.block;
  page.hello = hello;
  page.block = hello.block;
  page.final = false;
  // frames kept from another block or a period that is over no longer apply
  socket.discard((f) => f.meta && (f.meta.block !== hello.block || hello.phase !== "running"));
  page.decisions = hello.group_decisions || {};
  page.period = hello.period ? { ...hello.period } : null;
  page.paused = hello.phase === "paused";
  if (page.paused && page.period) page.period.paused_at = hello.period.paused_at ?? hello.server_time;
  page.earned = { base: hello.earned || 0, baseAt: hello.server_time };
  setBlock(hello);
  renderLobby(hello.lobby);
  enter(hello.phase);
  if (first || moved || !page.view) await mountView(hello);
  else call("decisions", page.decisions, hello.server_time);
  refreshScores();
}

function onState(value, frame) {
  // on connect the last `state` is repeated after hello (as otree-redwood does): hello has it all
  if (page.hello && frame.seq !== undefined && frame.seq <= page.hello.last_seq) return;
  if (value === "period_start") {
    const hello = page.hello;
    const at = frame.ts ?? socket.serverNow();
    page.period = {
      started_at: at,
      ends_at: hello.period_length ? at + hello.period_length * 1000 : null,
      num_subperiods: numSubperiods(),
      subperiod: 0,
    };
    page.earned = { base: 0, baseAt: at };
    page.paused = false;
    call("periodStart", page.period);
    enter("running");
  } else if (value === "period_end") {
    const at = frame.ts ?? socket.serverNow();
    rebase(at);
    if (page.period) page.period.ended_at = at;
    page.hello = { ...page.hello, phase: "ended" };
    call("periodEnd", at);
    enter("ended");
    refreshScores(); // the stored score of the block, bonus included
  }
}

function onPeriod(period, frame) {
  const at = frame.ts ?? socket.serverNow();
  rebase(at);
  page.paused = period.status === "paused";
  page.period = {
    ...(page.period || {}),
    started_at: period.started_at,
    ends_at: period.ends_at,
    paused_at: page.paused ? at : null,
    num_subperiods: period.num_subperiods ?? numSubperiods(),
  };
  $("#paused").hidden = !page.paused;
  enter(page.paused ? "paused" : "running");
  renderClock();
}

function onDecisions(decisions, frame) {
  const at = frame.ts ?? socket.serverNow();
  rebase(at);
  page.decisions = decisions;
  if (!page.view && page.missed) page.missed.push([decisions, at]);
  call("decisions", decisions, at);
  renderPayoffs();
}

function onResult(result) {
  if (result.subperiod === null || result.subperiod === undefined) {
    page.earned = { base: result.score, baseAt: socket.serverNow(), exact: true }; // continuous time: the score itself
  } else {
    page.earned = { base: page.earned.base + result.score, baseAt: socket.serverNow() };
  }
  renderPayoffs();
  if (page.phase === "ended") finishBlock();
}

/** The scores of the finished blocks, from the server (what is stored is what counts). */
async function refreshScores() {
  const hello = page.hello;
  if (!hello || !hello.experiment) return;
  const path = `/api/experiments/${encodeURIComponent(hello.experiment)}/participants/${encodeURIComponent(CODE)}?participant=${encodeURIComponent(CODE)}`;
  const read = { block: page.block, ended: page.phase === "ended" };
  try {
    const response = await fetch(path, { headers: { Accept: "application/json" } });
    if (!response.ok) return;
    const detail = await response.json();
    page.detail = detail;
    renderCompletionCode(detail);
    if (detail.status === "no_group") released();
    page.sessions = detail.sessions || [];
    page.sessionsRead = read;
    page.before = 0;
    page.missing = [];
    for (let b = 0; b < page.block; b += 1) {
      const stored = storedScore(b);
      if (stored === null) page.missing.push(b); // past a float's range: left out, and said so
      else page.before += stored ?? 0;
    }
    renderPayoffs();
    if (page.phase === "ended") finishBlock();
  } catch (error) {
    console.warn("synclab: the scores could not be read", error);
  }
}

/** A block's stored score, or undefined before the server has it: a finished session's, or, once
 * its period had ended when the page read it, one that started and stays unfinished (ended without
 * its game, which failed: its bonus and the results made before, as every table has it). A stored
 * score is null when it is no finite number (past a float's range): not available. */
function storedScore(block) {
  const stored = page.sessions.find((s) => s.block === block);
  if (!stored) return undefined;
  if (stored.finished_at) return stored.final_score;
  const read = page.sessionsRead;
  const over = read !== null && (block < read.block || (block === read.block && read.ended));
  return over && stored.started_at ? stored.final_score : undefined;
}

/** This block's score: stored when the server has it (null: not available), else what the
 * results added up to; undefined when neither is known. */
function blockScore(block) {
  const stored = storedScore(block);
  if (stored !== undefined) return stored;
  if (block === page.block) return page.earned.base + (page.hello?.bonus_points || 0);
  return undefined;
}

/** The blocks' total up to `last`, leaving out the scores that are not available (`missing`). */
function totalScore(last) {
  let total = 0;
  const missing = [];
  for (let b = 0; b <= last; b += 1) {
    const score = blockScore(b);
    if (score === null) missing.push(b);
    else total += score || 0;
  }
  return { total, missing };
}

function shownScore(score) {
  return score === null ? NOT_AVAILABLE : points(score);
}

function fillScores(table) {
  const n = page.hello.num_blocks || 1;
  const rows = [];
  for (let b = 0; b <= Math.min(page.block, n - 1); b += 1) {
    const tr = document.createElement("tr");
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = String(b + 1);
    const td = document.createElement("td");
    const score = blockScore(b);
    td.textContent = shownScore(score);
    if (score === null) td.title = "not available: no finite number";
    tr.append(th, td);
    rows.push(tr);
  }
  table.tBodies[0].replaceChildren(...rows);
}

function finishBlock() {
  const hello = page.hello;
  if (!hello) return;
  // the last block, or the experiment ended before it (the experimenter's `end`): nothing follows
  const last = page.over !== null || hello.block >= (hello.num_blocks || 1) - 1;
  const score = blockScore(hello.block);
  const { total, missing } = totalScore(hello.block);
  const incomplete = missing.length ? ` (incomplete: ${missingNote(missing)})` : "";
  if (last) {
    page.final = true;
    $("#final-summary").textContent = `You earned ${points(total)} points in all${incomplete}.`;
    $("#final-summary").dataset.total = String(total);
    $("#final-summary").dataset.incomplete = String(missing.length > 0);
    fillScores($("#screen-final table"));
    show("final");
    if (hello.online) wayBack(CODE, "final");
    socket.close(1000, "the experiment is over"); // nothing more will come
    $("#connection").textContent = "Done";
    $("#connection").dataset.state = "done";
  } else {
    $("#between-title").textContent = `Block ${hello.block + 1} of ${hello.num_blocks} finished`;
    const earned = score === null ? "Your score in this block is not available" : `You earned ${points(score)} points in this block`;
    $("#between-summary").textContent = `${earned}, ${points(total)} so far${incomplete}.`;
    fillScores($("#screen-between table"));
    renderNext();
    show("between");
  }
}

/** Released from the lobby (no group could be formed): the run is over, the way back opens. */
function released() {
  if (page.final) return;
  page.final = true;
  show("released");
  renderCompletionCode(page.detail);
  wayBack(CODE, "released");
  socket.close(1000, "no group could be formed");
  $("#connection").textContent = "Done";
  $("#connection").dataset.state = "done";
}

function renderNext() {
  const hello = page.hello;
  const ended = page.period?.ended_at ?? hello.period?.ended_at;
  if (ended === undefined || ended === null) return;
  const left = ended + (hello.block_pause || 0) * 1000 - socket.serverNow();
  $("#between-next").textContent = left > 0 ? `The next block begins in ${clock(left)}.` : "The next block begins in a moment.";
}

// ------------------------------------------------------------------------------- connection

function onConnection(state, detail) {
  const el = $("#connection");
  renderPending();
  if (page.final) return;
  el.dataset.state = state;
  if (state === "open") {
    el.textContent = "Connected";
    notice("");
  } else if (state === "connecting") {
    el.textContent = detail.attempt ? `Reconnecting (attempt ${detail.attempt + 1})…` : "Connecting…";
  } else if (state === "closed" && detail.final) {
    el.textContent = "Disconnected";
    const why = {
      4000: "This link was opened in another window or tab; continue there.",
      4404: "This link is not known. Check the address you were given.",
      1008: "The server refused this connection.",
      4003: "The server refused this connection.",
    };
    notice(why[detail.code] || `The connection was closed (${detail.code}).`);
    if (!page.hello) show("connecting");
  } else if (state === "closed") {
    el.textContent = `Connection lost; retrying in ${Math.ceil(detail.retryIn / 1000)} s…`;
    if (detail.code === 1009) notice("A message was too large for the server (over 1 MiB) and was not taken.");
  }
}

/** The page's own channels; a frame on any other goes to the view's `message` hook. */
const HANDLERS = {
  hello: (payload) => {
    onHello(payload).catch((error) => {
      console.error("synclab: the game view could not be loaded", error);
      notice("The game could not be shown. Ask the experimenter for help.");
    });
  },
  state: onState,
  period: onPeriod,
  group_decisions: onDecisions,
  result: onResult,
  subperiod: (payload, frame) => {
    if (page.period) page.period.subperiod = payload.index + 1;
    call("subperiod", payload, frame.ts);
  },
  ack: () => renderPending(),
  error: (payload) => {
    renderPending();
    if (RETRY_CODES.has(payload.code)) {
      notice("The server is busy; your choice will be sent again in a moment.");
    } else {
      notice(payload.message ? `Not accepted: ${payload.message}` : "Not accepted.");
    }
    setTimeout(() => notice(""), 4000);
  },
  experiment: (payload) => {
    // the experiment is over (ended by the experimenter, say): once this block's period has
    // ended (at once, if it has) the final screen shows, whichever block this is
    page.over = payload?.status || "over";
    if (page.hello && page.phase !== "running" && page.phase !== "paused" && page.phase !== "connecting") finishBlock();
  },
  lobby: (payload) => {
    if (payload && payload.status === "no_group") {
      refreshScores(); // the status and completion code, stored before this frame was sent
      released();
    } else if (page.phase === "waiting") {
      renderLobby(payload);
    }
  },
  ping: () => {}, // the socket measures the clock from it
};
for (const [channel, handler] of Object.entries(HANDLERS)) socket.on(channel, handler);
socket.on("*", (payload, frame) => {
  if (!(frame.channel in HANDLERS)) call("message", frame.channel, payload, frame);
});
socket.onState(onConnection);

if (!CODE) {
  notice("This address has no participant code.");
} else {
  show("connecting");
  socket.connect();
  setInterval(tick, 100);
}
