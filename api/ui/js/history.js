// Task history: the user's tasks, newest first, in pages of 20.

import { api } from './api.js';
import { h, setText } from './dom.js';
import { TASK_STATUS_LABEL, formatDate, formatRelative, formatUsageShort, usageMarksNote } from './format.js';

const PAGE_SIZE = 20;

export function renderHistory(root, _params, ctx) {
  const ac = new AbortController();
  document.title = 'Your tasks · Troupe';
  let cursor = null;
  let loading = false;
  let count = 0;

  const heading = h('h1', { id: 'history-heading' }, 'Your tasks');
  const list = h('ol', { class: 'history-list', 'aria-labelledby': 'history-heading', 'data-testid': 'history-list' });
  const status = h('p', { class: 'loading', role: 'status', 'aria-live': 'polite' });
  const more = h('button', { type: 'button', class: 'btn', hidden: true, 'data-testid': 'history-load-more', onclick: () => load() }, 'Load more');
  const empty = h('div', { class: 'empty', hidden: true },
    h('p', {}, 'No tasks yet.'),
    h('a', { class: 'btn btn-primary', href: '/new' }, 'Create your first task'));

  root.append(h('section', { class: 'history-page', 'aria-labelledby': 'history-heading' },
    h('div', { class: 'page-head' }, heading, h('a', { class: 'btn btn-primary', href: '/new' }, 'New task')),
    list, empty, h('div', { class: 'history-more' }, more, status)));

  async function load() {
    if (loading) return;
    loading = true;
    more.disabled = true;
    setText(status, count ? 'Loading more tasks…' : 'Loading your tasks…');
    try {
      const page = await api.listTasks({ limit: PAGE_SIZE, before: cursor || undefined }, { signal: ac.signal });
      const tasks = page.tasks || [];
      let firstNew = null;
      for (const task of tasks) {
        const item = renderItem(task);
        firstNew = firstNew || item;
        list.append(item);
      }
      count += tasks.length;
      cursor = page.nextCursor || null;
      more.hidden = !cursor;
      empty.hidden = count > 0;
      setText(status, count ? (cursor ? `${count} tasks shown.` : (count === 1 ? 'Your only task is shown.' : `All ${count} tasks shown.`)) : '');
      // Keep keyboard users in place: focus the first task of the new page.
      if (firstNew && count > tasks.length) firstNew.querySelector('a')?.focus();
    } catch (err) {
      if (err.name === 'AbortError') return;
      setText(status, `Could not load tasks: ${err.message}`);
      more.hidden = false;
      setText(more, count ? 'Load more' : 'Try again');
    } finally {
      loading = false;
      more.disabled = false;
    }
  }

  load();
  void ctx;
  return () => ac.abort();
}

function renderItem(task) {
  const agents = task.selectedAgents || [];
  const usage = formatUsageShort(task.usage);
  const note = usageMarksNote(task.usage);
  return h('li', { class: 'history-item', 'data-status': task.status },
    h('a', { href: `/tasks/${encodeURIComponent(task.taskId)}`, class: 'history-link', 'data-testid': `history-item-${task.taskId}` },
      h('span', { class: 'history-main' },
        h('span', { class: 'history-title' }, task.title || 'Untitled task'),
        h('span', { class: 'history-agents' }, agents.join(' · '))),
      h('span', { class: 'history-side' },
        h('span', { class: `status-badge`, 'data-status': task.status }, TASK_STATUS_LABEL[task.status] || task.status),
        h('span', { class: 'history-meta' },
          task.executionMode === 'parallel' ? 'Parallel' : 'Sequential',
          ' · ',
          task.provider === 'simulated' ? 'Simulated' : task.provider),
        usage ? h('span', { class: 'history-usage', 'data-testid': `history-usage-${task.taskId}`, title: note || null },
          h('span', { 'data-testid': `history-usage-figures-${task.taskId}` }, usage),
          note ? h('span', { class: 'visually-hidden' }, ` (${note})`) : null) : null,
        h('time', { datetime: task.createdAt, title: new Date(task.createdAt).toLocaleString() },
          `${formatRelative(task.createdAt)} · ${formatDate(task.createdAt)}`))));
}
