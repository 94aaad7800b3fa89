// Formatting of durations, dates and statuses.

/** 850 ms · 12.3 s · 2 min 05 s · 1 h 02 min */
export function formatDuration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return '';
  const value = Math.max(0, Math.round(ms));
  if (value < 1000) return `${value} ms`;
  if (value < 60_000) return `${(value / 1000).toFixed(1)} s`;
  const totalSeconds = Math.floor(value / 1000);
  const minutes = Math.floor(totalSeconds / 60);
  const seconds = totalSeconds % 60;
  if (minutes < 60) return `${minutes} min ${String(seconds).padStart(2, '0')} s`;
  const hours = Math.floor(minutes / 60);
  return `${hours} h ${String(minutes % 60).padStart(2, '0')} min`;
}

/** A short human date: "14:05" today, "24 Nov, 14:05" otherwise. */
export function formatDate(iso) {
  if (!iso) return '';
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return '';
  const now = new Date();
  const sameDay = date.toDateString() === now.toDateString();
  const time = date.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
  if (sameDay) return time;
  return `${date.toLocaleDateString(undefined, { day: 'numeric', month: 'short', year: date.getFullYear() === now.getFullYear() ? undefined : 'numeric' })}, ${time}`;
}

/** "3 min ago" style, for history. */
export function formatRelative(iso) {
  if (!iso) return '';
  const diff = Date.now() - Date.parse(iso);
  if (Number.isNaN(diff)) return '';
  const s = Math.round(diff / 1000);
  if (s < 45) return 'just now';
  const m = Math.round(s / 60);
  if (m < 60) return `${m} min ago`;
  const hrs = Math.round(m / 60);
  if (hrs < 24) return `${hrs} h ago`;
  const days = Math.round(hrs / 24);
  return `${days} day${days === 1 ? '' : 's'} ago`;
}

export const TASK_STATUS_LABEL = {
  queued: 'Queued',
  running: 'Running',
  paused: 'Paused',
  completed: 'Completed',
  failed: 'Failed',
  cancelled: 'Cancelled',
};

export const AGENT_STATUS_LABEL = {
  pending: 'Pending',
  running: 'Running',
  completed: 'Completed',
  error: 'Error',
  cancelled: 'Cancelled',
};

/**
 * Usage in a line: "1,234 tokens · $0.0012 · first token 320 ms". A floor is marked with
 * "≥" when some attempts did not report tokens or had no price; empty before any usage.
 */
export function formatUsage(usage, timeToFirstToken = null) {
  if (!usage) return '';
  const tokens = usage.inputTokens + usage.outputTokens;
  const reported = tokens > 0 || usage.unreportedAttempts > 0 || usage.costUsd > 0;
  if (!reported && timeToFirstToken == null) return '';
  const parts = [];
  const floor = (n) => (n > 0 ? '≥ ' : '');
  parts.push(usage.unreportedAttempts && !tokens ? 'tokens not reported'
    : `${floor(usage.unreportedAttempts)}${tokens.toLocaleString('en-US')} tokens`);
  if (usage.costUsd > 0) parts.push(`${floor(usage.unpricedAttempts)}$${usage.costUsd.toFixed(4)}`);
  if (timeToFirstToken != null) parts.push(`first token ${formatDuration(timeToFirstToken)}`);
  return parts.join(' · ');
}

export function plural(n, one, many = `${one}s`) {
  return `${n} ${n === 1 ? one : many}`;
}

/** An API message as a sentence: capital first letter, final full stop. */
export function sentence(message) {
  const text = String(message || '').trim();
  if (!text) return '';
  const first = text[0].toUpperCase() + text.slice(1);
  return /[.!?…]$/.test(first) ? first : `${first}.`;
}
