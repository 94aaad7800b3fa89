// The HTTP client for Troupe's API. Same origin by default; `?api=<origin>` on any
// page (kept for the tab in sessionStorage) points it elsewhere, for development.

const BASE_KEY = 'troupe.apiBase';
const TOKEN_KEY = 'troupe.token';
const EMAIL_KEY = 'troupe.email';

(function readBaseFromQuery() {
  try {
    const param = new URLSearchParams(window.location.search).get('api');
    if (param !== null) {
      if (param === '') sessionStorage.removeItem(BASE_KEY);
      else sessionStorage.setItem(BASE_KEY, param.replace(/\/+$/, ''));
    }
  } catch { /* sessionStorage unavailable: same origin */ }
})();

export function apiBase() {
  try { return sessionStorage.getItem(BASE_KEY) || ''; } catch { return ''; }
}

/** Absolute URL for an API path such as `/api/tasks` or a `streamUrl`. */
export function apiUrl(path) {
  return apiBase() + path;
}

// --- session token --------------------------------------------------------

export function getToken() {
  try { return sessionStorage.getItem(TOKEN_KEY); } catch { return null; }
}

export function getEmail() {
  try { return sessionStorage.getItem(EMAIL_KEY); } catch { return null; }
}

export function setSession(token, email) {
  sessionStorage.setItem(TOKEN_KEY, token);
  if (email) sessionStorage.setItem(EMAIL_KEY, email);
}

export function clearSession() {
  try {
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(EMAIL_KEY);
  } catch { /* ignore */ }
}

let unauthorizedHandler = () => {};
/** Called with the ApiError when a signed-in request answers 401. */
export function onUnauthorized(fn) {
  unauthorizedHandler = fn;
}

// --- errors ---------------------------------------------------------------

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }
}

// --- requests -------------------------------------------------------------

export async function request(method, path, { body, headers = {}, auth = true, signal } = {}) {
  const h = { Accept: 'application/json', ...headers };
  if (body !== undefined) h['Content-Type'] = 'application/json';
  const token = getToken();
  if (auth && token) h.Authorization = `Bearer ${token}`;

  let response;
  try {
    response = await fetch(apiUrl(path), {
      method,
      headers: h,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      credentials: 'same-origin',
      cache: 'no-store',
    });
  } catch (err) {
    if (err && err.name === 'AbortError') throw err;
    throw new ApiError(0, 'network', 'Could not reach the Troupe server. Check that it is running and try again.');
  }

  const text = await response.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (!response.ok) {
    const e = data && data.error;
    const error = new ApiError(
      response.status,
      (e && e.code) || `http_${response.status}`,
      (e && e.message) || `The server answered ${response.status} ${response.statusText}.`,
    );
    if (response.status === 401 && auth) unauthorizedHandler(error);
    throw error;
  }
  return data;
}

export const api = {
  register: (email, password) => request('POST', '/api/auth/register', { body: { email, password }, auth: false }),
  login: (email, password) => request('POST', '/api/auth/login', { body: { email, password }, auth: false }),
  agents: (opts) => request('GET', '/api/agents', opts),
  providers: (opts) => request('GET', '/api/providers', opts),
  submitTask: (body, idempotencyKey, opts = {}) =>
    request('POST', '/api/tasks', { ...opts, body, headers: { 'Idempotency-Key': idempotencyKey } }),
  listTasks: ({ limit = 20, before } = {}, opts) => {
    const q = new URLSearchParams({ limit: String(limit) });
    if (before) q.set('before', before);
    return request('GET', `/api/tasks?${q}`, opts);
  },
  getTask: (id, opts) => request('GET', `/api/tasks/${encodeURIComponent(id)}`, opts),
  // Task control. Each answers at once; what it does shows up in the event log
  // (agent_cancelled, task_cancelled, task_paused, task_retried, …).
  cancelTask: (id, opts) => request('POST', `/api/tasks/${encodeURIComponent(id)}/cancel`, opts),
  cancelAgent: (id, role, opts) =>
    request('POST', `/api/tasks/${encodeURIComponent(id)}/agents/${encodeURIComponent(role)}/cancel`, opts),
  pauseTask: (id, opts) => request('POST', `/api/tasks/${encodeURIComponent(id)}/pause`, opts),
  resumeTask: (id, opts) => request('POST', `/api/tasks/${encodeURIComponent(id)}/resume`, opts),
  /** Retries the named agents, or every failed and cancelled one when `agents` is omitted. */
  retryTask: (id, agents, opts = {}) =>
    request('POST', `/api/tasks/${encodeURIComponent(id)}/retry`, agents ? { ...opts, body: { agents } } : opts),
  /**
   * The task's log as it is now (NDJSON export), read line by line as it arrives:
   * events with seq <= `upTo`, each passed through `keep` (return what to keep of it,
   * or null to drop it), so that a long log is never held whole.
   */
  taskEvents: async (id, upTo, { signal, keep = (ev) => ev } = {}) => {
    const token = getToken();
    const response = await fetch(apiUrl(`/api/tasks/${encodeURIComponent(id)}/events`), {
      headers: { Accept: 'application/x-ndjson', ...(token ? { Authorization: `Bearer ${token}` } : {}) },
      signal,
      cache: 'no-store',
    });
    if (!response.ok) throw new ApiError(response.status, `http_${response.status}`, 'Could not read the task log.');
    const events = [];
    const take = (line) => {
      if (!line.trim()) return;
      try {
        const ev = JSON.parse(line);
        if (ev.seq > upTo) return;
        const kept = keep(ev);
        if (kept) events.push(kept);
      } catch { /* skip */ }
    };
    if (!response.body || typeof response.body.getReader !== 'function') {
      for (const line of (await response.text()).split('\n')) take(line);
      return events;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let pending = '';
    for (;;) {
      const { done, value } = await reader.read();
      pending += decoder.decode(value || new Uint8Array(), { stream: !done });
      const lines = pending.split('\n');
      pending = lines.pop();
      for (const line of lines) take(line);
      if (done) break;
    }
    take(pending);
    return events;
  },
  /**
   * The stats consumer's figures for the caller's tasks over the last `days` UTC days
   * (GET /api/stats?days=N): per role and model, per role, and per day.
   */
  stats: (days, opts) => request('GET', `/api/stats?days=${encodeURIComponent(days)}`, opts),
};

/** A v4 UUID; falls back to getRandomValues where randomUUID is missing (plain-http origins). */
export function newIdempotencyKey() {
  if (window.crypto && typeof window.crypto.randomUUID === 'function') {
    try { return window.crypto.randomUUID(); } catch { /* insecure context */ }
  }
  const b = window.crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
