// Execution viewer: one card per agent, updated live from the task's event stream,
// with the controls of the task (cancel, pause, resume, retry, delete) and of each agent.
//
// On open: GET /api/tasks/{id} (the projection of the log up to lastSeq), then an
// EventSource on streamUrl with ?after=<lastSeq>. Events with seq <= lastSeq are
// ignored, so nothing is doubled after a reconnect or a reload. A finished task
// needs no stream, until Retry makes it live again: then the viewer follows it
// anew from its lastSeq.

import { ActionRunner } from './actions.js';
import { api } from './api.js';
import { submittedStreams } from './builder.js';
import { confirmDialog, createDialog, h, setText, uid } from './dom.js';
import {
  AGENT_STATUS_LABEL, QUEUE_EXPLANATION, TASK_STATUS_LABEL, formatDate, formatDuration, formatQueuePosition, formatUsage, plural, sentence,
} from './format.js';
import { highlight, renderMarkdown } from './markdown.js';
import { notifyTaskFinished, showNotice } from './notify.js';
import { navigate } from './router.js';
import {
  applyEvent, availableActions, displayStatus, fromView, isTerminal, progressFromLog, updateQueuePosition, waitingPosition,
} from './state.js';
import { TaskStream } from './sse.js';
import { TIMELINE_STATE_LABEL, TIMELINE_TYPES, deriveTimeline, eventsFromView, renderTimeline, timelineEvent } from './timeline.js';

const CONNECTION_LABEL = {
  connecting: 'connecting…',
  live: 'live',
  reconnecting: 'reconnecting…',
  closed: 'finished',
  replay: 'finished',
};
// How often a task waiting behind its owner's other tasks reads its place again.
const QUEUE_POLL_MS = 4000;

export function renderViewer(root, { id }, ctx) {
  const ac = new AbortController();
  const cleanups = [];
  let disposed = false;
  document.title = 'Task · Troupe';

  const heading = h('h1', {}, 'Loading task…');
  const page = h('section', { class: 'viewer-page', 'aria-labelledby': 'viewer-heading' }, heading);
  heading.id = 'viewer-heading';
  root.append(page);

  (async () => {
    let view;
    try {
      view = await api.getTask(id, { signal: ac.signal });
    } catch (err) {
      if (err.name === 'AbortError' || disposed) return;
      setText(heading, err.code === 'task_not_found' ? 'Task not found' : 'Could not load the task');
      page.append(h('div', { class: 'form-error', role: 'alert' },
        err.code === 'task_not_found' ? 'This task does not exist, or it belongs to another account.' : err.message),
      h('p', {}, h('a', { href: '/tasks' }, 'Back to your tasks'),
        err.code === 'task_not_found' ? null : [' · ', h('button', { type: 'button', class: 'btn-link', onclick: () => ctx.rerender() }, 'Try again')]));
      return;
    }
    if (disposed) return;
    const viewer = mountViewer(page, heading, view);
    cleanups.push(viewer.dispose);
  })();

  return () => {
    disposed = true;
    ac.abort();
    for (const fn of cleanups) fn();
  };
}

