/**
 * observatory-client.js: a dependency-free browser client for the Observatory WebSocket protocol
 * (docs/protocol.md) that behaves like the Python client (clients/client.py). The server serves it
 * at `/observatory-client.js`; docs/browser-client.md explains its use, with a complete example.
 * @module observatory-client
 */

/** Close codes after which the client does not reconnect: retrying cannot mend them. */
export const FINAL_CLOSE_CODES = new Set([1002, 1003, 1007, 1008, 1009, 4001, 4003]);

const TOKEN_LEEWAY_MS = 30000; // the server's default jwt_leeway: a token is refused this long after exp

const DEFAULTS = {
  token: null, clientInfo: null, backfill: 0, requestTimeout: 10000,
  heartbeatInterval: 15000, heartbeatTimeout: 10000,
  reconnect: true, reconnectBase: 500, reconnectMax: 30000, maxReconnectAttempts: Infinity, stableAfter: 30000,
  rateLimitRetries: 3, WebSocket: undefined,
};

/** An `error` / `subscription_error` reply, or a failure on the client's side. */
export class ObservatoryError extends Error {
  /** `code`: the server's (`INVALID_FILTERS`, `RATE_LIMIT_EXCEEDED`, ...) or the client's
   * (`NOT_CONNECTED`, `CONNECTION_CLOSED`, `TIMEOUT`); `data`: the reply's data ({} for the client's). */
  constructor(code, message, data = {}) {
    super(message);
    this.name = "ObservatoryError";
    this.code = code;
    this.data = data;
  }
}

/** What the server also takes as the subscription's identity: restricting kinds, values sorted. */
function canonical(filters) {
  const out = {};
  for (const kind of Object.keys(filters || {}).sort()) {
    const values = filters[kind];
    if (Array.isArray(values) && values.length) out[kind] = [...new Set(values)].sort();
  }
  return JSON.stringify(out);
}

