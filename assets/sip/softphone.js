// pbxguard browser softphone: a small ES module around JsSIP that a web page imports from
// pbxguard (`GET /sip/softphone.js`). It never holds a SIP password: pbxguard's edge binds the
// WebSocket to the web session through a single-use ticket and answers Asterisk's digest
// challenges itself. What the module adds to plain JsSIP is the ticket life cycle: JsSIP would
// reconnect a dropped socket to the same URL, whose ticket is spent, and fail three times with
// 401; here every socket gets a fresh ticket, with backoff, and a session that is over (401/403
// from the ticket endpoint) stops the retries.
//
//   import { Softphone } from '/sip/softphone.js';
//   const phone = new Softphone({ JsSIP });        // JsSIP defaults to globalThis.JsSIP
//   phone.addEventListener('registered', () => …);
//   await phone.start();
//   phone.call('600');
//
// No imports: the page brings its own JsSIP build (3.x) and passes it in.

const DEFAULTS = {
  ticketUrl: '/api/v1/sip/ticket',
  // The session cookie goes along on a same-origin request; a page using a Bearer token passes
  // { headers: { Authorization: 'Bearer …' } } here instead.
  fetchInit: { credentials: 'same-origin' },
  getTicket: null, // async () => ({ ticket, expires_at, extension, ws_url }) replaces the fetch
  domain: null, // host part of the SIP URI; the WebSocket's host when not given
  backoffInitial: 1000, // ms before the first reconnection, doubled per failed attempt …
  backoffMax: 30000, // … up to this
  mediaConstraints: { audio: true, video: false },
  uaConfig: {}, // extra JsSIP.UA settings (user_agent, display_name, session_timers, …)
};

// JsSIP's own reconnection must never fire: it would reuse the spent ticket. The UA is stopped
// as soon as its socket drops, well within this many seconds.
const NO_JSSIP_RECOVERY = 3600;

/** The ticket endpoint said the web session is over (logged out, revoked, expired). */
class SessionOver extends Error {
  constructor(status, code) {
    super(`the web session is over (ticket endpoint answered ${status}${code ? ` ${code}` : ''})`);
    this.status = status;
    this.code = code; // pbxguard's error code, e.g. "unauthorized" or "no_extension"
  }
}

export class Softphone extends EventTarget {
  constructor(options = {}) {
    super();
    this.options = { ...DEFAULTS, ...options };
    this.JsSIP = options.JsSIP || globalThis.JsSIP;
    if (!this.JsSIP || typeof this.JsSIP.UA !== 'function') {
      throw new TypeError('Softphone needs JsSIP: load it first or pass { JsSIP }');
    }
    this.state = 'idle'; // idle | connecting | connected | registered | waiting | stopped
    this.extension = null;
    this.ua = null;
    this.sessions = new Set(); // JsSIP RTCSessions not yet ended
    this.attempt = 0; // failed attempts since the last successful registration
    this._running = false;
    this._timer = null;
  }

  /** Fetches a ticket, opens the WebSocket and registers. Resolves once the attempt started. */
  async start() {
    if (this._running) return;
    this._running = true;
    this.attempt = 0;
    await this._connect();
  }

  /** Unregisters, ends every call and closes the socket; no reconnection until start(). */
  stop() {
    this._running = false;
    clearTimeout(this._timer);
    this._timer = null;
    this._retire(true);
    this.state = 'stopped';
  }

  /** Calls `target` (an extension or a SIP URI); returns the JsSIP RTCSession. */
  call(target, options = {}) {
    if (!this.ua || !this.ua.isRegistered()) {
      throw new Error('not registered');
    }
    const session = this.ua.call(String(target), {
      mediaConstraints: this.options.mediaConstraints,
      ...options,
    });
    this._emit('calling', { session, target: String(target) });
    return session;
  }

  /** Answers the newest ringing incoming call. */
  answer(options = {}) {
    const ringing = [...this.sessions].reverse().find(
      (s) => s.direction === 'incoming' && !s.isEstablished() && !s.isEnded());
    if (!ringing) throw new Error('no incoming call is ringing');
    ringing.answer({ mediaConstraints: this.options.mediaConstraints, ...options });
    return ringing;
  }

  /** Ends one call, or every call when none is named. */
  hangup(session) {
    for (const s of session ? [session] : [...this.sessions]) {
      if (!s.isEnded()) s.terminate();
    }
  }

  // ---- internals -------------------------------------------------------------------------

  _emit(type, detail = {}) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  async _fetchTicket() {
    if (this.options.getTicket) return this.options.getTicket();
    const res = await fetch(this.options.ticketUrl, { method: 'POST', ...this.options.fetchInit });
    if (res.status === 401 || res.status === 403) {
      const body = await res.json().catch(() => ({}));
      throw new SessionOver(res.status, body && body.error);
    }
    if (!res.ok) throw new Error(`ticket endpoint answered ${res.status}`);
    return res.json();
  }

