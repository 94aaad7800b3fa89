// Sign in / create account page. The answer sets the session's cookies (the token in
// its body is not kept: an HttpOnly cookie is out of reach of any script of the page).

import { api, loadSession } from './api.js';
import { h, setText, uid } from './dom.js';
import { navigate } from './router.js';
import { sentence } from './format.js';

const FIELD_FOR_CODE = {
  invalid_email: 'email',
  email_taken: 'email',
  invalid_password: 'password',
};

function safeNext(next) {
  // Only same-app paths, never another origin.
  if (!next || !next.startsWith('/') || next.startsWith('//') || next.startsWith('/login')) return '/new';
  return next;
}

export function renderLogin(root, _params, ctx) {
  const query = new URLSearchParams(window.location.search);
  const next = safeNext(query.get('next'));
  let mode = query.get('mode') === 'register' ? 'register' : 'login';
  let busy = false;

  const emailId = uid('email');
  const passwordId = uid('password');
  const emailError = h('p', { class: 'field-error', id: `${emailId}-error`, 'data-testid': 'login-email-error' });
  const passwordError = h('p', { class: 'field-error', id: `${passwordId}-error`, 'data-testid': 'login-password-error' });
  const formError = h('div', { class: 'form-error', role: 'alert', 'data-testid': 'login-error', hidden: true });
  const notice = ctx.notice ? h('p', { class: 'notice', role: 'status' }, ctx.notice) : null;

  const email = h('input', {
    id: emailId, name: 'email', type: 'email', autocomplete: 'email', required: true,
    'aria-describedby': emailError.id, 'data-testid': 'login-email', spellcheck: 'false',
  });
  const password = h('input', {
    id: passwordId, name: 'password', type: 'password', required: true, minlength: 8, maxlength: 1024,
    'aria-describedby': `${passwordId}-hint ${passwordError.id}`, 'data-testid': 'login-password',
  });
  const passwordHint = h('p', { class: 'hint', id: `${passwordId}-hint` }, '8 characters or more.');
  const heading = h('h1', {}, '');
  const submit = h('button', { type: 'submit', class: 'btn btn-primary btn-block', 'data-testid': 'login-submit' }, '');
  const switchText = h('span', {}, '');
  const switchButton = h('button', { type: 'button', class: 'btn-link', 'data-testid': 'login-switch', onclick: toggleMode }, '');

  function applyMode() {
    setText(heading, mode === 'login' ? 'Sign in to Troupe' : 'Create your Troupe account');
    setText(submit, busy ? (mode === 'login' ? 'Signing in…' : 'Creating account…') : (mode === 'login' ? 'Sign in' : 'Create account'));
    setText(switchText, mode === 'login' ? 'New to Troupe? ' : 'Already have an account? ');
    setText(switchButton, mode === 'login' ? 'Create an account' : 'Sign in instead');
    password.setAttribute('autocomplete', mode === 'login' ? 'current-password' : 'new-password');
    passwordHint.hidden = mode === 'login';
    form.dataset.mode = mode;
    document.title = `${mode === 'login' ? 'Sign in' : 'Create account'} · Troupe`;
  }

  function toggleMode() {
    mode = mode === 'login' ? 'register' : 'login';
    clearErrors();
    applyMode();
    heading.focus();
  }

  function clearErrors() {
    for (const [input, err] of [[email, emailError], [password, passwordError]]) {
      input.removeAttribute('aria-invalid');
      setText(err, '');
    }
    formError.hidden = true;
    setText(formError, '');
  }

  function fieldError(which, message) {
    const [input, err] = which === 'email' ? [email, emailError] : [password, passwordError];
    input.setAttribute('aria-invalid', 'true');
    setText(err, message);
  }

  function validate() {
    let firstBad = null;
    const value = email.value.trim();
    if (!value) { fieldError('email', 'Enter your email address.'); firstBad = firstBad || email; }
    else if (!/^[^\s@]+@[^\s@]+$/.test(value)) { fieldError('email', 'Enter an email address like name@example.com.'); firstBad = firstBad || email; }
    if (!password.value) { fieldError('password', 'Enter your password.'); firstBad = firstBad || password; }
    else if (mode === 'register' && password.value.length < 8) { fieldError('password', 'Use at least 8 characters.'); firstBad = firstBad || password; }
    return firstBad;
  }

  async function onSubmit(event) {
    event.preventDefault();
    if (busy) return;
    clearErrors();
    const bad = validate();
    if (bad) { bad.focus(); return; }
    busy = true;
    submit.disabled = true;
    applyMode();
    try {
      const value = email.value.trim();
      if (mode === 'login') await api.login(value, password.value);
      else await api.register(value, password.value);
      // Who is signed in, and the CSRF token, from the cookie just set: this also finds
      // a browser that refused the cookie, where every next request would be a 401.
      if (!(await loadSession())) {
        throw Object.assign(new Error('This browser did not keep the session cookie. Allow cookies for this site, then sign in again.'), { code: 'cookie_refused' });
      }
      ctx.onSignedIn();
      navigate(next, { replace: true });
    } catch (err) {
      busy = false;
      submit.disabled = false;
      applyMode();
      const field = FIELD_FOR_CODE[err.code];
      if (field) {
        fieldError(field, sentence(err.message));
        (field === 'email' ? email : password).focus();
      } else {
        const message = sentence(err.message);
        setText(formError, message);
        formError.hidden = false;
        (err.code === 'unauthorized' ? password : email).focus();
      }
    }
  }

  const form = h('form', { class: 'auth-form card', novalidate: true, onsubmit: onSubmit, 'aria-labelledby': 'auth-heading' },
    heading,
    notice,
    formError,
    h('div', { class: 'field' },
      h('label', { for: emailId }, 'Email'),
      email,
      emailError),
    h('div', { class: 'field' },
      h('label', { for: passwordId }, 'Password'),
      password,
      passwordHint,
      passwordError),
    submit,
    h('p', { class: 'auth-switch' }, switchText, switchButton),
  );
  heading.id = 'auth-heading';
  applyMode();
  root.append(h('section', { class: 'auth-page' }, form));
  return () => {};
}