function mountViewer(page, heading, view) {
  const state = fromView(view);
  const streamUrl = submittedStreams.get(state.taskId) || view.streamUrl;
  submittedStreams.delete(state.taskId);
  let connection = isTerminal(state) ? 'replay' : 'connecting';
  let clockSkew = null; // ms the client clock is ahead of the server's (estimated from live events)
  let stream = null;
  let followedLive = false; // a notification only for a task that ended while we watched
  let disposed = false;
  const logReader = new AbortController();
  const leaving = new AbortController(); // aborted when the page goes: closes a pending confirmation
  // After a Retry, until its task_retried arrives: the log still ends with a terminal
  // event, and the stream must not take that for the end.
  let retryPendingSince = 0;
  // Agents whose cancel was accepted (202) and whose agent_cancelled has not come:
  // role → attempt. UI only; the server's view has no per-agent request flag.
  const cancellingAgents = new Map();
  const actions = new ActionRunner(() => { controlsDirty = true; schedule(); });

  // ---- header ----------------------------------------------------------------
  setText(heading, state.title || 'Untitled task');
  const statusBadge = h('span', { class: 'status-badge', 'data-testid': 'task-status' });
  const elapsed = h('span', { class: 'elapsed', 'data-testid': 'task-elapsed' });
  const connectionEl = h('span', { class: 'connection', 'data-testid': 'connection-status', 'aria-live': 'polite' });
  const progressText = h('span', { class: 'progress-text', 'data-testid': 'task-progress' });
  const usageText = h('span', { class: 'usage-text', 'data-testid': 'task-usage' });
  const usageSim = simulatedBadge('task-usage-simulated');
  const announcer = h('p', { class: 'visually-hidden', 'aria-live': 'polite', 'data-testid': 'announcer' });
  statusBadge.setAttribute('tabindex', '-1'); // where focus goes when the pressed button goes away

  const meta = h('p', { class: 'task-meta' },
    h('span', {}, state.executionMode === 'parallel' ? 'Parallel' : 'Sequential'),
    ' · ',
    providerLabel(state),
    state.model ? [' · ', h('code', {}, state.model)] : null,
    state.createdAt ? [' · ', h('time', { datetime: state.createdAt }, `Started ${formatDate(state.createdAt)}`)] : null);

  const statusBar = h('div', { class: 'status-bar' },
    h('div', { class: 'status-item' }, h('span', { class: 'status-key' }, 'Status'), statusBadge),
    h('div', { class: 'status-item' }, h('span', { class: 'status-key' }, 'Elapsed'), elapsed),
    h('div', { class: 'status-item' }, h('span', { class: 'status-key' }, 'Agents'), progressText),
    h('div', { class: 'status-item' }, h('span', { class: 'status-key' }, 'Usage'), h('span', { class: 'usage-line' }, usageText, usageSim)),
    h('div', { class: 'status-item' }, h('span', { class: 'status-key' }, 'Connection'), connectionEl));

  const description = state.description
    ? h('details', { class: 'task-description' },
      h('summary', {}, 'Task description'),
      h('div', { class: 'md' }, ...htmlFragment(renderMarkdown(state.description, { headingOffset: 1 }))))
    : null;

  const summary = h('section', { class: 'summary', hidden: true, 'aria-labelledby': 'summary-heading', 'data-testid': 'task-summary' });

  // ---- task controls -------------------------------------------------------------
  const pauseButton = h('button', { type: 'button', class: 'btn', 'data-testid': 'task-pause', onclick: (e) => pauseTask(e.currentTarget) }, 'Pause');
  const resumeButton = h('button', { type: 'button', class: 'btn', 'data-testid': 'task-resume', onclick: (e) => resumeTask(e.currentTarget) }, 'Resume');
  const cancelButton = h('button', { type: 'button', class: 'btn btn-danger', 'data-testid': 'task-cancel', onclick: (e) => cancelTask(e.currentTarget) }, 'Cancel task');
  const retryButton = h('button', {
    type: 'button', class: 'btn btn-primary', 'data-testid': 'task-retry', onclick: (e) => retryTask(null, e.currentTarget),
    title: 'Run the failed and cancelled agents again',
  }, 'Retry');
  // Always offered: a finished task is deleted at once, a live one is stopped first.
  const deleteButton = h('button', {
    type: 'button', class: 'btn btn-danger task-delete', 'data-testid': 'task-delete', 'aria-haspopup': 'dialog',
    onclick: (e) => deleteTask(e.currentTarget), title: 'Delete this task, its log and its results',
  }, 'Delete');
  const actionError = h('p', { class: 'action-error', role: 'alert', 'data-testid': 'task-action-error', hidden: true });
  const pausedNote = h('p', { class: 'task-note', 'data-testid': 'task-paused-note', hidden: true });
  // Why it waits is said in the page rather than in a tooltip, so that touch, keyboard
  // and screen reader users read it too.
  const queueText = h('span', { 'data-testid': 'task-queue-position' });
  const queueNote = h('p', { class: 'task-note task-queue-note', 'data-testid': 'task-queue-note', hidden: true },
    queueText, ' ', h('span', { class: 'task-note-detail' }, QUEUE_EXPLANATION));
  const controls = h('div', { class: 'task-controls', role: 'group', 'aria-label': 'Task actions' },
    queueNote, pausedNote, h('div', { class: 'task-controls-buttons' }, pauseButton, resumeButton, cancelButton, retryButton, deleteButton), actionError);

  // ---- cards -------------------------------------------------------------------
  const grid = h('ol', { class: 'agent-grid-view', 'aria-label': 'Agents' });
  const cards = new Map();
  for (const agent of state.agents) addCard(agent);

  function addCard(agent) {
    const card = createCard(agent, { openArtifacts, cancelAgent, retryAgent: (role, opener) => retryTask(role, opener) });
    cards.set(agent.role, card);
    grid.append(card.root);
    return card;
  }

  // ---- dialogs -------------------------------------------------------------------
  const artifactsDialog = createDialog('artifacts-dialog');
  const resultsDialog = createDialog('results-dialog');

  // ---- timeline ------------------------------------------------------------------
  // Drawn from the log's events: first those a projected view implies (its agents'
  // current attempts), then the log itself once read, and the live events after it.
  const timelineBox = h('div', { class: 'timeline-box' });
  const timeline = h('section', { class: 'timeline', 'aria-labelledby': 'timeline-heading', 'data-testid': 'timeline' },
    h('div', { class: 'timeline-head' },
      h('h2', { id: 'timeline-heading' }, 'Timeline'),
      h('ul', { class: 'timeline-legend', 'aria-label': 'Legend' },
        ...['queued', 'running', 'done', 'failed', 'cancelled'].map((kind) => h('li', {},
          h('span', { class: `swatch tl-${kind}`, 'aria-hidden': 'true' }), TIMELINE_STATE_LABEL[kind])))),
    timelineBox);
  const timelineFromView = eventsFromView(view);
  let timelineFromLog = null;
  const timelineLive = [];
  let timelineWidth = 0;

  function drawTimeline() {
    const events = (timelineFromLog || timelineFromView).concat(timelineLive);
    const derived = deriveTimeline(events, state.agents.map((a) => a.role));
    timelineWidth = Math.floor(timelineBox.clientWidth || timelineWidth || 800);
    const names = Object.fromEntries(state.agents.map((a) => [a.role, a.name]));
    renderTimeline(timelineBox, derived, { now: serverNow(), width: timelineWidth, names });
    timeline.hidden = !derived.lanes.length;
    timeline.dataset.lanes = String(derived.lanes.length);
    timeline.dataset.source = timelineFromLog ? 'log' : 'view';
  }

  const resize = typeof ResizeObserver === 'function' ? new ResizeObserver(() => {
    if (Math.abs(Math.floor(timelineBox.clientWidth) - timelineWidth) >= 4) drawTimeline();
  }) : null;
  resize?.observe(timelineBox);

  page.append(...[meta, statusBar, controls, announcer, description, summary, timeline, grid, artifactsDialog.root, resultsDialog.root].filter(Boolean));

  function openArtifacts(role, opener) {
    const agent = state.agents.find((a) => a.role === role);
    if (!agent) return;
    const body = h('div', { class: 'artifact-list' });
    if (!agent.artifacts.length) body.append(h('p', {}, 'No files.'));
    const nav = h('ul', { class: 'artifact-index' });
    agent.artifacts.forEach((art, i) => {
      const anchor = uid('artifact');
      nav.append(h('li', {}, h('a', { href: `#${anchor}`, onclick: (e) => { e.preventDefault(); document.getElementById(anchor)?.scrollIntoView({ block: 'start' }); document.getElementById(anchor)?.focus(); } }, art.filename)));
      const code = h('code', {});
      code.innerHTML = highlight(art.content || '', art.language || ''); // highlight() escapes
      const copy = h('button', { type: 'button', class: 'btn btn-small', onclick: async () => {
        try { await navigator.clipboard.writeText(art.content || ''); setText(copy, 'Copied'); } catch { setText(copy, 'Copy failed'); }
        setTimeout(() => setText(copy, 'Copy'), 1500);
      } }, 'Copy');
      const download = h('a', { class: 'btn btn-small', href: '#', onclick: (e) => {
        e.preventDefault();
        const url = URL.createObjectURL(new Blob([art.content || ''], { type: 'text/plain' }));
        const a = h('a', { href: url, download: art.filename.split('/').pop() || `file-${i + 1}` });
        document.body.append(a); a.click(); a.remove();
        setTimeout(() => URL.revokeObjectURL(url), 1000);
      } }, 'Download');
      body.append(h('section', { class: 'artifact', id: anchor, tabindex: '-1', 'data-testid': `artifact-${art.filename}` },
        h('header', { class: 'artifact-head' },
          h('h3', {}, h('code', {}, art.filename)),
          art.language ? h('span', { class: 'badge' }, art.language) : null,
          h('span', { class: 'artifact-actions' }, copy, download)),
        h('pre', { tabindex: '0' }, code)));
    });
    artifactsDialog.open(`Artifacts of ${agent.name}`, [agent.artifacts.length > 1 ? nav : null, body], opener);
  }

  function openResults(opener) {
    const body = h('div', { class: 'results' });
    if (state.status === 'failed' && state.error) {
      body.append(h('div', { class: 'form-error' }, state.error));
    }
    if (state.status === 'cancelled') body.append(h('p', { class: 'muted' }, 'The task was cancelled: a cancelled agent shows what it had written.'));
    for (const agent of state.agents) {
      const section = h('section', { class: 'result', 'data-status': agent.status },
        h('h3', {}, agent.name, ' ', h('span', { class: `badge badge-${agent.status}` }, AGENT_STATUS_LABEL[agent.status] || agent.status),
          agent.executionTime != null ? h('span', { class: 'result-time' }, formatDuration(agent.executionTime)) : null));
      if (agent.output) section.append(h('div', { class: 'md' }, ...htmlFragment(renderMarkdown(agent.output, { headingOffset: 3 }))));
      else if (agent.status === 'pending') section.append(h('p', { class: 'muted' }, 'Did not run.'));
      if (agent.error) section.append(h('p', { class: 'agent-error' }, agent.error));
      body.append(section);
    }
    resultsDialog.open(`Results: ${state.title}`, [body], opener);
  }

  // ---- rendering -------------------------------------------------------------------
  const dirty = new Set();
  let headerDirty = true;
  let timelineDirty = true;
  let controlsDirty = true;
  let frame = 0;

  function schedule() {
    if (frame) return;
    frame = requestAnimationFrame(flush);
  }

  function flush() {
    frame = 0;
    if (timelineDirty) drawTimeline();
    timelineDirty = false;
    // What may be asked for changes with the task's status, not with every token:
    // every card is refreshed only when it did.
    const allowed = availableActions(state);
    if (controlsDirty) {
      for (const agent of state.agents) dirty.add(agent.role);
      renderControls(allowed);
    }
    for (const role of dirty) {
      const agent = state.agents.find((a) => a.role === role);
      if (!agent) continue;
      (cards.get(role) || addCard(agent)).update(agent, serverNow(), cardControls(agent, allowed));
    }
    dirty.clear();
    if (headerDirty) renderHeader();
    headerDirty = false;
    controlsDirty = false;
  }

  function cardControls(agent, allowed) {
    const scope = `agent:${agent.role}`;
    const cancelling = cancellingAgents.get(agent.role) === agent.attempt && agent.status === 'running';
    return {
      canCancel: allowed.cancelAgents.includes(agent.role) && !cancelling,
      canRetry: allowed.retryAgents.includes(agent.role),
      // A task-wide request covers the cards too (one retry at a time).
      busy: actions.isBusy(scope) || actions.isBusy('task'),
      cancelling,
      error: actions.error(scope),
    };
  }

  function renderControls(allowed) {
    const busy = actions.isBusy('task') || [...cards.keys()].some((role) => actions.isBusy(`agent:${role}`));
    const show = { pause: allowed.pause, resume: allowed.resume, cancel: allowed.cancel, retry: allowed.retry, delete: true };
    for (const [key, button] of [['pause', pauseButton], ['resume', resumeButton], ['cancel', cancelButton], ['retry', retryButton], ['delete', deleteButton]]) {
      button.hidden = !show[key];
      button.disabled = busy;
      if (actions.busy.get('task') === key) button.setAttribute('aria-busy', 'true');
      else button.removeAttribute('aria-busy');
    }
    const message = actions.error('task');
    setText(actionError, message);
    actionError.hidden = !message;
    // Paused holds no worker: nothing moves until Resume, so say so (and why).
    let note = '';
    if (state.status === 'paused') note = state.reason ? `${sentence(state.reason)} Resume to go on.` : 'No agent starts until the task is resumed.';
    setText(pausedNote, note);
    pausedNote.hidden = !note;
    controls.hidden = !message && !note && !Object.values(show).some(Boolean);
  }

  function serverNow() {
    return Date.now() - (clockSkew ?? 0);
  }

  function renderHeader() {
    const terminal = isTerminal(state);
    const shown = displayStatus(state);
    const label = shown.label || TASK_STATUS_LABEL[state.status] || state.status;
    setText(statusBadge, label);
    statusBadge.dataset.status = state.status; // the server's status; a request under way is data-request
    if (shown.request) statusBadge.dataset.request = shown.request;
    else delete statusBadge.dataset.request;
    const count = (status) => state.agents.filter((a) => a.status === status).length;
    const done = count('completed');
    const parts = [[count('error'), 'failed'], [count('cancelled'), 'cancelled'], [count('running'), 'running']]
      .filter(([n]) => n).map(([n, what]) => `, ${n} ${what}`);
    setText(progressText, `${done} of ${state.agents.length} completed${parts.join('')}`);
    setText(usageText, formatUsage(state.usage) || '—');
    usageSim.hidden = !(state.usage.simulatedAttempts > 0);
    tickElapsed();
    renderQueueNote();
    setText(connectionEl, CONNECTION_LABEL[connection] || connection);
    connectionEl.dataset.state = connection;
    document.title = `${terminal ? '' : '● '}${label}: ${state.title || 'Task'} · Troupe`;
    if (terminal) renderSummary();
    else summary.hidden = true; // retried: live again
  }

  /** While the task waits behind the user's other tasks: its place, and why it waits. */
  function renderQueueNote() {
    const position = waitingPosition(state);
    setText(queueText, formatQueuePosition(position));
    queueNote.hidden = position === null;
    if (position === null) delete queueNote.dataset.position;
    else queueNote.dataset.position = String(position);
  }

  function tickElapsed() {
    if (state.totalExecutionTime != null && isTerminal(state)) {
      setText(elapsed, formatDuration(state.totalExecutionTime));
      elapsed.dataset.ms = String(state.totalExecutionTime);
    } else if (state.createdAt) {
      const ms = Math.max(0, serverNow() - Date.parse(state.createdAt));
      setText(elapsed, formatDuration(Math.floor(ms / 100) * 100));
    }
  }

  function renderSummary() {
    const done = state.agents.filter((a) => a.status === 'completed').length;
    const names = (status) => state.agents.filter((a) => a.status === status).map((a) => a.name).join(', ');
    const failed = names('error');
    const cancelled = names('cancelled');
    const took = formatDuration(state.totalExecutionTime);
    const of = `${done} of ${plural(state.agents.length, 'agent')} completed${failed ? `, ${failed} failed` : ''}${cancelled ? `, ${cancelled} cancelled` : ''}`;
    const text = {
      completed: `All done in ${took}: ${plural(done, 'agent')} completed.`,
      failed: `Stopped after ${took}: ${of}.`,
      cancelled: `Cancelled after ${took}: ${of}.`,
    }[state.status];
    const viewResults = h('button', { type: 'button', class: 'btn btn-primary', 'data-testid': 'view-results', onclick: (e) => openResults(e.currentTarget) }, 'View results');
    summary.replaceChildren(...[
      h('h2', { id: 'summary-heading' }, { completed: 'Task completed', failed: 'Task failed', cancelled: 'Task cancelled' }[state.status]),
      h('p', { 'data-testid': 'summary-text' }, text),
      state.status === 'failed' && state.error ? h('p', { class: 'agent-error', 'data-testid': 'task-error' }, state.error) : null,
      state.status === 'cancelled' && state.reason ? h('p', { 'data-testid': 'summary-reason' }, sentence(state.reason)) : null,
      h('div', { class: 'summary-actions' }, viewResults, h('a', { class: 'btn', href: '/new' }, 'New task')),
    ].filter(Boolean));
    summary.dataset.status = state.status;
    summary.hidden = false;
  }

  // ---- actions -------------------------------------------------------------------
  // Each request answers at once; its effect arrives as events on the stream. The
  // 202 answers (a running task or agent acts shortly) set the request flag the
  // server's view also has, so a reload shows the same "Cancelling…"/"Pausing…".

  async function perform(scope, name, opener, request, done) {
    const hadFocus = opener && document.activeElement === opener;
    await actions.run(scope, name, request, done);
    if (!hadFocus || disposed) return;
    // The pressed button may be gone after the next paint (Pause becomes Resume,
    // Cancel disappears): keep the keyboard user on the task rather than on <body>.
    await new Promise((resolve) => requestAnimationFrame(resolve));
    if (!disposed && (opener.hidden || !opener.isConnected) && (document.activeElement === document.body || document.activeElement === opener)) {
      statusBadge.focus();
    }
  }

  function cancelTask(opener) {
    perform('task', 'cancel', opener, () => api.cancelTask(state.taskId), (res) => {
      if (res && res.cancelRequested) state.cancelRequested = true;
      headerDirty = true; controlsDirty = true;
      if (res && res.status === 'cancelled') return () => state.status === 'cancelled';
      return null;
    });
  }

  function pauseTask(opener) {
    perform('task', 'pause', opener, () => api.pauseTask(state.taskId), (res) => {
      if (res && res.pauseRequested) state.pauseRequested = true;
      headerDirty = true; controlsDirty = true;
      if (res && res.status === 'paused') return () => state.status === 'paused' || isTerminal(state);
      return null;
    });
  }

  function resumeTask(opener) {
    const wasPaused = state.status === 'paused';
    perform('task', 'resume', opener, () => api.resumeTask(state.taskId), () => {
      // Resuming a pause that has not happened yet withdraws it (no event says so).
      state.pauseRequested = false;
      headerDirty = true; controlsDirty = true;
      return wasPaused ? () => state.status !== 'paused' : null;
    });
  }

  function cancelAgent(role, opener) {
    const agent = state.agents.find((a) => a.role === role);
    if (!agent) return;
    const attempt = agent.attempt;
    perform(`agent:${role}`, 'cancel', opener, () => api.cancelAgent(state.taskId, role), () => {
      cancellingAgents.set(role, attempt);
      dirty.add(role); headerDirty = true;
      return null;
    });
  }

  /**
   * Deletes the task after a confirmation, then goes to the history: at once when it
   * had ended (204), or hidden at once and deleted once its worker has stopped it (202).
   */
  async function deleteTask(opener) {
    if (actions.isBusy('task')) return;
    const live = !isTerminal(state);
    const confirmed = await confirmDialog({
      title: 'Delete this task?',
      text: live
        ? 'It is stopped first: its agents do not finish. Its log, outputs and files are deleted, and it leaves your history. This cannot be undone.'
        : 'Its log, outputs and files are deleted, and it leaves your history. This cannot be undone.',
      confirmLabel: live ? 'Stop and delete' : 'Delete task',
      cancelLabel: 'Keep it',
      opener,
      signal: leaving.signal,
    });
    if (!confirmed || disposed) return;
    let answer = null;
    const ok = await actions.run('task', 'delete', () => api.deleteTask(state.taskId), (res) => { answer = res; return null; });
    if (!ok || disposed) return;
    // Gone: nothing to follow, nothing to warn about when leaving.
    if (stream) stream.stop('closed');
    window.removeEventListener('beforeunload', beforeUnload);
    navigate('/tasks');
    showNotice(answer && answer.deleteRequested ? 'Task is being stopped and deleted' : 'Task deleted');
  }

  /** Retries one agent (`role`), or every failed and cancelled one (null). */
  function retryTask(role, opener) {
    const scope = role ? `agent:${role}` : 'task';
    perform(scope, 'retry', opener, () => api.retryTask(state.taskId, role ? [role] : undefined), (res) => {
      retryPendingSince = Date.now();
      follow((res && res.streamUrl) || null);
      return () => !isTerminal(state);
    });
  }

  // ---- events ------------------------------------------------------------------
  function onEvent(ev) {
    const wasStatus = state.status;
    const result = applyEvent(state, ev);
    if (!result) return; // already seen: no doubles
    if (TIMELINE_TYPES.has(ev.type)) {
      timelineLive.push(timelineEvent(ev));
      timelineDirty = true;
    }
    if (ev.at && connection === 'live') {
      const skew = Date.now() - Date.parse(ev.at);
      if (!Number.isNaN(skew)) clockSkew = clockSkew === null ? skew : Math.min(clockSkew, skew);
    }
    for (const role of result.roles) dirty.add(role);
    headerDirty = true;
    if (state.status !== wasStatus || !['agent_token', 'agent_progress'].includes(ev.type)) controlsDirty = true;
    if (ev.type === 'task_retried') retryPendingSince = 0;
    if (waitingPosition(state) === null) stopQueueWatch(); // started, paused or ended
    const agent = ev.agentRole ? state.agents.find((a) => a.role === ev.agentRole) : null;
    const said = {
      agent_complete: agent && `${agent.name} completed.`,
      agent_error: agent && `${agent.name} failed.`,
      agent_cancelled: agent && `${agent.name} cancelled.`,
      task_paused: 'Task paused.',
      task_unpaused: 'Task resumed.',
      task_retried: `Retrying ${(ev.agents || []).map((r) => state.agents.find((a) => a.role === r)?.name || r).join(', ')}.`,
    }[ev.type];
    if (said) setText(announcer, said);
    if (result.terminal) onTerminal();
    actions.check();
    schedule();
  }

  function onTerminal() {
    window.removeEventListener('beforeunload', beforeUnload);
    setText(announcer, { completed: 'Task completed.', cancelled: 'Task cancelled.' }[state.status] || `Task failed: ${state.error || ''}`);
    if (followedLive) {
      const done = state.agents.filter((a) => a.status === 'completed').length;
      notifyTaskFinished({
        taskId: state.taskId,
        title: state.title,
        status: state.status,
        detail: state.status === 'failed'
          ? state.error || ''
          : `${plural(done, 'agent')} completed in ${formatDuration(state.totalExecutionTime)}.`,
      });
    }
  }

  function onStatus(next) {
    connection = next === 'closed' && isTerminal(state) ? 'closed' : next;
    headerDirty = true;
    schedule();
  }

  function beforeUnload(event) {
    if (isTerminal(state)) return undefined;
    event.preventDefault();
    event.returnValue = 'The task keeps running on the server. Leave the viewer?';
    return event.returnValue;
  }

  // ---- timers ------------------------------------------------------------------
  const timer = setInterval(() => {
    if (document.hidden) return;
    const now = serverNow();
    for (const agent of state.agents) {
      if (agent.status === 'running') cards.get(agent.role)?.tick(agent, now);
    }
    if (!isTerminal(state)) {
      tickElapsed();
      drawTimeline(); // open bars grow with the time
    }
  }, 200);

  // ---- waiting for admission ---------------------------------------------------------
  // A task past its owner's limit of active tasks waits with a place in their line. No
  // event says when it moves up or is handed to a worker, so while it waits the view is
  // read again every few seconds (one read at a time); agent_start, a pause or the end
  // (from the stream) or a view without a place stop it, and so does leaving the page.
  let queueTimer = 0;
  const queueReader = new AbortController();

  function watchQueue() {
    if (disposed || queueTimer || waitingPosition(state) === null) return;
    queueTimer = setTimeout(readQueuePosition, QUEUE_POLL_MS);
  }

  function stopQueueWatch() {
    clearTimeout(queueTimer);
    queueTimer = 0;
  }

  async function readQueuePosition() {
    queueTimer = 0;
    if (disposed || waitingPosition(state) === null) return;
    if (!document.hidden) { // a hidden tab shows nothing: read again when it is seen
      try {
        const fresh = await api.getTask(state.taskId, { signal: queueReader.signal });
        if (disposed) return;
        if (updateQueuePosition(state, fresh)) { headerDirty = true; schedule(); }
      } catch (err) {
        if (disposed || err.name === 'AbortError' || err.code === 'task_not_found') return; // gone
        // Offline or restarting: the last place stays shown until a read works.
      }
    }
    watchQueue();
  }

  // ---- following the stream -----------------------------------------------------
  /** Opens the task's stream after state.lastSeq (at open, and again after a Retry). */
  async function follow(url) {
    if (disposed || (stream && !stream.stopped)) return;
    followedLive = true;
    window.addEventListener('beforeunload', beforeUnload);
    let next = url;
    if (!next) {
      try { next = (await api.getTask(state.taskId)).streamUrl; } catch { next = streamUrl; }
      if (disposed || (stream && !stream.stopped)) return;
    }
    stream = new TaskStream({
      streamUrl: next,
      cursor: () => state.lastSeq,
      onEvent,
      onStatus,
      refresh: async () => {
        const fresh = await api.getTask(state.taskId);
        // Just after a Retry the log may still end with the old terminal event (the
        // server answers 204): that is not the end, keep waiting for task_retried.
        const retrying = retryPendingSince && Date.now() - retryPendingSince < 30_000;
        return { streamUrl: fresh.streamUrl, terminal: isTerminal(fresh) && !retrying, caughtUp: fresh.lastSeq <= state.lastSeq };
      },
    });
    stream.start();
  }

  // ---- start -----------------------------------------------------------------
  for (const agent of state.agents) dirty.add(agent.role);
  flush();

  const onOnline = () => stream && stream.nudge();
  window.addEventListener('online', onOnline);

  if (!isTerminal(state)) follow(streamUrl);
  watchQueue();
  readLog();

  // The projected view has no progress lines and only each agent's current attempt:
  // read the log up to the view's lastSeq (keeping only what is needed of each event)
  // for the timeline, and for the waiting message of running agents that have not
  // written yet.
  async function readLog() {
    const waiting = state.agents.filter((a) => a.status === 'running' && !a.output && !a.progress);
    const attempts = new Map(waiting.map((a) => [a.role, a.attempt]));
    let events;
    try {
      events = await api.taskEvents(state.taskId, view.lastSeq, {
        signal: logReader.signal,
        keep: (ev) => timelineEvent(ev)
          || (ev.agentRole && ev.type !== 'agent_token' ? { seq: ev.seq, type: ev.type, agentRole: ev.agentRole, message: ev.message } : null),
      });
    } catch { return; } // cosmetic: the view's timeline and "Starting…" stay
    if (disposed) return;
    timelineFromLog = events.filter((ev) => TIMELINE_TYPES.has(ev.type));
    timelineDirty = true;
    const progress = progressFromLog(events);
    for (const a of waiting) {
      // Only if nothing newer arrived meanwhile.
      if (a.status === 'running' && a.attempt === attempts.get(a.role) && !a.output && !a.progress && progress.get(a.role)) {
        a.progress = progress.get(a.role);
        dirty.add(a.role);
      }
    }
    schedule();
  }

  return {
    dispose() {
      disposed = true;
      logReader.abort();
      queueReader.abort();
      stopQueueWatch();
      leaving.abort();
      resize?.disconnect();
      actions.dispose();
      if (stream) stream.stop('closed');
      clearInterval(timer);
      if (frame) cancelAnimationFrame(frame);
      window.removeEventListener('beforeunload', beforeUnload);
      window.removeEventListener('online', onOnline);
      artifactsDialog.close();
      resultsDialog.close();
    },
  };
}

