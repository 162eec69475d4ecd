// synclab's browser client: one WebSocket that speaks `{channel, payload}` JSON frames,
// reconnects by itself, and keeps an estimate of the server's clock.
//
// Used by the experimenter's monitor (/monitor) and the participant page (/p/{code}); nothing
// in it knows either. An ES module with no dependencies and no build step:
//
//   import { SynclabSocket } from "/static/synclab.js";
//   const socket = new SynclabSocket(`/ws/p/${code}`);
//   socket.on("hello", (payload, frame) => { ... });
//   socket.onState((state, detail) => { ... });   // "connecting" | "open" | "closed"
//   socket.connect();
//   socket.send("decisions", 0.7, { id: "d-1" });
//   socket.send("decisions", 0.7, { retry: true, replace: true }); // kept until acknowledged
//   const remaining = endsAt - socket.serverNow();

/** Close codes after which reconnecting cannot help: the server will refuse again. */
export const FINAL_CLOSE_CODES = new Set([
  1008, // policy violation
  4000, // the same participant connected again elsewhere: this tab is the older one
  4003, // the URL names another game or group
  4401, // a monitor sent no token in its first frame
  4403, // a monitor's token is unknown or revoked
  4404, // unknown participant or experiment
]);

/**
 * `error` codes of a frame the server did not store but may store later: the database or the
 * cluster could not take it just now (a group moving between workers, Redis away). A pending
 * frame refused so is kept and sent again with its id after `retryDelay` ms.
 */
export const RETRY_CODES = new Set(["unavailable", "not_persisted"]);

/**
 * The largest frame a synclab server's socket takes (bytes of UTF-8): a larger one would close the
 * socket with 1009. The client never sends one: it is refused here, as the server refuses frames
 * over its own (smaller) limit, with a local `error` frame of code `too_large` (and its `id`).
 */
export const MAX_SOCKET_FRAME = 1024 * 1024;

/** The ws:// or wss:// URL of `path` on the server that served this page. */
export function socketUrl(path, query = {}) {
  const url = new URL(path, window.location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined && value !== null) url.searchParams.set(name, String(value));
  }
  return url.toString();
}

/**
 * The delay before reconnect attempt `attempt` (0-based): exponential from `baseMs`, capped at
 * `maxMs`, with "equal jitter" (half fixed, half random) so that a lab full of browsers that
 * lost the server together does not come back in one burst.
 */
export function backoffDelay(attempt, baseMs, maxMs, random = Math.random) {
  const ceiling = Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 30));
  return ceiling / 2 + random() * (ceiling / 2);
}

/**
 * The offset between the server's clock and this browser's, from timestamps the server put in
 * its frames. A sample is `serverTime` known to have been read between `sentAt` and
 * `receivedAt` (local ms); its error is at most half that window, so the narrowest recent
 * window wins. `offset` is server minus local: `Date.now() + offset` is the server's now.
 */
export class ServerClock {
  constructor(keep = 8) {
    this.keep = keep;
    this.samples = [];
    this.offset = 0;
    this.uncertainty = Infinity;
  }

  sample(serverTime, sentAt, receivedAt) {
    if (!Number.isFinite(serverTime) || !(receivedAt >= sentAt)) return;
    const half = (receivedAt - sentAt) / 2;
    this.samples.push({ offset: serverTime - (sentAt + half), half });
    if (this.samples.length > this.keep) this.samples.shift();
    const best = this.samples.reduce((a, b) => (b.half < a.half ? b : a));
    this.offset = best.offset;
    this.uncertainty = best.half;
  }

  now() {
    return Date.now() + this.offset;
  }
}

/**
 * A WebSocket to a synclab server that reconnects until `close()` is called.
 *
 * Options: `query` (object added to the URL: never a secret, which access logs would keep),
 * `opening` (a function returning `{channel, payload}`: the first frame of every connection,
 * sent as it opens, e.g. the monitor's `auth` with its token), `baseDelay`/`maxDelay` (ms,
 * the reconnect backoff), `pingInterval` (ms; 0 = never: only sockets whose server answers
 * `ping` with `server_time` should set it), `finalCodes` (close codes that stop reconnecting),
 * `retryDelay` (ms before a frame refused with a code of `RETRY_CODES` goes out again).
 */
