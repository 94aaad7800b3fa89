// Entry point: the app shell (header, navigation, notifications) and routing.

import { clearSession, getEmail, getToken, onUnauthorized } from './api.js';
import { renderLogin } from './auth.js';
import { renderBuilder } from './builder.js';
import { clear, focusHeading, h, setText } from './dom.js';
import { renderHistory } from './history.js';
import { notificationPermission, requestNotifications } from './notify.js';
import { match, navigate, startRouter } from './router.js';
import { renderUsage } from './usage.js';
import { renderViewer } from './viewer.js';

const PAGES = {
  login: renderLogin,
  new: renderBuilder,
  tasks: renderHistory,
  task: renderViewer,
  usage: renderUsage,
};

const main = document.getElementById('main');
const nav = document.getElementById('site-nav');
const userArea = document.getElementById('site-user');
const userEl = document.getElementById('user-email');
const signOut = document.getElementById('sign-out');
const notifyButton = document.getElementById('notify-button');

let cleanup = null;
let notice = null;
let firstRender = true;

function refreshShell(routeName) {
  const signedIn = Boolean(getToken());
  nav.hidden = !signedIn;
  userArea.hidden = !signedIn;
  for (const link of nav.querySelectorAll('a[data-route]')) {
    const active = link.dataset.route === routeName || (routeName === 'task' && link.dataset.route === 'tasks');
    if (active) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  setText(userEl, signedIn ? getEmail() || '' : '');
  refreshNotifyButton();
}

function refreshNotifyButton() {
  const permission = notificationPermission();
  notifyButton.hidden = permission === 'unsupported' || permission === 'denied' || !getToken();
  notifyButton.disabled = permission === 'granted';
  const long = permission === 'granted' ? 'Notifications on' : 'Enable notifications';
  const short = permission === 'granted' ? 'Notifying' : 'Notify me';
  notifyButton.replaceChildren(h('span', { class: 'label-long' }, long), h('span', { class: 'label-short', 'aria-hidden': 'true' }, short));
  notifyButton.setAttribute('aria-label', long);
}

function render() {
  if (cleanup) { try { cleanup(); } catch (err) { console.error(err); } }
  cleanup = null;
  const { name, params } = match(window.location.pathname);
  const signedIn = Boolean(getToken());

  if (name === 'root' || name === 'not_found') {
    navigate(signedIn ? '/new' : '/login', { replace: true });
    return;
  }
  if (name !== 'login' && !signedIn) {
    const next = window.location.pathname + window.location.search;
    navigate(`/login?next=${encodeURIComponent(next)}`, { replace: true });
    return;
  }
  if (name === 'login' && signedIn) {
    navigate('/new', { replace: true });
    return;
  }

  refreshShell(name);
  clear(main);
  const ctx = {
    notice,
    rerender: render,
    onSignedIn: () => refreshShell(name),
  };
  notice = null;
  cleanup = PAGES[name](main, params, ctx) || null;
  if (!firstRender) {
    window.scrollTo(0, 0);
    focusHeading(main);
  }
  firstRender = false;
}

onUnauthorized(() => {
  clearSession();
  notice = 'Your session has ended. Please sign in again.';
  const next = window.location.pathname + window.location.search;
  navigate(`/login?next=${encodeURIComponent(next)}`, { replace: true });
});

signOut.addEventListener('click', () => {
  clearSession();
  notice = 'You are signed out.';
  navigate('/login');
});

notifyButton.addEventListener('click', async () => {
  await requestNotifications();
  refreshNotifyButton();
});

startRouter(render);
