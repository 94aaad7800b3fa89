// The run timeline: one bar per agent attempt on a shared time axis, derived from the
// task's events (what waited, what ran side by side, how each attempt ended).
//
// deriveTimeline() and the layout helpers are pure (tests/ui/timeline.test.mjs runs
// them under node); renderTimeline() draws the SVG.

import { svg } from './dom.js';
import { formatDuration } from './format.js';

/** The event types the timeline reads; every other type leaves it unchanged. */
export const TIMELINE_TYPES = new Set([
  'task_created', 'task_resumed', 'task_released', 'task_paused', 'task_unpaused', 'task_retried',
  'agent_start', 'agent_complete', 'agent_error', 'agent_cancelled',
  'task_complete', 'task_error', 'task_cancelled',
]);

const ENDINGS = { agent_complete: 'done', agent_error: 'failed', agent_cancelled: 'cancelled' };
const TASK_ENDINGS = new Set(['task_complete', 'task_error', 'task_cancelled']);

/** What a state is called, for labels and the legend. */
export const TIMELINE_STATE_LABEL = {
  queued: 'queued',
  running: 'running',
  done: 'done',
  failed: 'failed',
  cancelled: 'cancelled',
  interrupted: 'interrupted',
  skipped: 'did not run',
};

/** Only what the timeline needs of an event (so a long log is never kept), or null. */
export function timelineEvent(ev) {
  if (!ev || !TIMELINE_TYPES.has(ev.type)) return null;
  const out = { seq: ev.seq, type: ev.type, at: ev.at };
  if (ev.agentRole !== undefined) out.agentRole = ev.agentRole;
  if (ev.attempt !== undefined) out.attempt = ev.attempt;
  if (Array.isArray(ev.agents)) out.agents = ev.agents;
  if (Array.isArray(ev.selectedAgents)) out.selectedAgents = ev.selectedAgents;
  return out;
}

/**
 * The events a projected view (GET /api/tasks/{id}) implies: what the timeline shows
 * before the log is read. Only each agent's current attempt is known from a view.
 */
export function eventsFromView(view) {
  const events = [];
  const agents = view.agents || [];
  if (view.createdAt) events.push({ seq: 0, type: 'task_created', at: view.createdAt, selectedAgents: agents.map((a) => a.role) });
  const ending = { completed: 'agent_complete', error: 'agent_error', cancelled: 'agent_cancelled' };
  const timed = [];
  for (const a of agents) {
    if (!a.startedAt) continue;
    timed.push({ type: 'agent_start', at: a.startedAt, agentRole: a.role, attempt: a.attempt || 1 });
    if (a.finishedAt && ending[a.status]) timed.push({ type: ending[a.status], at: a.finishedAt, agentRole: a.role, attempt: a.attempt || 1 });
  }
  const finished = { completed: 'task_complete', failed: 'task_error', cancelled: 'task_cancelled' }[view.status];
  if (finished && view.finishedAt) timed.push({ type: finished, at: view.finishedAt, last: true });
  // Stable by time; a task's ending comes after its agents' endings of the same instant.
  timed.sort((a, b) => Date.parse(a.at) - Date.parse(b.at) || (a.last ? 1 : 0) - (b.last ? 1 : 0));
  for (const ev of timed) {
    delete ev.last;
    events.push({ seq: 0, ...ev });
  }
  return events;
}

/**
 * Folds timeline events (in log order) into lanes, one per agent attempt:
 * `{ start, end, lanes: [{ key, role, attempt, state, segments: [{ kind, from, to }] }] }`.
 * Times are ms since the epoch; `to` (and `end`) is null while still open: a reader
 * draws it up to "now". A lane's `kind: 'queued'` segments are the attempt's waits
 * (for a worker, an agent slot, or the agents before it); its `run` segment, from
 * agent_start to its ending. `roles` gives the team order of the lanes.
 */
