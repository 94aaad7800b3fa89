// The requests that control a task (cancel, pause, resume, retry, delete) as the viewer runs
// them. One request at a time per scope (the task, or one agent): its buttons stay
// disabled while it is in flight and until the event log shows its effect (so a
// button does not come back for the moment between a 200 and its event), and a
// refusal is kept, with the server's message, to be shown next to the buttons.

import { sentence } from './format.js';

// How long to wait for the event that shows an action's effect before giving the
// buttons back anyway (the stream may be reconnecting).
const SETTLE_MS = 5000;

const FAILED = {
  cancel: 'Could not cancel',
  pause: 'Could not pause',
  resume: 'Could not resume',
  retry: 'Could not retry',
  delete: 'Could not delete',
};

export class ActionRunner {
  /** @param {() => void} onChange  called whenever a scope's busy or error state changes */
  constructor(onChange) {
    this.onChange = onChange;
    this.busy = new Map(); // scope → action name
    this.errors = new Map(); // scope → message
    this.waiters = new Set();
    this.disposed = false;
  }

  isBusy(scope) {
    return this.busy.has(scope);
  }

  error(scope) {
    return this.errors.get(scope) || '';
  }

  /**
   * Runs `request` in `scope` unless one is already in flight there. `done(result)`
   * applies what the answer says at once (e.g. cancelRequested) and may return a
   * predicate on the viewer's state: the scope stays busy until it holds.
   * Resolves to true when the request succeeded.
   */
  async run(scope, name, request, done) {
    if (this.busy.has(scope) || this.disposed) return false;
    this.busy.set(scope, name);
    this.errors.delete(scope);
    this.onChange();
    let ok = false;
    try {
      const result = await request();
      ok = true;
      const until = done ? done(result) : null;
      if (until) await this.waitFor(until);
    } catch (err) {
      if (err && err.name === 'AbortError') return false;
      // Say which request was refused: the server's message alone may not name it.
      const what = FAILED[name] || 'The request failed';
      this.errors.set(scope, `${what}: ${sentence(err && err.message) || 'no answer.'}`);
    } finally {
      this.busy.delete(scope);
      if (!this.disposed) this.onChange();
    }
    return ok;
  }

  waitFor(predicate) {
    if (predicate()) return Promise.resolve();
    return new Promise((resolve) => {
      const waiter = { predicate, resolve: () => { clearTimeout(waiter.timer); this.waiters.delete(waiter); resolve(); } };
      waiter.timer = setTimeout(waiter.resolve, SETTLE_MS);
      this.waiters.add(waiter);
    });
  }

  /** Call after the state changed: releases the scopes whose effect is now visible. */
  check() {
    for (const waiter of [...this.waiters]) {
      if (waiter.predicate()) waiter.resolve();
    }
  }

  dispose() {
    this.disposed = true;
    for (const waiter of [...this.waiters]) waiter.resolve();
  }
}
