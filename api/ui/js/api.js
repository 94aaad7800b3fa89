// The HTTP client for Troupe's API. Same origin by default; `?api=<origin>` on any
// page (kept for the tab in sessionStorage) points it elsewhere, for development.
//
// The session is the `troupe_session` cookie that sign-in sets: HttpOnly, so no script
// of the page (nor one injected into it) can read the token and use it elsewhere. The
// page learns whether it is signed in, and as whom, from GET /api/auth/session. A
// request that changes something sends the session's CSRF token in X-CSRF-Token (the
// `troupe_csrf` cookie's value, which a page of another site cannot read).

const BASE_KEY = 'troupe.apiBase';
const CSRF_COOKIE = 'troupe_csrf';
const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

(function readBaseFromQuery() {
  try {
    const param = new URLSearchParams(window.location.search).get('api');
    if (param !== null) {
      if (param === '') sessionStorage.removeItem(BASE_KEY);
      else sessionStorage.setItem(BASE_KEY, param.replace(/\/+$/, ''));
    }
  } catch { /* sessionStorage unavailable: same origin */ }
})();

// Earlier versions kept the token in sessionStorage: drop what one may have left there.
(function forgetStoredToken() {
  try {
    sessionStorage.removeItem('troupe.token');
    sessionStorage.removeItem('troupe.email');
  } catch { /* unavailable: nothing kept either */ }
})();

export function apiBase() {
  try { return sessionStorage.getItem(BASE_KEY) || ''; } catch { return ''; }
}

/** Absolute URL for an API path such as `/api/tasks` or a `streamUrl`. */
export function apiUrl(path) {
  return apiBase() + path;
}

/** Cookies go with every request: to our own origin, or to the `?api=` one in development. */
function credentials() {
  return apiBase() ? 'include' : 'same-origin';
}

// --- session ----------------------------------------------------------------

/** { userId, email, csrfToken } while signed in (from GET /api/auth/session), else null. */
let session = null;

export function currentSession() {
  return session;
}

export function isSignedIn() {
  return session !== null;
}

/** Forgets the account in memory (the cookie is the server's to clear: POST /api/auth/logout). */
export function forgetSession() {
  session = null;
}

/**
 * Asks the server whom the session cookie belongs to: resolves to the session, or to
 * null when there is none (401). Throws an ApiError when the server cannot be reached.
 */
export async function loadSession({ signal } = {}) {
  try {
    session = await request('GET', '/api/auth/session', { auth: false, signal });
  } catch (err) {
    if (err && err.status === 401) {
      session = null;
      return null;
    }
    throw err;
  }
  return session;
}

function readCookie(name) {
  try {
    for (const pair of document.cookie.split(';')) {
      const at = pair.indexOf('=');
      if (at > 0 && pair.slice(0, at).trim() === name) return pair.slice(at + 1).trim() || null;
    }
  } catch { /* no cookies here */ }
  return null;
}

/**
 * The CSRF token to send: the cookie's first, since it always names the session the
 * browser holds now (a sign-in in another tab replaces both cookies); the one from
 * GET /api/auth/session when the API is on another origin, whose cookies this page
 * cannot read.
 */
function csrfToken() {
  return (!apiBase() && readCookie(CSRF_COOKIE)) || (session && session.csrfToken) || null;
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

/**
 * Sends a request with the session cookie. `auth: false` for the requests whose 401
 * means something else than "the session ended" (sign-in, sign-out, the session probe):
 * they do not send the page to /login.
 */
export async function request(method, path, { body, headers = {}, auth = true, signal, csrfRetried = false } = {}) {
  const h = { Accept: 'application/json', ...headers };
  if (body !== undefined) h['Content-Type'] = 'application/json';
  if (!SAFE_METHODS.has(method)) {
    const csrf = csrfToken();
    if (csrf) h['X-CSRF-Token'] = csrf;
  }

  let response;
  try {
    response = await fetch(apiUrl(path), {
      method,
      headers: h,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      credentials: credentials(),
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
    // A CSRF token of another session (the cookies changed since the page read them):
    // the server refused before doing anything, so ask for the current one and send
    // the request once more.
    if (response.status === 403 && error.code === 'csrf_token_invalid' && !csrfRetried) {
      const fresh = await loadSession({ signal }).catch(() => null);
      if (fresh) return request(method, path, { body, headers, auth, signal, csrfRetried: true });
    }
    if (response.status === 401 && auth) unauthorizedHandler(error);
    throw error;
  }
  return data;
}

export const api = {
  register: (email, password) => request('POST', '/api/auth/register', { body: { email, password }, auth: false }),
  login: (email, password) => request('POST', '/api/auth/login', { body: { email, password }, auth: false }),
  /** Ends the session on the server (its cookie, and every stream URL minted from it). */
  logout: () => request('POST', '/api/auth/logout', { auth: false }),
  /**
   * Ends every session of the account and starts a new one for this page: the answer
   * sets its cookies. 403 wrong_password, 422 invalid_password, 429 too_many_attempts_account.
   */
  changePassword: (currentPassword, newPassword, opts = {}) =>
    request('POST', '/api/auth/password', { ...opts, body: { currentPassword, newPassword } }),
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
   * Deletes the task with its log. Resolves to null when it is gone (204), or to
   * {taskId, deleteRequested: true} when it was running (202): hidden at once, its
   * worker stops it, then it is deleted.
   */
  deleteTask: (id, opts) => request('DELETE', `/api/tasks/${encodeURIComponent(id)}`, opts),
  /**
   * The task's log as it is now (NDJSON export), read line by line as it arrives:
   * events with seq <= `upTo`, each passed through `keep` (return what to keep of it,
   * or null to drop it), so that a long log is never held whole.
   */
  taskEvents: async (id, upTo, { signal, keep = (ev) => ev } = {}) => {
    const response = await fetch(apiUrl(`/api/tasks/${encodeURIComponent(id)}/events`), {
      headers: { Accept: 'application/x-ndjson' },
      signal,
      credentials: credentials(),
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