export function deriveTimeline(events, roles = []) {
  const order = [...roles];
  const lanes = new Map();
  const per = new Map();
  let start = null;
  let end = null;
  let lastAt = null;

  const role = (name) => {
    if (!per.has(name)) {
      per.set(name, { attempt: 0, running: null, waiting: null, last: null });
      if (!order.includes(name)) order.push(name);
    }
    return per.get(name);
  };
  const lane = (name, attempt) => {
    const key = `${name}#${attempt}`;
    if (!lanes.has(key)) lanes.set(key, { key, role: name, attempt, state: 'queued', segments: [] });
    return lanes.get(key);
  };
  const openWait = (name, at) => {
    const r = role(name);
    if (r.running || r.waiting) return;
    const l = lane(name, r.attempt + 1);
    l.segments.push({ kind: 'queued', from: at, to: null });
    l.state = 'queued';
    r.waiting = l;
  };
  const closeWait = (r, at) => {
    if (!r.waiting) return null;
    const l = r.waiting;
    const seg = l.segments[l.segments.length - 1];
    if (seg && seg.to === null) seg.to = Math.max(seg.from, at);
    r.waiting = null;
    return l;
  };
  const closeRun = (r, at, state) => {
    const l = r.running;
    if (!l) return;
    const seg = l.segments[l.segments.length - 1];
    if (seg && seg.to === null) seg.to = Math.max(seg.from, at);
    l.state = state;
    r.running = null;
    r.last = state;
  };
  // Roles that may run again when a run (re)starts: neither running nor ended.
  const unfinished = () => [...per.entries()].filter(([, r]) => !r.running && !['done', 'failed', 'cancelled'].includes(r.last));

  for (const ev of events) {
    const at = Date.parse(ev.at);
    if (Number.isNaN(at)) continue;
    if (start === null) start = at;
    switch (ev.type) {
      case 'task_created':
        start = at;
        for (const name of ev.selectedAgents || roles) openWait(name, at);
        break;
      case 'task_retried':
        // The agents named run again, and so do those that never ran (a sequential run
        // goes on past the retried agent).
        end = null;
        for (const name of ev.agents || []) role(name).last = null;
        for (const [name] of unfinished()) openWait(name, at);
        break;
      case 'task_released':
      case 'task_resumed': {
        // The run before stopped (handed back, or a crash: then its last sign of life
        // is the event before this one); its running agents run again.
        const stopped = ev.type === 'task_released' ? at : (lastAt ?? at);
        for (const [, r] of per) {
          if (r.running) closeRun(r, stopped, 'interrupted');
          r.last = r.last === 'interrupted' ? null : r.last;
        }
        for (const [name] of unfinished()) openWait(name, at);
        break;
      }
      case 'task_unpaused':
        for (const [name] of unfinished()) openWait(name, at);
        break;
      case 'task_paused':
        for (const [, r] of per) closeWait(r, at);
        break;
      case 'agent_start': {
        const r = role(ev.agentRole);
        if (r.running) closeRun(r, at, 'interrupted');
        const attempt = ev.attempt || r.attempt + 1;
        let l = closeWait(r, at);
        if (l && l.attempt !== attempt) {
          // A wait counted for another attempt number: it was this attempt's.
          lanes.delete(l.key);
          const target = lane(ev.agentRole, attempt);
          target.segments.push(...l.segments);
          l = target;
        }
        l = l || lane(ev.agentRole, attempt);
        l.segments.push({ kind: 'run', from: at, to: null });
        l.state = 'running';
        r.running = l;
        r.attempt = Math.max(r.attempt, attempt);
        r.last = null;
        break;
      }
      case 'agent_complete':
      case 'agent_error':
      case 'agent_cancelled': {
        const r = role(ev.agentRole);
        if (r.running) {
          closeRun(r, at, ENDINGS[ev.type]);
        } else if (ev.type === 'agent_cancelled') {
          // An attempt a crash interrupted, cancelled afterwards: it will not run again.
          const l = lanes.get(`${ev.agentRole}#${ev.attempt || r.attempt}`);
          if (l && l.state === 'interrupted') l.state = 'cancelled';
          const wait = closeWait(r, at);
          if (wait && wait !== l && wait.segments.every((s) => s.kind === 'queued')) lanes.delete(wait.key);
          r.last = 'cancelled';
        }
        break;
      }
      default:
        if (TASK_ENDINGS.has(ev.type)) {
          end = at;
          for (const [, r] of per) {
            if (r.running) closeRun(r, at, ev.type === 'task_cancelled' ? 'cancelled' : 'interrupted');
            const l = closeWait(r, at);
            if (l && !l.segments.some((s) => s.kind === 'run')) l.state = 'skipped';
          }
        }
    }
    lastAt = at;
  }

  const rank = (name) => order.indexOf(name);
  const sorted = [...lanes.values()].sort((a, b) => rank(a.role) - rank(b.role) || a.attempt - b.attempt);
  return { start, end, lanes: sorted };
}

/** Milliseconds each lane waited and ran, up to `now` for open segments. */
export function laneTimes(lane, now) {
  let queued = 0;
  let ran = 0;
  for (const s of lane.segments) {
    const ms = Math.max(0, (s.to ?? now) - s.from);
    if (s.kind === 'queued') queued += ms;
    else ran += ms;
  }
  return { queued, ran };
}

const TICK_STEPS = [
  10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 15_000, 30_000,
  60_000, 120_000, 300_000, 600_000, 900_000, 1_800_000, 3_600_000, 7_200_000, 21_600_000, 43_200_000, 86_400_000,
];

