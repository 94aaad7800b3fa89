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

/**
 * How honest a usage figure is: `tokens` is "~" when some counts are the simulated
 * provider's estimates and "≥" when some calls reported none (a floor); `cost` is "≥"
 * when some calls had no price. Both empty for exact figures.
 */
export function usageMarks(usage) {
  if (!usage) return { tokens: '', cost: '' };
  return {
    tokens: `${usage.unreportedAttempts > 0 ? '≥' : ''}${usage.simulatedAttempts > 0 ? '~' : ''}`,
    cost: usage.unpricedAttempts > 0 ? '≥' : '',
  };
}

/** What the marks of usageMarks() mean, for a title or a note. */
export function usageMarksNote(usage) {
  const notes = [];
  if (usage?.simulatedAttempts > 0) notes.push('~ simulated: the simulated provider estimates tokens, no model was called');
  if (usage?.unreportedAttempts > 0) notes.push('≥ at least: some calls reported no token counts');
  if (usage?.unpricedAttempts > 0 && usage?.costUsd > 0) notes.push('≥ at least: some calls had no price');
  return notes.join('; ');
}

/** A dollar amount: four decimals under a dollar, two above. */
export function formatCost(usd) {
  const value = Number(usd) || 0;
  return `$${value.toFixed(value !== 0 && Math.abs(value) < 1 ? 4 : 2)}`;
}

/** 950 · 12.3k · 4.5M, for chart axes. */
export function formatCompact(n) {
  const value = Number(n) || 0;
  const abs = Math.abs(value);
  if (abs < 1000) return String(Math.round(value));
  if (abs < 1_000_000) return `${+(value / 1000).toFixed(abs < 10_000 ? 1 : 0)}k`;
  return `${+(value / 1_000_000).toFixed(abs < 10_000_000 ? 1 : 0)}M`;
}

/**
 * A task's usage in a few characters, with its marks: "~1,234 tokens · ≥$0.0120";
 * empty before any call was answered.
 */
export function formatUsageShort(usage) {
  if (!usage) return '';
  const tokens = (usage.inputTokens || 0) + (usage.outputTokens || 0);
  const marks = usageMarks(usage);
  const parts = [];
  if (tokens > 0) parts.push(`${marks.tokens}${tokens.toLocaleString('en-US')} tokens`);
  else if (usage.unreportedAttempts > 0) parts.push('tokens not reported');
  if (usage.costUsd > 0) parts.push(`${marks.cost}${formatCost(usage.costUsd)}`);
  return parts.join(' · ');
}

/** Why a task waits while the user's others run (the viewer's note explains it). */
export const QUEUE_EXPLANATION = 'The server runs a limited number of each user\'s tasks at once; '
  + 'the others wait and start in the order they were submitted.';

/**
 * A waiting task's place among its owner's waiting tasks (`queuePosition`, 1 = next),
 * as the viewer says it: "Waiting: 3 of your tasks go first". Empty when there is no
 * valid place (the task does not wait).
 */
export function formatQueuePosition(position) {
  if (!Number.isInteger(position) || position < 1) return '';
  if (position === 1) return 'Waiting: next of your tasks to start';
  const ahead = position - 1;
  return `Waiting: ${ahead.toLocaleString('en-US')} of your tasks ${ahead === 1 ? 'goes' : 'go'} first`;
}
