// Notices: desktop notifications (only after the user asks for them with a button),
// and the in-page notice line under the header.

import { h } from './dom.js';

export function notificationsSupported() {
  return 'Notification' in window && window.isSecureContext !== false;
}

export function notificationPermission() {
  return notificationsSupported() ? Notification.permission : 'unsupported';
}

export async function requestNotifications() {
  if (!notificationsSupported()) return 'unsupported';
  try {
    return await Notification.requestPermission();
  } catch {
    return Notification.permission;
  }
}

const NOTIFY_TITLE = { completed: 'Task completed', failed: 'Task failed', cancelled: 'Task cancelled' };

/** Notifies that a task ended, when the tab is in the background and the user allowed it. */
export function notifyTaskFinished({ taskId, title, status, detail }) {
  if (!notificationsSupported() || Notification.permission !== 'granted' || !document.hidden) return;
  try {
    const n = new Notification(`${NOTIFY_TITLE[status] || 'Task ended'}: ${title}`, {
      body: detail || '',
      tag: `troupe-task-${taskId}`,
    });
    n.onclick = () => {
      window.focus();
      n.close();
    };
  } catch {
    // Some platforms only allow notifications from a service worker: ignore.
  }
}

// ---- in-page notices ---------------------------------------------------------------
// One line under the header (#site-notice) that says what an action did once the page
// it was done on is gone, e.g. "Task deleted" on the history page the viewer went to.
// The region is in index.html from the start, so that screen readers announce what is
// put in it; main.js clears it at every route change, so show it after navigating.

function noticeRegion() {
  return document.getElementById('site-notice');
}

/** Shows `text` under the header (`tone`: 'info' or 'error') until the next route change or Dismiss. */
export function showNotice(text, { tone = 'info' } = {}) {
  const region = noticeRegion();
  if (!region) return;
  const dismiss = h('button', { type: 'button', class: 'btn-link notice-dismiss', 'data-testid': 'site-notice-dismiss', onclick: () => clearNotice() }, 'Dismiss');
  region.replaceChildren(h('p', { class: `notice notice-${tone}`, 'data-testid': 'site-notice-text', 'data-tone': tone },
    h('span', {}, text), dismiss));
}

export function clearNotice() {
  noticeRegion()?.replaceChildren();
}