export class SynclabSocket {
  constructor(path, options = {}) {
    this.url = socketUrl(path, options.query || {});
    this.opening = options.opening ?? null;
    this.baseDelay = options.baseDelay ?? 500;
    // at most 3 s between attempts: a participant's page away from a server that is back loses
    // play time every second, and hundreds of pages trying every 1.5-3 s (equal jitter) cost a
    // server that is down or starting nothing it notices
    this.maxDelay = options.maxDelay ?? 3000;
    this.pingInterval = options.pingInterval ?? 0;
    this.finalCodes = options.finalCodes ?? FINAL_CLOSE_CODES;
    this.retryDelay = options.retryDelay ?? 500;
    this.clock = new ServerClock();
    this.state = "idle";
    this.attempt = 0;
    this._handlers = new Map();
    this._stateHandlers = new Set();
    this._ws = null;
    this._timer = null;
    this._pinger = null;
    this._stopped = false;
    this._connectStartedAt = 0;
    this._firstFrame = false;
    /** Frames sent with `retry` and not yet acknowledged: `{id, channel, payload, sent, meta}`. */
    this.pending = [];
    this._sequence = 0;
    this._resending = false;
  }

  /** Call `fn(payload, frame)` for every frame on `channel` ("*" for all); returns an unsubscribe. */
  on(channel, fn) {
    if (!this._handlers.has(channel)) this._handlers.set(channel, new Set());
    this._handlers.get(channel).add(fn);
    return () => this._handlers.get(channel).delete(fn);
  }

  /** Call `fn(state, detail)` on each change: connecting {attempt}, open, closed {code, reason, final, retryIn}. */
  onState(fn) {
    this._stateHandlers.add(fn);
    return () => this._stateHandlers.delete(fn);
  }

  /** Open the socket (again after `close()`). */
  connect() {
    this._stopped = false;
    clearTimeout(this._timer);
    this._open();
    return this;
  }

  /** Close for good: no reconnect. */
  close(code = 1000, reason = "") {
    this._stopped = true;
    clearTimeout(this._timer);
    this._stopPinging();
    if (this._ws) this._ws.close(code, reason);
  }

  /**
   * Send `{channel, payload, id?}`; returns whether it went out now.
   *
   * Without `retry` a frame that cannot go out now is dropped (returns false). With `retry` it
   * gets an `id` (yours, or a new one) and is kept in `pending` until the server acknowledges
   * it (`ack`) or refuses it (`error` with that id). Frames not acknowledged when the socket
   * drops are sent again, in order, with the same `id` after the next connection's first
   * frame (the server stores an id once, so nothing is lost or repeated); a `hello` handler
   * may `discard()` the ones that no longer apply first. `replace` drops this channel's
   * pending frames that have not gone out yet (the newest decision is the one that counts).
   * `meta` is kept with the frame for `discard`.
   */
  send(channel, payload, { id, retry = false, replace = false, meta } = {}) {
    if (!retry) {
      if (!this._isOpen()) return false;
      return this._transmit({ channel, payload, id });
    }
    if (replace) this.pending = this.pending.filter((f) => f.sent || f.channel !== channel);
    const frame = { id: id ?? this.newId(), channel, payload, sent: false, meta };
    this.pending.push(frame);
    if (this._isOpen() && !this._resending) this._flush();
    return frame.sent;
  }

  /** A new frame id: unique for this page, at most 64 characters. */
  newId() {
    this._sequence += 1;
    if (!this._idPrefix) {
      const random = new Uint32Array(2);
      crypto.getRandomValues(random);
      this._idPrefix = `${random[0].toString(36)}${random[1].toString(36)}`;
    }
    return `${this._idPrefix}-${Date.now().toString(36)}-${this._sequence}`;
  }

  /** Forget the pending frames for which `predicate(frame)` is true; returns them. */
  discard(predicate = () => true) {
    const dropped = this.pending.filter(predicate);
    this.pending = this.pending.filter((f) => !predicate(f));
    return dropped;
  }

  _isOpen() {
    return Boolean(this._ws) && this._ws.readyState === WebSocket.OPEN;
  }

  _transmit({ channel, payload, id }) {
    const frame = { channel, payload };
    if (id !== undefined) frame.id = id;
    const text = JSON.stringify(frame);
    if (text.length > MAX_SOCKET_FRAME / 3 && new TextEncoder().encode(text).length > MAX_SOCKET_FRAME) {
      // the server would close the socket (1009) and a kept frame would close every next one too
      const refusal = { code: "too_large", message: `this frame is over ${MAX_SOCKET_FRAME} bytes; it was not sent` };
      if (id !== undefined) refusal.id = id;
      if (id !== undefined) this.pending = this.pending.filter((f) => f.id !== id);
      setTimeout(() => this._dispatch({ channel: "error", payload: refusal }), 0);
      return false;
    }
    this._ws.send(text);
    return true;
  }