/** Tick positions (ms from the start) for a span: a round step, at most `max` ticks. */
export function timeTicks(span, max = 6) {
  const total = Math.max(1, span);
  const step = TICK_STEPS.find((s) => total / s <= max) ?? Math.ceil(total / max / 86_400_000) * 86_400_000;
  const ticks = [];
  for (let t = 0; t <= total + 1e-9; t += step) ticks.push(t);
  return { step, ticks };
}

/** A tick's label: 0, 500 ms, 1.5 s, 2 min… */
export function tickLabel(ms) {
  if (ms === 0) return '0';
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60_000) return `${+(ms / 1000).toFixed(1)} s`;
  if (ms < 3_600_000) return `${+(ms / 60_000).toFixed(1)} min`;
  return `${+(ms / 3_600_000).toFixed(1)} h`;
}

/** What a screen reader (and a hover) says of a lane. */
export function laneLabel(lane, name, start, now) {
  const { queued, ran } = laneTimes(lane, now);
  const who = lane.attempt > 1 ? `${name}, attempt ${lane.attempt}` : name;
  const state = TIMELINE_STATE_LABEL[lane.state] || lane.state;
  const run = lane.segments.find((s) => s.kind === 'run');
  const parts = [`${who}: ${state}`];
  if (queued > 0) parts.push(`waited ${formatDuration(queued)}`);
  if (run) parts.push(`ran ${formatDuration(ran)} from ${formatDuration(run.from - start)}`);
  return parts.join(', ');
}

const LABEL_FONT = 12;

/**
 * Draws `timeline` into `container` (replacing what was there), `width` pixels wide,
 * open segments up to `now`. `names` maps a role to its display name.
 */
export function renderTimeline(container, timeline, { now, width, names = {} }) {
  const { start, lanes } = timeline;
  if (start === null || !lanes.length) {
    container.replaceChildren();
    return;
  }
  const endAt = timeline.end ?? now;
  const span = Math.max(1000, endAt - start);
  const narrow = width < 560;
  const labelWidth = narrow ? Math.min(120, Math.round(width * 0.34)) : 170;
  const right = 12;
  const rowHeight = 24;
  const barHeight = 14;
  const top = 22;
  const plot = Math.max(40, width - labelWidth - right);
  const height = top + lanes.length * rowHeight + 6;
  const x = (t) => labelWidth + Math.max(0, Math.min(1, (t - start) / span)) * plot;
  const maxChars = Math.max(6, Math.floor((labelWidth - 8) / (LABEL_FONT * 0.56)));

  const { ticks } = timeTicks(span, narrow ? 4 : 8);
  const grid = ticks.map((t) => svg('g', { class: 'tl-tick', 'aria-hidden': 'true' },
    svg('line', { x1: x(start + t), x2: x(start + t), y1: top - 4, y2: height - 4 }),
    svg('text', { x: x(start + t), y: top - 8, 'text-anchor': t === 0 ? 'start' : 'middle' }, tickLabel(t))));

  const rows = lanes.map((lane, i) => {
    const y = top + i * rowHeight;
    const name = names[lane.role] || lane.role;
    const label = laneLabel(lane, name, start, now);
    let text = lane.attempt > 1 ? `${name} #${lane.attempt}` : name;
    if (text.length > maxChars) text = `${text.slice(0, maxChars - 1)}…`;
    const segments = lane.segments.map((s) => {
      const x1 = x(s.from);
      const x2 = x(s.to ?? now);
      const kind = s.kind === 'queued' ? 'queued' : lane.state;
      return svg('rect', {
        class: `tl-seg tl-${kind}${s.to === null ? ' tl-open' : ''}`,
        'data-kind': s.kind,
        x: x1.toFixed(1),
        y: y + (rowHeight - barHeight) / 2,
        width: Math.max(2, x2 - x1).toFixed(1),
        height: barHeight,
        rx: 3,
      });
    });
    return svg('g', {
      class: 'tl-lane',
      role: 'listitem',
      'aria-label': label,
      'data-testid': `timeline-bar-${lane.role}-${lane.attempt}`,
      'data-state': lane.state,
      'data-role': lane.role,
      'data-attempt': lane.attempt,
    },
    svg('title', {}, label),
    svg('rect', { class: 'tl-row', x: 0, y, width, height: rowHeight }),
    svg('text', { class: 'tl-label', x: 4, y: y + rowHeight / 2 + 4 }, text),
    ...segments);
  });

  container.replaceChildren(svg('svg', {
    class: 'timeline-svg',
    width,
    height,
    viewBox: `0 0 ${width} ${height}`,
    role: 'list',
    'aria-label': `Run timeline: ${lanes.length} agent attempt${lanes.length === 1 ? '' : 's'} over ${formatDuration(endAt - start)}`,
    'data-testid': 'timeline-svg',
  }, ...grid, ...rows));
}
