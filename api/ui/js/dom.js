// Tiny DOM helpers. Text always goes in through text nodes (never innerHTML).

/**
 * h('button', { class: 'x', onclick: fn, 'data-testid': 'y' }, 'text', child, …)
 * Attributes: `class`, `on<event>` (listener), `dataset`-style `data-*`, booleans
 * (true → present, false/null/undefined → absent), anything else as an attribute.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2), value);
    } else if (key === 'class') {
      el.className = value;
    } else if (value === true) {
      el.setAttribute(key, '');
    } else {
      el.setAttribute(key, String(value));
    }
  }
  append(el, children);
  return el;
}

const SVG_NS = 'http://www.w3.org/2000/svg';

/** h() for SVG elements: svg('rect', { x: 1, class: 'bar' }, child, …). */
export function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    el.setAttribute(key, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

/** Sets text only when it changed (avoids needless layout work and live-region chatter). */
export function setText(el, text) {
  const value = text === null || text === undefined ? '' : String(text);
  if (el.textContent !== value) el.textContent = value;
}

let idCounter = 0;
export function uid(prefix = 'id') {
  idCounter += 1;
  return `${prefix}-${idCounter}`;
}

/** Sets the page heading focus target after a route change, for screen readers and keyboards. */
export function focusHeading(root) {
  const heading = root.querySelector('h1');
  if (heading) {
    heading.setAttribute('tabindex', '-1');
    heading.focus({ preventScroll: false });
  }
}

// ---- dialogs -------------------------------------------------------------------

/**
 * A modal <dialog> with a title and a Close button (`<testid>-close`). `open(title,
 * children, opener, focus)` shows it and focuses `focus` (the Close button when none);
 * Escape, Close and a click on the backdrop close it, and focus returns to the opener.
 */
export function createDialog(testid) {
  const titleId = uid('dialog-title');
  const title = h('h2', { id: titleId });
  const body = h('div', { class: 'dialog-body' });
  const closeButton = h('button', { type: 'button', class: 'btn btn-small dialog-close', 'data-testid': `${testid}-close`, onclick: () => close() }, 'Close');
  const root = h('dialog', { class: 'dialog', 'aria-labelledby': titleId, 'data-testid': testid },
    h('header', { class: 'dialog-head' }, title, closeButton),
    body);
  let opener = null;
  root.addEventListener('close', () => {
    if (opener && opener.isConnected) opener.focus();
    opener = null;
  });
  root.addEventListener('click', (e) => { if (e.target === root) close(); }); // backdrop

  function open(text, children, from, focus) {
    opener = from || document.activeElement;
    setText(title, text);
    body.replaceChildren(...children.filter(Boolean));
    if (!root.open) root.showModal();
    (focus || closeButton).focus();
  }

  function close() {
    if (root.open) root.close();
  }

  return { root, open, close };
}

/**
 * Asks before a step that cannot be undone, in a modal <dialog> (`confirm-dialog`):
 * resolves true for the confirm button (`confirm-ok`), false for Cancel
 * (`confirm-cancel`), Escape or `signal` aborting (the page went away). Cancel has the
 * focus, so that a stray Enter does not confirm.
 */
export function confirmDialog({ title, text, confirmLabel, cancelLabel = 'Cancel', danger = true, opener = null, signal = null }) {
  const titleId = uid('confirm-title');
  const textId = uid('confirm-text');
  const cancel = h('button', { type: 'submit', value: 'cancel', class: 'btn', 'data-testid': 'confirm-cancel' }, cancelLabel);
  const ok = h('button', { type: 'submit', value: 'ok', class: `btn ${danger ? 'btn-danger' : 'btn-primary'}`, 'data-testid': 'confirm-ok' }, confirmLabel);
  const root = h('dialog', {
    class: 'dialog dialog-confirm', role: 'alertdialog', 'aria-labelledby': titleId, 'aria-describedby': textId, 'data-testid': 'confirm-dialog',
  },
  // method="dialog": either button closes the dialog with its value as returnValue.
  h('form', { method: 'dialog', class: 'dialog-body' },
    h('h2', { id: titleId, class: 'confirm-title' }, title),
    h('p', { id: textId }, text),
    h('div', { class: 'confirm-actions' }, cancel, ok)));
  const from = opener || document.activeElement;
  document.body.append(root);
  return new Promise((resolve) => {
    const abort = () => { if (root.open) root.close(''); };
    root.addEventListener('close', () => {
      signal?.removeEventListener('abort', abort);
      root.remove();
      if (from && from.isConnected) from.focus();
      resolve(root.returnValue === 'ok' && !signal?.aborted);
    }, { once: true });
    if (signal?.aborted) { root.remove(); resolve(false); return; }
    signal?.addEventListener('abort', abort, { once: true });
    root.showModal();
    cancel.focus();
  });
}
