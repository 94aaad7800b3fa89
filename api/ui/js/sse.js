// Follows a task's event stream with a native EventSource.
//
// - The EventSource reconnects by itself after a network drop, sending
//   Last-Event-ID, so the stream continues after the last event received.
// - When it gives up (readyState CLOSED: an HTTP error such as 503, a proxy's 502,
//   or an expired stream token), we fetch a fresh streamUrl and open a new one
//   with `?after=<lastSeq>`, with a capped backoff.
// - After the terminal event we close it ourselves (the server would answer the
//   next reconnect with 204, which also stops it).
// The caller de-duplicates by seq; this module only delivers parsed events.

import { apiUrl } from './api.js';
import { EVENT_TYPES, TERMINAL_TYPES } from './state.js';

function withAfter(streamUrl, after) {
  const url = new URL(apiUrl(streamUrl), window.location.origin);
  url.searchParams.set('after', String(after));
  return url.toString();
}

export class TaskStream {
  /**
   * @param {object} o
   * @param {string} o.streamUrl         path with its stream token
   * @param {() => number} o.cursor      the seq of the last event the caller has
   * @param {(ev: object) => void} o.onEvent
   * @param {(state: 'connecting'|'live'|'reconnecting'|'closed') => void} o.onStatus
   * @param {() => Promise<{streamUrl: string, terminal: boolean}>} o.refresh  fresh streamUrl
   */
  constructor({ streamUrl, cursor, onEvent, onStatus, refresh }) {
    this.streamUrl = streamUrl;
    this.cursor = cursor;
    this.onEvent = onEvent;
    this.onStatus = onStatus;
    this.refresh = refresh;
    this.source = null;
    this.stopped = false;
    this.retryTimer = null;
    this.failures = 0;
    this.handleMessage = this.handleMessage.bind(this);
  }

  start() {
    this.onStatus('connecting');
    this.open();
  }

  open() {
    if (this.stopped) return;
    const source = new EventSource(withAfter(this.streamUrl, this.cursor()));
    this.source = source;
    for (const type of EVENT_TYPES) source.addEventListener(type, this.handleMessage);
    source.onopen = () => {
      if (this.source !== source) return;
      this.failures = 0;
      this.onStatus('live');
    };
    source.onerror = () => {
      if (this.source !== source || this.stopped) return;
      this.onStatus('reconnecting');
      if (source.readyState === EventSource.CLOSED) {
        // The browser will not retry this one: open a new stream ourselves.
        source.close();
        this.source = null;
        this.scheduleReopen();
      }
      // Otherwise (CONNECTING) the browser retries with Last-Event-ID.
    };
  }

  handleMessage(message) {
    if (this.stopped) return;
    let data;
    try { data = JSON.parse(message.data); } catch { return; }
    if (typeof data.seq !== 'number' && message.lastEventId) data.seq = Number(message.lastEventId);
    if (!data.type) data.type = message.type;
    this.onEvent(data);
    if (TERMINAL_TYPES.has(data.type)) this.stop('closed');
  }

  scheduleReopen() {
    if (this.stopped) return;
    this.failures += 1;
    const delay = Math.min(15000, 500 * 2 ** Math.min(this.failures - 1, 5)) * (0.75 + Math.random() * 0.5);
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(async () => {
      if (this.stopped) return;
      try {
        const fresh = await this.refresh();
        if (this.stopped) return;
        if (fresh && fresh.streamUrl) this.streamUrl = fresh.streamUrl;
        if (fresh && fresh.terminal && fresh.caughtUp) { this.stop('closed'); return; }
      } catch {
        // Server still unreachable (or view failed): keep the old URL and try again.
        if (!this.stopped) { this.scheduleReopen(); return; }
      }
      this.open();
    }, delay);
  }

  /** Reconnect now (e.g. the browser came back online). */
  nudge() {
    if (this.stopped || this.source) return;
    this.failures = 0;
    clearTimeout(this.retryTimer);
    this.scheduleReopen();
  }

  stop(status = 'closed') {
    if (this.stopped) return;
    this.stopped = true;
    clearTimeout(this.retryTimer);
    if (this.source) {
      this.source.close();
      this.source = null;
    }
    this.onStatus(status);
  }
}
