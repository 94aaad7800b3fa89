// The account dialog, opened from the header's Account button: who is signed in, and
// the password change. A change ends every session of the account, this page's too, but
// the answer sets the new session's cookies, so the page stays signed in; elsewhere
// (other tabs' sessions from another sign-in, other devices) the next request is a 401.

import { api, currentSession, loadSession } from './api.js';
import { createDialog, h, setText, uid } from './dom.js';
import { sentence } from './format.js';

// The server's rules for a password (checked there too): 8 to 1024 characters, the
// upper bound in bytes.
const MIN_CHARS = 8;
const MAX_BYTES = 1024;

const FIELD_FOR_CODE = {
  wrong_password: 'current',
  invalid_password: 'next',
};

export function createAccountDialog() {
  const dialog = createDialog('account-dialog');
  dialog.root.classList.add('dialog-narrow');
  document.body.append(dialog.root);
  let form = null;

  /** Opens the dialog with a fresh, empty form; focus goes to the current password. */
  function open(opener) {
    form = passwordForm();
    const session = currentSession();
    const who = h('p', { class: 'account-who' }, 'Signed in as ',
      h('strong', { 'data-testid': 'account-email' }, session ? session.email : ''), '.');
    dialog.open('Your account', [who, form.root], opener, form.first);
  }

  function close() {
    if (form) form.dispose();
    dialog.close();
  }

  dialog.root.addEventListener('close', () => { if (form) form.dispose(); });
  return { open, close };
}

function passwordForm() {
  let busy = false;
  let disposed = false;

  const field = (name, label, autocomplete, hintText) => {
    const id = uid(`password-${name}`);
    const error = h('p', { class: 'field-error', id: `${id}-error`, 'data-testid': `password-${name}-error` });
    const hint = hintText ? h('p', { class: 'hint', id: `${id}-hint` }, hintText) : null;
    const input = h('input', {
      id, name, type: 'password', autocomplete, required: true, maxlength: MAX_BYTES,
      'aria-describedby': [hint && hint.id, error.id].filter(Boolean).join(' '), 'data-testid': `password-${name}`,
    });
    return { input, error, root: h('div', { class: 'field' }, h('label', { for: id }, label), input, hint, error) };
  };
  const current = field('current', 'Current password', 'current-password');
  const next = field('new', 'New password', 'new-password', '8 characters or more. Every other session of this account is signed out.');
  const repeat = field('repeat', 'New password, again', 'new-password');
  const fields = { current, next, repeat };

  const formError = h('div', { class: 'form-error', role: 'alert', 'data-testid': 'password-error', hidden: true });
  const done = h('p', { class: 'notice', role: 'status', 'data-testid': 'password-changed', hidden: true });
  const submit = h('button', { type: 'submit', class: 'btn btn-primary', 'data-testid': 'password-submit' }, 'Change password');

  function clearErrors() {
    for (const f of Object.values(fields)) {
      f.input.removeAttribute('aria-invalid');
      setText(f.error, '');
    }
    formError.hidden = true;
    setText(formError, '');
  }

  function fieldError(f, message) {
    f.input.setAttribute('aria-invalid', 'true');
    setText(f.error, message);
  }

  /** Client-side checks (the server makes them too): the first field in error, or null. */
  function validate() {
    let firstBad = null;
    const bad = (f, message) => { fieldError(f, message); firstBad = firstBad || f.input; };
    if (!current.input.value) bad(current, 'Enter your current password.');
    const value = next.input.value;
    if (!value) bad(next, 'Enter a new password.');
    else if ([...value].length < MIN_CHARS) bad(next, `Use at least ${MIN_CHARS} characters.`);
    else if (new TextEncoder().encode(value).length > MAX_BYTES) bad(next, 'Use a shorter password (1,024 bytes at most).');
    // A typo in a password that is typed once would lock the account out.
    if (value && repeat.input.value !== value) bad(repeat, 'The two new passwords differ.');
    return firstBad;
  }

  async function onSubmit(event) {
    event.preventDefault();
    if (busy) return;
    clearErrors();
    done.hidden = true;
    const bad = validate();
    if (bad) { bad.focus(); return; }
    busy = true;
    submit.disabled = true;
    setText(submit, 'Changing…');
    try {
      // Not aborted when the dialog closes: once the server has changed the password,
      // only its answer's cookies keep this page signed in.
      await api.changePassword(current.input.value, next.input.value);
      // The new session's CSRF token, for the requests that follow.
      await loadSession().catch(() => null);
      if (disposed) return;
      for (const f of Object.values(fields)) f.input.value = '';
      setText(done, 'Password changed. Every other session of this account is signed out; this one stays signed in.');
      done.hidden = false;
      done.setAttribute('tabindex', '-1');
      done.focus();
    } catch (err) {
      if (disposed) return;
      // A 401 (the session had ended) already sent the page to /login.
      const which = fields[FIELD_FOR_CODE[err.code]];
      if (which) {
        fieldError(which, sentence(err.message));
        which.input.focus();
      } else {
        setText(formError, sentence(err.message));
        formError.hidden = false;
      }
    } finally {
      busy = false;
      submit.disabled = false;
      setText(submit, 'Change password');
    }
  }

  const root = h('form', { class: 'password-form', novalidate: true, onsubmit: onSubmit, 'aria-labelledby': 'password-heading' },
    h('h3', { id: 'password-heading' }, 'Change password'),
    formError,
    done,
    current.root,
    next.root,
    repeat.root,
    h('div', { class: 'form-actions' }, submit));
  return { root, first: current.input, dispose: () => { disposed = true; } };
}