  async _connect() {
    this.state = 'connecting';
    let ticket;
    try {
      ticket = await this._fetchTicket();
      if (!ticket || typeof ticket.ws_url !== 'string' || !ticket.extension) {
        throw new Error('the ticket answer has no ws_url or extension');
      }
    } catch (err) {
      if (!this._running) return;
      // A caller-supplied getTicket reports a finished session with err.status 401/403 too.
      if (err instanceof SessionOver || err.status === 401 || err.status === 403) {
        this._running = false;
        this.state = 'stopped';
        this._emit('sessionEnded', { status: err.status, error: err.code, reason: err.message });
        return;
      }
      this._schedule(err);
      return;
    }
    if (!this._running) return; // stop() was called while the ticket was on its way
    this._startUa(ticket);
  }

  _startUa(ticket) {
    const { JsSIP } = this;
    const domain = this.options.domain || new URL(ticket.ws_url).hostname;
    this.extension = String(ticket.extension);
    const ua = new JsSIP.UA({
      ...this.options.uaConfig,
      sockets: [new JsSIP.WebSocketInterface(ticket.ws_url)],
      uri: `sip:${this.extension}@${domain}`,
      register: true,
      connection_recovery_min_interval: NO_JSSIP_RECOVERY,
      connection_recovery_max_interval: NO_JSSIP_RECOVERY,
    });
    this.ua = ua;
    const current = () => this.ua === ua;
    ua.on('connected', () => {
      if (current()) this.state = 'connected';
    });
    ua.on('registered', () => {
      if (!current()) return;
      this.state = 'registered';
      this.attempt = 0; // the backoff starts over after a success
      this._emit('registered', { extension: this.extension });
    });
    ua.on('unregistered', (e) => this._emit('unregistered', { cause: e && e.cause }));
    ua.on('registrationFailed', (e) => {
      if (current()) this._emit('registrationFailed', { cause: e.cause, status: e.response && e.response.status_code });
    });
    ua.on('disconnected', (e) => {
      if (!current()) return; // the UA we retired ourselves
      this._emit('disconnected', { code: e.code, reason: e.reason, error: !!e.error });
      // JsSIP schedules its own reconnection right after this event; stop the UA once this
      // handler has returned so that stop() also cancels that timer.
      setTimeout(() => {
        if (!current()) return;
        this._retire(false);
        if (this._running) this._schedule(new Error('the WebSocket closed'));
      }, 0);
    });
    ua.on('newRTCSession', ({ session, originator, request }) => this._track(session, originator, request));
    ua.start();
  }

  _track(session, originator, request) {
    this.sessions.add(session);
    const done = (type) => (e) => {
      if (!this.sessions.delete(session)) return; // JsSIP may report one end twice
      this._emit(type, { session, cause: e.cause, originator: e.originator });
    };
    session.on('accepted', () => this._emit('accepted', { session }));
    session.on('confirmed', () => this._emit('confirmed', { session }));
    session.on('ended', done('ended'));
    session.on('failed', done('failed'));
    if (originator === 'remote') {
      this._emit('incoming', { session, from: request.from.uri.user, displayName: request.from.display_name });
    }
  }

  /** Lets go of the current UA. `graceful` (stop()): its calls end with a BYE and it
   *  unregisters; otherwise the socket is already gone (JsSIP has said `unregistered`). */
  _retire(graceful) {
    const ua = this.ua;
    if (!ua) return;
    this.ua = null;
    // Calls cannot outlive their socket: the edge ends them towards Asterisk when the socket
    // closes, so the page must not show them as running either.
    for (const s of [...this.sessions]) {
      try {
        if (!s.isEnded()) s.terminate({ cause: graceful ? undefined : this.JsSIP.C.causes.CONNECTION_ERROR });
      } catch (_) { /* already ending */ }
    }
    try {
      ua.stop();
    } catch (_) { /* already stopped */ }
  }

  _schedule(err) {
    this.state = 'waiting';
    this.attempt += 1;
    const base = Math.min(this.options.backoffMax,
      this.options.backoffInitial * 2 ** (this.attempt - 1));
    // Half fixed, half random: many pages dropped by one server restart do not come back in step.
    const delay = Math.round(base / 2 + Math.random() * base / 2);
    this._emit('reconnecting', { attempt: this.attempt, delay, error: String(err && err.message || err) });
    clearTimeout(this._timer);
    this._timer = setTimeout(() => {
      this._timer = null;
      if (this._running) this._connect();
    }, delay);
  }
}

export default Softphone;
