// pushsvc.js: a small browser client for pushsvc streams (an ES module, no dependencies).
//
//   import { PushStream } from "/pushsvc.js";
//   const s = new PushStream("/stream", { channels: ["a", "b"], getToken: async () => token, rewind: 0 });
//   s.on("new_answers", (data, event) => ...);   // data: parsed JSON, or the text
//   s.onreset = ({ reason, channels }) => ...;   // history could not fill a gap: reload your state
//   s.close();
//
// It wraps EventSource and adds: the last id kept in sessionStorage per (URL, channel set),
// so a reloaded page resumes without loss or repeat; reconnection with exponential backoff
// and jitter when the server refuses the stream or a proxy answers 502/503 (EventSource
// gives up for good on any non-200 answer); token refresh through getToken() when the
// stream's token expires or a reconnect is refused. Network errors and the server's
// `retry:` are left to EventSource, which honours them.

const RESERVED = ["message", "pushsvc.reset", "pushsvc.token_expired"];

export class PushStream {
  constructor(url, { channels = [], getToken = null, rewind = 0, withCredentials = false,
    storage = safeSessionStorage(), minDelay = 1000, maxDelay = 30000 } = {}) {
    this.url = new URL(url, globalThis.location?.href);
    this.channels = [...new Set(channels)].sort();
    this.getToken = getToken;
    this.rewind = rewind;
    this.withCredentials = withCredentials;
    this.storage = storage;
    this.minDelay = minDelay;
    this.maxDelay = maxDelay;
    this.key = "pushsvc:" + this.url.origin + this.url.pathname + "|" + this.channels.join(",");
    this.handlers = new Map();
    this.onreset = this.onopen = this.onerror = null;
    this.attempt = 0;
    this.closed = false;
    this.source = this.timer = this.token = null;
    this._connect(!!getToken);
  }

  get lastEventId() {
    try { return this.storage?.getItem(this.key) || ""; } catch { return ""; }
  }

  on(type, listener) {
    if (!this.handlers.has(type)) {
      this.handlers.set(type, []);
      if (this.source && !RESERVED.includes(type)) this._listen(this.source, type);
    }
    this.handlers.get(type).push(listener);
    return this;
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    this.source?.close();
    this.source = null;
  }

  async _connect(refresh) {
    if (this.closed) return;
    if (refresh) {
      try {
        this.token = await this.getToken();
      } catch (error) {
        return this._fail(error);
      }
      if (this.closed) return;
    }
    const target = new URL(this.url);
    for (const channel of this.channels) target.searchParams.append("channel", channel);
    const last = this.lastEventId;
    if (last) target.searchParams.set("lastEventId", last);
    else if (this.rewind > 0) target.searchParams.set("rewind", String(this.rewind));
    if (this.token) target.searchParams.set("token", this.token);
    const source = this.source = new EventSource(target, { withCredentials: this.withCredentials });
    source.onopen = () => {
      this.attempt = 0;
      this.onopen?.();
    };
    source.onerror = () => {
      if (source !== this.source) return;
      // CONNECTING: EventSource retries by itself (network error, the stream ended), after
      // the server's retry:. CLOSED: it was refused (401/403, a proxy's 502...) and gave up.
      if (source.readyState === EventSource.CLOSED) this._fail(null);
      else this.onerror?.(null);
    };
    for (const type of new Set([...RESERVED, ...this.handlers.keys()])) this._listen(source, type);
  }

  _listen(source, type) {
    source.addEventListener(type, (event) => {
      if (source === this.source) this._dispatch(source, event);
    });
  }

  _dispatch(source, event) {
    let data = event.data;
    try { data = JSON.parse(data); } catch { /* text stays text */ }
    try {
      if (event.type === "pushsvc.token_expired") {
        source.close();
        this._connect(!!this.getToken);
        return;
      }
      if (event.type === "pushsvc.reset") this.onreset?.(data, event);
      for (const listener of this.handlers.get(event.type) || []) listener(data, event);
    } finally {
      // After the listeners: a page unloaded before its listeners ran gets the event again.
      if (event.lastEventId) {
        try { this.storage?.setItem(this.key, event.lastEventId); } catch { /* storage full or denied */ }
      }
    }
  }

  _fail(error) {
    this.source?.close();
    this.source = null;
    this.onerror?.(error);
    if (this.closed) return;
    const delay = Math.min(this.maxDelay, this.minDelay * 2 ** this.attempt++);
    this.timer = setTimeout(() => this._connect(!!this.getToken), delay * (0.5 + Math.random() / 2));
  }
}

function safeSessionStorage() {
  try { return globalThis.sessionStorage; } catch { return null; }
}