  /** Send every pending frame that has not gone out on this connection. */
  _flush() {
    for (const frame of this.pending) {
      if (frame.sent) continue;
      if (!this._isOpen()) return;
      if (this._transmit(frame)) frame.sent = true;
    }
  }

  /**
   * The server answered a pending frame (`ack`) or refused it (`error` with its id). A refusal
   * with a code of `RETRY_CODES` keeps it: it goes out again after `retryDelay` ms.
   */
  _settle(frame) {
    const id = frame.payload && typeof frame.payload === "object" ? frame.payload.id : undefined;
    if ((frame.channel === "ack" || frame.channel === "error") && id !== undefined && id !== null) {
      if (frame.channel === "error" && RETRY_CODES.has(frame.payload.code)) {
        const kept = this.pending.find((f) => f.id === id);
        if (kept) {
          kept.sent = false;
          this._flushLater();
        }
        return;
      }
      this.pending = this.pending.filter((f) => f.id !== id);
    }
  }

  _flushLater() {
    if (this._retryTimer) return;
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      if (this._isOpen() && !this._resending) this._flush();
    }, this.retryDelay);
  }

  /** Ask for the server's time; the `ping` reply refines `clock`. */
  ping() {
    return this.send("ping", { timestamp: Date.now() });
  }

  /** The server's clock now, in ms since the epoch. */
  serverNow() {
    return this.clock.now();
  }

  _open() {
    this._setState("connecting", { attempt: this.attempt });
    this._connectStartedAt = Date.now();
    this._firstFrame = true;
    this._resending = true; // pending frames wait for this connection's first frame
    const ws = new WebSocket(this.url);
    this._ws = ws;
    ws.onopen = () => {
      if (ws !== this._ws) return;
      if (this.opening) ws.send(JSON.stringify(this.opening()));
      this.attempt = 0;
      this._setState("open", {});
      this._startPinging();
    };
    ws.onmessage = (message) => {
      if (ws === this._ws) this._receive(message.data);
    };
    ws.onclose = (event) => {
      if (ws !== this._ws) return;
      this._ws = null;
      for (const frame of this.pending) frame.sent = false; // unanswered: send again on the next connection
      this._stopPinging();
      this._closed(event.code, event.reason);
    };
  }

  _closed(code, reason) {
    const final = this._stopped || this.finalCodes.has(code);
    if (final) {
      this._setState("closed", { code, reason, final: true, retryIn: null });
      return;
    }
    const retryIn = Math.round(backoffDelay(this.attempt, this.baseDelay, this.maxDelay));
    this.attempt += 1;
    this._setState("closed", { code, reason, final: false, retryIn });
    this._timer = setTimeout(() => {
      if (!this._stopped) this._open();
    }, retryIn);
  }

  _receive(data) {
    const receivedAt = Date.now();
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      console.warn("synclab: a frame that is not JSON", data);
      return;
    }
    if (!frame || typeof frame.channel !== "string") {
      console.warn("synclab: a frame without a channel", frame);
      return;
    }
    this._learnTime(frame, receivedAt);
    this._settle(frame);
    const first = this._resending;
    this._resending = false;
    this._dispatch(frame);
    if (first) this._flush(); // after the first frame's handlers, which may discard stale frames
  }

  /** Give `frame` to the handlers of its channel and of "*". */
  _dispatch(frame) {
    for (const key of [frame.channel, "*"]) {
      for (const fn of this._handlers.get(key) || []) {
        try {
          fn(frame.payload, frame);
        } catch (error) {
          console.error(`synclab: a handler of ${key} failed`, error);
        }
      }
    }
  }

  /**
   * The first frame of a connection (hello, snapshot) was stamped between the start of the
   * handshake and its arrival; a ping reply between the ping and its arrival.
   */
  _learnTime(frame, receivedAt) {
    const payload = frame.payload;
    const serverTime = payload && typeof payload === "object" ? payload.server_time : undefined;
    if (frame.channel === "ping" && Number.isFinite(payload?.timestamp)) {
      this.clock.sample(serverTime, payload.timestamp, receivedAt);
    } else if (this._firstFrame) {
      this.clock.sample(serverTime, this._connectStartedAt, receivedAt);
    }
    this._firstFrame = false;
  }

  _startPinging() {
    if (!this.pingInterval) return;
    this.ping();
    this._pinger = setInterval(() => this.ping(), this.pingInterval);
  }

  _stopPinging() {
    clearInterval(this._pinger);
    this._pinger = null;
  }

  _setState(state, detail) {
    this.state = state;
    for (const fn of this._stateHandlers) {
      try {
        fn(state, detail);
      } catch (error) {
        console.error("synclab: a state handler failed", error);
      }
    }
  }
}