/** The `exp` of a JWT in epoch ms; null if the token is not a readable JWT. */
function tokenExpiry(token) {
  try {
    const exp = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))).exp;
    return typeof exp === "number" ? exp * 1000 : null;
  } catch {
    return null;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const quiet = (promise) => { promise.catch(() => {}); return promise; }; // no unhandled rejection

/**
 * A connection to Observatory that reconnects by itself, restores its subscriptions and resumes
 * where it left off. States: `idle` → `connecting` → `open` → (`reconnecting` → `connecting` →
 * `open`)* → `closed`.
 */
export class ObservatoryClient {
  /**
   * @param {string} url  `ws://host:port/`, or `wss://` with TLS.
   * @param {object} [options]
   * @param {string|null} [options.token]  JWT, offered as the subprotocols `["bearer", token]`.
   * @param {{name?: string, version?: string}|null} [options.clientInfo]  Sent with each subscribe.
   * @param {number} [options.backfill=0]  On the first connection, replay the last N events (by seq).
   * @param {number} [options.requestTimeout=10000]  ms before a request fails with `TIMEOUT`.
   * @param {number} [options.heartbeatInterval=15000]  ms between `ping`s; 0: no heartbeat.
   * @param {number} [options.heartbeatTimeout=10000]  ms to wait for the `pong`, then reconnect.
   * @param {boolean} [options.reconnect=true]  Reconnect after a lost connection.
   * @param {number} [options.reconnectBase=500]  ms, ceiling of the first back-off wait.
   * @param {number} [options.reconnectMax=30000]  ms, largest back-off ceiling.
   * @param {number} [options.maxReconnectAttempts=Infinity]  Failed attempts in a row before `closed`.
   * @param {number} [options.stableAfter=30000]  ms a connection must last to reset the back-off.
   * @param {number} [options.rateLimitRetries=3]  Retries of a request refused with RATE_LIMIT_EXCEEDED.
   * @param {Function} [options.WebSocket]  WebSocket constructor (default: the global one).
   */
  constructor(url, options = {}) {
    this.url = url;
    this.options = { ...DEFAULTS, ...options };
    /** @type {string|null} The token used by the next handshake. */
    this.token = this.options.token || null;
    /** `idle`, `connecting`, `open`, `reconnecting` or `closed`. */
    this.state = "idle";
    /** The last state report, as given to `on("state")` callbacks. */
    this.stateInfo = { state: "idle" };
    /** The `connection_established` data of the current connection, or null. */
    this.info = null;
    /** The epoch and seq of the last event received: where a reconnect resumes from. */
    this.lastEpoch = this.lastSeq = null;
    this._subs = new Map(); // canonical filters -> {id, filters, key, waiters}
    this._pending = new Map(); // requestId -> {timer, settle, reject}
    this._listeners = new Map();
    this._openWaiters = [];
    this._nextId = 1;
    this._attempt = this._openedAt = 0;
    this._ws = this._timer = this._connectTimer = this._heartbeat = this._shutdownDelay = this._pendingResume = null;
    this._closing = false;
  }

  /**
   * Start connecting (again, after `closed`). Resolves with the `connection_established` data once
   * `open` (subscriptions restored); rejects if the client ends `closed` first.
   * @returns {Promise<object>}
   */
  connect() {
    if (this.state === "idle" || this.state === "closed") {
      this._closing = false;
      this._attempt = 0;
      this._open();
    }
    if (this.state === "open") return Promise.resolve(this.info);
    const { code, reason } = this.stateInfo;
    if (this.state === "closed") return quiet(Promise.reject(new ObservatoryError("CONNECTION_CLOSED", `closed (${code}) ${reason}`)));
    return quiet(new Promise((resolve, reject) => this._openWaiters.push({ resolve, reject })));
  }

  /** Close for good: no reconnect. The state becomes `closed` with `byClient: true`. */
  close(code = 1000, reason = "closed by the client") {
    this._closing = true;
    clearTimeout(this._timer);
    if (this._ws) this._drop(code, reason);
    else this._final(code, reason);
  }

  /** While `reconnecting`: skip the rest of the wait. */
  reconnectNow() {
    if (this.state === "reconnecting") this._open();
  }

  /**
   * Call `callback(message)` for each message of a type: an event type (`message_added`, ...), a
   * notice (`connection_established`, `resumed`, `resume_failed`, `epoch_changed`,
   * `server_shutdown`, `error`, `subscription_error`) or `"*"` for all of them. `"state"` gets the
   * state reports `{state, attempt?, delay?, nextAttemptAt?, code?, reason?, final?, byClient?}`.
   * @returns {() => void} Removes the callback.
   */
  on(type, callback) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(callback);
    return () => this.off(type, callback);
  }

  /** Remove a callback registered with `on`. */
  off(type, callback) {
    this._listeners.get(type)?.delete(callback);
  }

  /**
   * Subscribe to the events matching `filters` (`{eventTypes, projectIds, sessionIds, messageTypes,
   * toolNames}`; `{}`: all). The subscription is remembered and restored after every reconnect;
   * made while not connected, it is sent once connected. Resolves with the subscription key (null
   * if unsubscribed before confirmed); rejects with the server's refusal (`err.code`
   * `INVALID_FILTERS`, `UNAUTHORIZED`, `TOO_MANY_SUBSCRIPTIONS`) or `CONNECTION_CLOSED` when `closed`.
   * @param {object} [filters]
   * @returns {Promise<string|null>}
   */
  subscribe(filters = {}) {
    const id = canonical(filters);
    let sub = this._subs.get(id);
    if (sub?.key && this.state === "open") return Promise.resolve(sub.key);
    return quiet(new Promise((resolve, reject) => {
      if (!sub) {
        sub = { id, filters: { ...filters }, key: null, waiters: [] };
        this._subs.set(id, sub);
        if (this.state === "open") this._sendSubscribe(sub).catch(() => {}); // else restored on connect
      }
      sub.waiters.push({ resolve, reject });
    }));
  }

  /**
   * Remove a subscription by key or by filters, or all of them (no argument). It is forgotten at
   * once. Resolves with the keys the server removed.
   * @param {string|object} [target]
   * @returns {Promise<string[]>}
   */
  async unsubscribe(target) {
    const byKey = typeof target === "string";
    const id = target === undefined || byKey ? null : canonical(target);
    const removed = [...this._subs.values()].filter((sub) =>
      target === undefined || (byKey ? sub.key === target : sub.id === id));
    for (const sub of removed) {
      this._subs.delete(sub.id);
      for (const waiter of sub.waiters.splice(0)) waiter.resolve(null);
    }
    if (!this.info) return removed.map((sub) => sub.key).filter(Boolean); // nothing on the server
    const data = target === undefined ? {} : byKey ? { subscriptionKey: target } : { filters: target };
    try { // while restoring (connecting), the server may hold it already
      const reply = this.state === "open" ? this.request("unsubscribe", data) : this._request("unsubscribe", data);
      return (await reply).data.subscriptionKeys;
    } catch (err) {
      if (err.code === "SUBSCRIPTION_NOT_FOUND") return [];
      throw err;
    }
  }

  /** The remembered subscriptions, `[{filters, key}]`, in the order they were made. */
  get subscriptions() {
    return [...this._subs.values()].map(({ filters, key }) => ({ filters, key }));
  }

  /**
   * A state query; resolves with the reply's `data`. `type`: `get_projects` ({limit}),
   * `get_active_conversations` ({projectId, limit}), `get_project_activity` ({projectId, timeRange}).
   * @returns {Promise<object>}
   */
  async query(type, data = {}) {
    return (await this.request(type, data)).data;
  }

  /** Application-level round trip; resolves with its duration in ms. */
  async ping() {
    const started = Date.now();
    await this.request("ping", { timestamp: started });
    return Date.now() - started;
  }

  /**
   * Hand the server a newer token before the current one expires (else it closes with 4001); later
   * reconnects use it too. Resolves with `{expiresAt, droppedSubscriptions}`.
   */
  async refreshToken(token) {
    const { data } = await this.request("refresh_token", { token });
    this.token = token;
    for (const sub of [...this._subs.values()]) {
      if (data.droppedSubscriptions.includes(sub.key)) this._subs.delete(sub.id);
    }
    return data;
  }

  /**
   * Send a request (only while `open`) and resolve with the whole reply message. A refusal with
   * `RATE_LIMIT_EXCEEDED` is retried after the server's `retryAfter`, up to `rateLimitRetries` times.
   * @returns {Promise<object>}
   */
  async request(type, data = {}) {
    for (let retries = 0; ; retries++) {
      if (this.state !== "open") throw new ObservatoryError("NOT_CONNECTED", `not connected (${this.state})`);
      try {
        return await this._request(type, data);
      } catch (err) {
        if (err.code !== "RATE_LIMIT_EXCEEDED" || retries >= this.options.rateLimitRetries) throw err;
        await sleep(err.data.retryAfter ?? 1000);
      }
    }
  }

  /**
   * The events matching `filters` among the last `count` seqs of the current epoch, oldest first,
   * replayed on a short-lived second connection (this one is untouched): to refill a view after a
   * filter change. If history no longer reaches that far, what it still holds.
   * @returns {Promise<object[]>}
   */
  fetchRecent(filters = {}, count = 200) {
    return this._replay(filters, count, null);
  }

  // --- connection -------------------------------------------------------------------------------

  _replay(filters, count, from) {
    return new Promise((resolve, reject) => {
      const ws = this._socket();
      const events = [];
      const stop = () => {
        clearTimeout(timer);
        ws.onmessage = ws.onclose = null;
        ws.close(1000);
      };
      const done = (error) => {
        stop();
        if (error) reject(error); else resolve(events);
      };
      const timer = setTimeout(() => done(new ObservatoryError("TIMEOUT", "no replay in time")),
        this.options.requestTimeout);
      ws.onclose = (ev) => done(new ObservatoryError("CONNECTION_CLOSED", `closed (${ev.code}) ${ev.reason}`));
      ws.onmessage = (ev) => {
        let msg;
        try { msg = JSON.parse(ev.data); } catch { return; }
        if (msg.type === "connection_established") {
          const { epoch, seq } = msg.data;
          if (typeof epoch !== "string") return done(); // nothing published yet
          const resume = { epoch, seq: from ?? Math.max(0, (seq || 0) - count) };
          ws.send(JSON.stringify({ type: "subscribe", data: { filters, resume }, requestId: 1 }));
        } else if (typeof msg.seq === "number") {
          events.push(msg);
        } else if (msg.type === "resumed") {
          done();
        } else if (msg.type === "resume_failed" && from === null && /oldest kept is (\d+)/.test(msg.data.reason)) {
          stop(); // history has lost the start: ask again from its oldest event
          const oldest = Number(/oldest kept is (\d+)/.exec(msg.data.reason)[1]);
          this._replay(filters, count, Math.max(0, oldest - 1)).then(resolve, reject);
        } else if (["resume_failed", "error", "subscription_error"].includes(msg.type)) {
          done(new ObservatoryError(msg.data.code ?? "RESUME_FAILED", msg.data.message ?? msg.data.reason, msg.data));
        }
      };
    });
  }

  _socket() {
    const Socket = this.options.WebSocket || globalThis.WebSocket;
    return this.token ? new Socket(this.url, ["bearer", this.token]) : new Socket(this.url);
  }

  _open() {
    clearTimeout(this._timer);
    const expiry = this.token ? tokenExpiry(this.token) : null;
    if (expiry !== null && Date.now() > expiry + TOKEN_LEEWAY_MS) return this._final(4001, "token expired");
    this._setState("connecting", { attempt: this._attempt });
    let ws;
    try {
      ws = this._socket();
    } catch (err) {
      return this._final(null, err.message); // a malformed URL does not get better
    }
    this._ws = ws;
    ws.onmessage = (ev) => { if (ws === this._ws) this._onMessage(ev.data); };
    ws.onclose = (ev) => { if (ws === this._ws) this._onClose(ev.code, ev.reason); };
    this._connectTimer = setTimeout(() => this._drop(1006, "no connection_established in time"),
      this.options.requestTimeout);
  }

  /** Let go of the current socket at once (dead, timed out, or closed by us) and handle the close. */
  _drop(code, reason) {
    const ws = this._ws;
    if (!ws) return;
    ws.onmessage = ws.onclose = null;
    try { ws.close(code === 1000 || code >= 3000 ? code : 1000, String(reason).slice(0, 100)); } catch { ws.close(); }
    this._onClose(code, reason);
  }

  _onClose(code, reason) {
    clearInterval(this._heartbeat);
    clearTimeout(this._connectTimer);
    this._ws = this.info = null;
    for (const pending of this._pending.values()) {
      clearTimeout(pending.timer);
      pending.reject(new ObservatoryError("CONNECTION_CLOSED", `connection closed (${code})`));
    }
    this._pending.clear();
    if (this._openedAt && Date.now() - this._openedAt >= this.options.stableAfter) this._attempt = 0;
    this._openedAt = 0;
    if (this._closing || !this.options.reconnect || FINAL_CLOSE_CODES.has(code)) return this._final(code, reason);
    this._attempt += 1;
    if (this._attempt > this.options.maxReconnectAttempts) {
      return this._final(code, `gave up after ${this.options.maxReconnectAttempts} attempts`);
    }
    // Full jitter; after a server_shutdown, the server's own spread instead.
    const ceiling = Math.min(this.options.reconnectMax, this.options.reconnectBase * 2 ** (this._attempt - 1));
    const delay = this._shutdownDelay ?? Math.random() * ceiling;
    this._shutdownDelay = null;
    this._setState("reconnecting", { attempt: this._attempt, delay, nextAttemptAt: Date.now() + delay, code, reason });
    this._timer = setTimeout(() => this._open(), delay);
  }

  _final(code, reason) {
    clearTimeout(this._timer);
    this._setState("closed", { code, reason, final: true, byClient: this._closing });
    const error = new ObservatoryError("CONNECTION_CLOSED", `closed (${code}) ${reason || ""}`.trim());
    for (const waiter of this._openWaiters.splice(0)) waiter.reject(error);
    for (const sub of this._subs.values()) for (const waiter of sub.waiters.splice(0)) waiter.reject(error);
  }

  _setState(state, details = {}) {
    this.state = state;
    this.stateInfo = { state, ...details };
    this._dispatch("state", this.stateInfo);
  }

  // --- incoming ---------------------------------------------------------------------------------

  _onMessage(raw) {
    let msg;
    try { msg = JSON.parse(raw); } catch { return; }
    if (!msg || typeof msg !== "object") return;
    if (msg.type === "connection_established") return this._onEstablished(msg);
    if (typeof msg.seq === "number") {
      // Once per (epoch, seq): around a resume an event can come from a subscription and the replay.
      if (msg.epoch === this.lastEpoch && this.lastSeq !== null && msg.seq <= this.lastSeq) return;
      this.lastEpoch = msg.epoch;
      this.lastSeq = msg.seq;
      return this._emit(msg);
    }
    if (msg.type === "server_shutdown") {
      const after = msg.data?.reconnectAfter;
      this._shutdownDelay = typeof after === "number" ? after : null;
    } else if (msg.type === "epoch_changed") {
      this.lastEpoch = msg.data.epoch; // seq starts again at 1
      this.lastSeq = 0;
    }
    // The first answer settles its request; a later one with the same requestId (resumed,
    // resume_failed after subscription_confirmed) is a notice like any other.
    const pending = msg.requestId != null ? this._pending.get(msg.requestId) : undefined;
    if (!pending) return this._emit(msg);
    this._pending.delete(msg.requestId);
    clearTimeout(pending.timer);
    pending.settle(msg);
  }

  _onEstablished(msg) {
    clearTimeout(this._connectTimer);
    this.info = msg.data;
    const { epoch, seq } = msg.data;
    if (this.lastEpoch === null && typeof epoch === "string") {
      // First connection: count as seen everything up to the worker's newest event but `backfill`.
      this.lastEpoch = epoch;
      this.lastSeq = Math.max(0, (seq || 0) - Math.max(0, this.options.backfill));
    }
    this._emit(msg);
    this._startHeartbeat(this._ws);
    this._restore(this._ws, this.lastEpoch === null ? null : { epoch: this.lastEpoch, seq: this.lastSeq });
  }

  _emit(msg) {
    this._dispatch(msg.type, msg);
    this._dispatch("*", msg);
  }

  _dispatch(type, payload) {
    for (const callback of [...(this._listeners.get(type) || [])]) {
      try { callback(payload); } catch (err) { console.error("observatory-client: a callback failed", err); }
    }
  }

  // --- requests ---------------------------------------------------------------------------------

  _request(type, data, timeout = this.options.requestTimeout) {
    const ws = this._ws;
    if (!ws || !this.info) return Promise.reject(new ObservatoryError("NOT_CONNECTED", "not connected"));
    const requestId = this._nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(requestId);
        reject(new ObservatoryError("TIMEOUT", `no reply to ${type} within ${timeout} ms`));
      }, timeout);
      const settle = (msg) => (msg.type === "error" || msg.type === "subscription_error"
        ? reject(new ObservatoryError(msg.data.code, msg.data.message, msg.data)) : resolve(msg));
      this._pending.set(requestId, { timer, settle, reject });
      ws.send(JSON.stringify({ type, data, requestId }));
    });
  }

  /** A `ping` every interval; no reply within the timeout and the connection is given up. */
  _startHeartbeat(ws) {
    clearInterval(this._heartbeat);
    const { heartbeatInterval, heartbeatTimeout } = this.options;
    if (!(heartbeatInterval > 0)) return;
    let waiting = false;
    this._heartbeat = setInterval(() => {
      if (waiting || ws !== this._ws) return;
      waiting = true;
      // Any reply proves the connection alive, a RATE_LIMIT_EXCEEDED refusal included.
      this._request("ping", { timestamp: Date.now() }, heartbeatTimeout)
        .catch((err) => { if (err.code === "TIMEOUT" && ws === this._ws) this._drop(1006, "heartbeat timeout"); })
        .finally(() => { waiting = false; });
    }, heartbeatInterval);
  }

  /**
   * Subscribe again to everything, in order, each with the resume point, all but the last with
   * `more: true`: the server holds live events from the first and, after the last, replays once
   * for all of them. Then `open`.
   */
  async _restore(ws, point) {
    const subs = [...this._subs.values()];
    this._pendingResume = subs.length ? null : point; // then the first later subscribe takes it
    try {
      let standing = null;
      let ended = !point;
      for (const [index, sub] of subs.entries()) {
        if (this._subs.get(sub.id) !== sub) continue; // unsubscribed meanwhile
        const last = index === subs.length - 1;
        const ok = await this._sendSubscribe(sub, point && (last ? point : { ...point, more: true }));
        if (ok) standing ??= sub;
        if (ok && last) ended = true;
      }
      // The subscribe meant to end the resume was refused or dropped: end it on one that stands
      // (else the server would hold this connection's live events for ever), or on a later one.
      if (!ended && standing) await this._sendSubscribe(standing, point);
      else if (!ended) this._pendingResume = point;
    } catch (err) {
      if (ws === this._ws) this._drop(1006, `restoring subscriptions failed: ${err.message}`);
      return;
    }
    if (ws !== this._ws) return;
    this._openedAt = Date.now();
    this._setState("open", { info: this.info });
    for (const waiter of this._openWaiters.splice(0)) waiter.resolve(this.info);
    for (const sub of this._subs.values()) { // made while restoring
      if (!subs.includes(sub)) this._sendSubscribe(sub).catch(() => {});
    }
  }

  /** True once confirmed; false if refused (then forgotten, and reported as subscription_error);
   * throws if the connection failed (the subscription stays for the next one). */
  async _sendSubscribe(sub, resume = null) {
    const data = { filters: sub.filters };
    if (this.options.clientInfo) data.clientInfo = this.options.clientInfo;
    resume ??= this._pendingResume;
    this._pendingResume = null;
    if (resume) data.resume = resume;
    for (let retries = 0; ; retries++) {
      try {
        const reply = await this._request("subscribe", data);
        sub.key = reply.data.subscriptionKey;
        for (const waiter of sub.waiters.splice(0)) waiter.resolve(sub.key);
        return true;
      } catch (err) {
        if (err.code === "RATE_LIMIT_EXCEEDED" && retries < 20) {
          await sleep(err.data.retryAfter ?? 1000);
          continue;
        }
        if (!err.data.code) throw err; // not the server's refusal: the connection failed
        if (this._subs.get(sub.id) === sub) this._subs.delete(sub.id);
        for (const waiter of sub.waiters.splice(0)) waiter.reject(err);
        this._emit({ type: "subscription_error", data: { ...err.data, filters: sub.filters }, timestamp: Date.now() });
        return false;
      }
    }
  }
}
