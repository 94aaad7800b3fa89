// Desktop notifications: only after the user asks for them with a button.

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
