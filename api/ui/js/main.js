// Entry point: the app shell (header, navigation, account, notifications) and routing.
//
// Whether the page is signed in is the server's to say: the session is an HttpOnly
// cookie this script cannot read. GET /api/auth/session is asked once before the first
// route, then the answer is kept in memory (api.js) until sign-out or a 401.

import { api, currentSession, forgetSession, isSignedIn, loadSession, onUnauthorized } from './api.js';
import { createAccountDialog } from './account.js';
import { renderLogin } from './auth.js';
import { renderBuilder } from './builder.js';
import { clear, focusHeading, h, setText } from './dom.js';
import { sentence } from './format.js';
import { renderHistory } from './history.js';
import { clearNotice, notificationPermission, requestNotifications, showNotice } from './notify.js';
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
const accountButton = document.getElementById('account-button');
const notifyButton = document.getElementById('notify-button');
const account = createAccountDialog();

let cleanup = null;
let notice = null;
let firstRender = true;

function refreshShell(routeName) {
  const signedIn = isSignedIn();
  nav.hidden = !signedIn;
  userArea.hidden = !signedIn;
  for (const link of nav.querySelectorAll('a[data-route]')) {
    const active = link.dataset.route === routeName || (routeName === 'task' && link.dataset.route === 'tasks');
    if (active) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  setText(userEl, signedIn ? currentSession().email || '' : '');
  refreshNotifyButton();
}

function refreshNotifyButton() {
  const permission = notificationPermission();
  notifyButton.hidden = permission === 'unsupported' || permission === 'denied' || !isSignedIn();
  notifyButton.disabled = permission === 'granted';
  const long = permission === 'granted' ? 'Notifications on' : 'Enable notifications';
  const short = permission === 'granted' ? 'Notifying' : 'Notify me';
  notifyButton.replaceChildren(h('span', { class: 'label-long' }, long), h('span', { class: 'label-short', 'aria-hidden': 'true' }, short));
  notifyButton.setAttribute('aria-label', long);
}

function render() {
  if (cleanup) { try { cleanup(); } catch (err) { console.error(err); } }
  cleanup = null;
  account.close();
  clearNotice();
  const { name, params } = match(window.location.pathname);
  const signedIn = isSignedIn();

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
  forgetSession();
  notice = 'Your session has ended. Please sign in again.';
  const next = window.location.pathname + window.location.search;
  navigate(`/login?next=${encodeURIComponent(next)}`, { replace: true });
});

signOut.addEventListener('click', async () => {
  if (signOut.disabled) return;
  signOut.disabled = true;
  try {
    // The server ends the session and clears its cookies: until it answers, the
    // cookie still signs in, so the page does not say "signed out" before that.
    await api.logout();
  } catch (err) {
    if (err.status !== 401) { // 401: it had ended already, which is what was asked
      showNotice(`Could not sign out: ${sentence(err.message)}`, { tone: 'error' });
      return;
    }
  } finally {
    signOut.disabled = false;
  }
  forgetSession();
  notice = 'You are signed out.';
  navigate('/login');
});

accountButton.addEventListener('click', (e) => account.open(e.currentTarget));

notifyButton.addEventListener('click', async () => {
  await requestNotifications();
  refreshNotifyButton();
});

/** Asks the server whether the cookie signs this page in, then starts routing. */
async function start() {
  try {
    await loadSession();
  } catch (err) {
    // Not a 401: the server did not answer. Signed in or not is unknown, so neither
    // the login page nor the app would be right: say so and offer to ask again.
    const retry = h('button', { type: 'button', class: 'btn btn-primary', 'data-testid': 'start-retry', onclick: () => {
      retry.disabled = true;
      start();
    } }, 'Try again');
    clear(main);
    main.append(h('section', { class: 'start-error' },
      h('h1', {}, 'Could not reach Troupe'),
      h('div', { class: 'form-error', role: 'alert', 'data-testid': 'start-error' }, sentence(err.message)),
      retry));
    document.title = 'Troupe';
    return;
  }
  startRouter(render);
}

start();