/** The small label beside token counts that the simulated provider estimated. */
function simulatedBadge(testid) {
  return h('span', {
    class: 'badge badge-sim badge-tiny', 'data-testid': testid, hidden: true,
    title: 'Estimated by the simulated provider: no model was called',
  }, 'simulated');
}

function providerLabel(state) {
  if (state.provider === 'simulated') {
    return h('span', { class: 'badge badge-sim', title: 'Simulated: no LLM is called' }, 'Simulated — no LLM is called');
  }
  return h('span', {}, state.provider);
}

/** Turns a safe HTML string (from markdown.js) into nodes. */
function htmlFragment(html) {
  const template = document.createElement('template');
  template.innerHTML = html;
  return [template.content];
}

// ---- agent card -------------------------------------------------------------------

function createCard(agent, { openArtifacts, cancelAgent, retryAgent }) {
  const role = agent.role;
  const nameId = uid('agent-name');
  const statusLabel = h('span', { class: 'agent-status', 'data-testid': `agent-status-${role}` });
  const time = h('span', { class: 'agent-time', 'data-testid': `agent-time-${role}` });
  const name = h('h2', { class: 'agent-name', id: nameId }, agent.name);
  const desc = h('p', { class: 'agent-desc' }, agent.description);
  const progress = h('p', { class: 'agent-progress', 'data-testid': `agent-progress-${role}` });
  const output = h('div', {
    class: 'agent-output md', 'data-testid': `agent-output-${role}`, tabindex: '0',
    role: 'region', 'aria-label': `Output of ${agent.name}`,
  });
  const error = h('p', { class: 'agent-error', 'data-testid': `agent-error-${role}`, hidden: true });
  const attempt = h('span', { class: 'agent-attempt', 'data-testid': `agent-attempt-${role}` });
  const usage = h('span', { class: 'agent-usage', 'data-testid': `agent-usage-${role}` });
  const fallback = h('span', { class: 'agent-fallback', 'data-testid': `agent-fallback-${role}`, hidden: true });
  const usageSim = simulatedBadge(`agent-usage-simulated-${role}`);
  const artifacts = h('button', {
    type: 'button', class: 'btn btn-small artifacts-button', 'data-testid': `artifacts-button-${role}`, hidden: true,
    'aria-haspopup': 'dialog', onclick: (e) => openArtifacts(role, e.currentTarget),
  });
  const cancel = h('button', {
    type: 'button', class: 'btn btn-small btn-danger', 'data-testid': `agent-cancel-${role}`, hidden: true,
    onclick: (e) => cancelAgent(role, e.currentTarget),
  }, 'Cancel');
  const retry = h('button', {
    type: 'button', class: 'btn btn-small', 'data-testid': `agent-retry-${role}`, hidden: true,
    onclick: (e) => retryAgent(role, e.currentTarget),
  }, 'Retry');
  const actionError = h('p', { class: 'action-error', role: 'alert', 'data-testid': `agent-action-error-${role}`, hidden: true });
  const root = h('li', { class: 'agent-card', 'data-testid': `agent-card-${role}`, 'data-status': agent.status, 'aria-labelledby': nameId },
    h('header', { class: 'agent-head' },
      h('span', { class: 'status-dot', 'aria-hidden': 'true' }),
      h('div', { class: 'agent-title' }, name, h('code', { class: 'agent-role' }, role)),
      h('div', { class: 'agent-meta' }, statusLabel, time)),
    desc,
    progress,
    output,
    error,
    actionError,
    h('footer', { class: 'agent-foot' }, h('span', { class: 'agent-actions' }, artifacts, cancel, retry), fallback, h('span', { class: 'usage-line' }, usage, usageSim), attempt));

  let renderedOutput = null;

  function setTime(a, now) {
    if (a.status === 'running' && a.startedAt) {
      const ms = Math.max(0, now - Date.parse(a.startedAt));
      setText(time, formatDuration(Math.floor(ms / 100) * 100));
      time.removeAttribute('data-ms');
      time.setAttribute('aria-label', `Running for ${formatDuration(ms)}`);
    } else if (a.executionTime != null) {
      setText(time, formatDuration(a.executionTime));
      time.dataset.ms = String(a.executionTime);
      time.setAttribute('aria-label', `Execution time ${formatDuration(a.executionTime)}`);
    } else {
      setText(time, '');
      time.removeAttribute('data-ms');
      time.removeAttribute('aria-label');
    }
  }

  function update(a, now, ctl) {
    root.dataset.status = a.status;
    setText(name, a.name);
    setText(desc, a.description);
    setText(statusLabel, AGENT_STATUS_LABEL[a.status] || a.status);
    setTime(a, now);
    let progressMessage = '';
    if (a.status === 'running') {
      progressMessage = ctl.cancelling ? 'Cancelling…'
        : a.progress || (a.output ? 'Writing…' : a.attempt > 1 ? `Running again (attempt ${a.attempt})…` : 'Starting…');
    }
    setText(progress, progressMessage);
    progress.hidden = !progressMessage;
    if (a.output !== renderedOutput) {
      const nearBottom = output.scrollHeight - output.scrollTop - output.clientHeight < 40;
      output.innerHTML = renderMarkdown(a.output, { headingOffset: 2 }); // renderMarkdown escapes all source text
      if (a.status === 'running' && nearBottom) output.scrollTop = output.scrollHeight;
      renderedOutput = a.output;
    }
    output.hidden = !a.output;
    output.classList.toggle('is-streaming', a.status === 'running');
    output.setAttribute('aria-label', a.status === 'cancelled' ? `Output of ${a.name} (partial: cancelled)` : `Output of ${a.name}`);
    setText(error, a.error || '');
    error.hidden = !a.error;
    setText(attempt, a.attempt > 1 ? `Attempt ${a.attempt}` : '');
    setText(usage, formatUsage(a.usage, a.timeToFirstToken));
    usage.title = a.model ? `Model: ${a.model}` : '';
    setText(fallback, a.fallback ? `via ${a.fallback}` : '');
    fallback.title = a.fallbackReason || '';
    fallback.hidden = !a.fallback;
    usageSim.hidden = !(a.usage.simulatedAttempts > 0);
    cancel.hidden = !ctl.canCancel;
    retry.hidden = !ctl.canRetry;
    cancel.disabled = ctl.busy;
    retry.disabled = ctl.busy;
    cancel.setAttribute('aria-label', `Cancel ${a.name}`);
    retry.setAttribute('aria-label', `Retry ${a.name}`);
    setText(actionError, ctl.error);
    actionError.hidden = !ctl.error;
    artifacts.hidden = !a.hasArtifacts;
    setText(artifacts, a.hasArtifacts ? `Artifacts (${a.artifacts.length || '…'})` : '');
    artifacts.setAttribute('aria-label', `Artifacts of ${a.name}: ${plural(a.artifacts.length, 'file')}`);
  }

  return { root, update, tick: setTime };
}
