// New task: the team builder.

import { api, newIdempotencyKey } from './api.js';
import { h, setText, uid } from './dom.js';
import { navigate } from './router.js';
import { sentence } from './format.js';

const FIELD_FOR_CODE = {
  missing_description: 'description',
  description_too_long: 'description',
  title_too_long: 'title',
  no_agents: 'agents',
  too_many_agents: 'agents',
  unknown_agent: 'agents',
  duplicate_agent: 'agents',
  invalid_execution_mode: 'mode',
  unknown_provider: 'provider',
  provider_not_configured: 'provider',
  invalid_model: 'model',
  invalid_provider_options: 'options',
};

// Keys and addresses are the workers' settings: the api never holds one.
const PROVIDER_HINT = {
  openai: 'not configured: start the workers with OPENAI_API_KEY or OPENAI_BASE_URL',
  anthropic: 'not configured: start the workers with ANTHROPIC_API_KEY',
};

const MAX_AGENTS = 20;

/** Hand-off from the builder to the viewer: the streamUrl returned by the submit. */
export const submittedStreams = new Map();

export function renderBuilder(root, _params, ctx) {
  const ac = new AbortController();
  document.title = 'New task · Troupe';

  const heading = h('h1', {}, 'New task');
  const intro = h('p', { class: 'lede' }, 'Pick a team, describe the work, and watch every agent live.');
  const status = h('p', { class: 'loading', role: 'status' }, 'Loading the agent catalogue…');
  const page = h('section', { class: 'builder-page', 'aria-labelledby': 'builder-heading' }, heading, intro, status);
  heading.id = 'builder-heading';
  root.append(page);

  (async () => {
    let agents;
    let providers;
    try {
      [agents, providers] = await Promise.all([api.agents({ signal: ac.signal }), api.providers({ signal: ac.signal })]);
    } catch (err) {
      if (err.name === 'AbortError') return;
      status.replaceWith(h('div', { class: 'form-error', role: 'alert' },
        `Could not load the agents and providers: ${err.message} `,
        h('button', { type: 'button', class: 'btn', onclick: () => ctx.rerender() }, 'Try again')));
      return;
    }
    status.remove();
    page.append(buildForm(agents || [], providers || { providers: [] }, ctx));
  })();

  return () => ac.abort();
}

function buildForm(agents, providerInfo, ctx) {
  // ---- form state --------------------------------------------------------
  const selected = []; // roles, in the order picked (= team order)
  let idempotencyKey = null; // one per form state, kept across retries of the same submit
  let submitting = false;

  const ids = {
    agents: uid('agents'), title: uid('title'), description: uid('description'), mode: uid('mode'),
    provider: uid('provider'), model: uid('model'), options: uid('options'),
  };
  const errors = {};
  for (const key of Object.keys(ids)) {
    errors[key] = h('p', { class: 'field-error', id: `${ids[key]}-error`, 'data-testid': `error-${key}` });
  }
  const summary = h('div', { class: 'form-error', role: 'alert', tabindex: '-1', hidden: true, 'data-testid': 'form-error' });

  // ---- agents --------------------------------------------------------------
  const teamStatus = h('p', { class: 'team-status', id: `${ids.agents}-status`, 'aria-live': 'polite' });
  const cards = agents.map((agent) => {
    const inputId = uid('agent');
    const order = h('span', { class: 'agent-order', 'aria-hidden': 'true' });
    const input = h('input', {
      type: 'checkbox', id: inputId, value: agent.role, class: 'agent-check',
      'data-testid': `agent-select-${agent.role}`,
      'aria-describedby': `${inputId}-desc`,
      onchange: () => {
        const i = selected.indexOf(agent.role);
        if (input.checked && i < 0) selected.push(agent.role);
        if (!input.checked && i >= 0) selected.splice(i, 1);
        refreshTeam();
        formChanged();
        if (selected.length) clearError('agents');
      },
    });
    const label = h('label', { class: 'agent-pick', for: inputId, 'data-testid': `agent-option-${agent.role}` },
      input,
      h('span', { class: 'agent-pick-body' },
        h('span', { class: 'agent-pick-head' },
          h('span', { class: 'agent-pick-name' }, agent.name),
          order),
        h('code', { class: 'agent-pick-role' }, agent.role),
        h('span', { class: 'agent-pick-desc', id: `${inputId}-desc` }, agent.description)),
    );
    return { agent, input, label, order };
  });

  function refreshTeam() {
    for (const c of cards) {
      const pos = selected.indexOf(c.agent.role);
      c.label.classList.toggle('is-selected', pos >= 0);
      setText(c.order, pos >= 0 ? `#${pos + 1}` : '');
    }
    const names = selected.map((r) => agents.find((a) => a.role === r)?.name || r);
    setText(teamStatus, names.length
      ? `Team of ${names.length}: ${names.join(' → ')}`
      : 'No agent selected yet.');
  }

  const agentsFieldset = h('fieldset', { class: 'field agents-field', id: ids.agents, 'aria-describedby': `${ids.agents}-status ${errors.agents.id}` },
    h('legend', {}, 'Team ', h('span', { class: 'legend-hint' }, '(in the order you pick them: sequential runs follow it)')),
    h('div', { class: 'agent-grid' }, cards.map((c) => c.label)),
    teamStatus,
    errors.agents);

  // ---- title & description -------------------------------------------------
  const title = h('input', {
    id: ids.title, name: 'title', type: 'text', maxlength: 200, autocomplete: 'off',
    'aria-describedby': `${ids.title}-hint ${errors.title.id}`, 'data-testid': 'task-title', oninput: formChanged,
  });
  const description = h('textarea', {
    id: ids.description, name: 'description', rows: 5, maxlength: 20000, required: true,
    'aria-describedby': errors.description.id, 'data-testid': 'task-description',
    oninput: () => { formChanged(); if (description.value.trim()) clearError('description'); },
  });

  // ---- execution mode ------------------------------------------------------
  const modeRadio = (value, label, hint) => {
    const id = uid('mode');
    return h('div', { class: 'radio' },
      h('input', { type: 'radio', name: 'executionMode', id, value, checked: value === 'sequential', 'data-testid': `mode-${value}`, onchange: formChanged, 'aria-describedby': `${id}-hint` }),
      h('label', { for: id }, label),
      h('p', { class: 'hint', id: `${id}-hint` }, hint));
  };
  const modeFieldset = h('fieldset', { class: 'field', id: ids.mode },
    h('legend', {}, 'Execution'),
    h('div', { class: 'radio-row' },
      modeRadio('sequential', 'Sequential', 'Each agent gets the work of the agents before it; stops at the first failure.'),
      modeRadio('parallel', 'Parallel', 'All agents at once, each on the task alone.')),
    errors.mode);

  // ---- provider & model ----------------------------------------------------
  const providers = providerInfo.providers || [];
  const unavailable = (p) => (providerInfo.workers === 0
    ? 'no worker is running'
    : PROVIDER_HINT[p.name] || 'not configured on the workers');
  const firstUsable = providers.find((p) => p.name === providerInfo.default && p.configured) || providers.find((p) => p.configured);
  const provider = h('select', {
    id: ids.provider, name: 'provider', 'data-testid': 'provider-select',
    'aria-describedby': `${ids.provider}-note ${errors.provider.id}`,
    onchange: () => { formChanged(); refreshProvider(); },
  }, providers.map((p) => h('option', {
    value: p.name,
    disabled: !p.configured,
    selected: firstUsable && p.name === firstUsable.name,
  }, `${p.label || p.name}${p.simulated ? ' — no LLM is called' : ''}${p.configured ? '' : ` (${unavailable(p)})`}`)));
  const providerNote = h('p', { class: 'provider-note', id: `${ids.provider}-note`, 'data-testid': 'provider-note' });
  const model = h('input', {
    id: ids.model, name: 'model', type: 'text', maxlength: 200, autocomplete: 'off', spellcheck: 'false',
    'aria-describedby': `${ids.model}-hint ${errors.model.id}`, 'data-testid': 'task-model', oninput: formChanged,
  });
  const modelHint = h('p', { class: 'hint', id: `${ids.model}-hint` });
  const options = h('textarea', {
    id: ids.options, name: 'providerOptions', rows: 3, spellcheck: 'false', class: 'mono',
    placeholder: '{"latencyMs": 40, "tokens": 24, "failAgents": ["qa"]}',
    'aria-describedby': `${ids.options}-hint ${errors.options.id}`, 'data-testid': 'provider-options', oninput: formChanged,
  });

  function currentProvider() {
    return providers.find((p) => p.name === provider.value);
  }

  function refreshProvider() {
    const p = currentProvider();
    providerNote.replaceChildren();
    if (providerInfo.workers === 0) {
      providerNote.append('No worker is running: tasks can be submitted once one starts.');
    } else if (!p) {
      providerNote.append('No provider is configured on this server.');
    } else if (p.simulated) {
      providerNote.append(h('span', { class: 'badge badge-sim' }, 'Simulated'), ' No LLM is called: agents write deterministic sample output, for trying Troupe offline.');
    } else {
      providerNote.append(`Agents call ${p.label || p.name}.`);
    }
    model.placeholder = p && p.defaultModel ? p.defaultModel : (p && p.simulated ? 'not used by the simulated provider' : '');
    setText(modelHint, p && p.defaultModel ? `Optional. Default: ${p.defaultModel}.` : 'Optional.');
  }

  const unconfigured = providers.filter((p) => !p.configured);
  const providerField = h('div', { class: 'field' },
    h('label', { for: ids.provider }, 'Provider'),
    provider,
    providerNote,
    unconfigured.length
      ? h('p', { class: 'hint' }, `Unavailable: ${unconfigured.map((p) => `${p.label || p.name} (${unavailable(p)})`).join('; ')}.`)
      : null,
    errors.provider);

  // ---- submit --------------------------------------------------------------
  const execute = h('button', { type: 'submit', class: 'btn btn-primary btn-large', 'data-testid': 'execute-button' }, 'Execute');
  const submitStatus = h('p', { class: 'submit-status', role: 'status', 'aria-live': 'polite' });

  function formChanged() {
    // A different form state is a different request: it gets a new key at its submit.
    if (!submitting) idempotencyKey = null;
  }

  function clearError(key) {
    setText(errors[key], '');
    const control = controlFor(key);
    if (control) control.removeAttribute('aria-invalid');
    if (Object.values(errors).every((e) => !e.textContent)) summary.hidden = true;
  }

  function controlFor(key) {
    return { title, description, provider, model, options, agents: cards[0] && cards[0].input, mode: null }[key] || null;
  }

  function showErrors(list) {
    for (const key of Object.keys(errors)) clearError(key);
    summary.replaceChildren();
    if (!list.length) { summary.hidden = true; return; }
    const lead = list.every((e) => !e.key) ? 'The task was not submitted:'
      : list.length === 1 ? 'Please fix this before executing:' : `Please fix these ${list.length} problems before executing:`;
    summary.append(h('p', {}, lead));
    const ul = h('ul');
    for (const { key, message } of list) {
      if (key && errors[key]) {
        setText(errors[key], message);
        const control = controlFor(key);
        if (control && key !== 'agents') control.setAttribute('aria-invalid', 'true');
        const details = control && control.closest('details');
        if (details) details.open = true;
        ul.append(h('li', {}, h('a', {
          href: `#${ids[key]}`,
          onclick: (e) => { e.preventDefault(); (controlFor(key) || document.getElementById(ids[key])).focus(); },
        }, message)));
      } else {
        ul.append(h('li', {}, message));
      }
    }
    summary.append(ul);
    summary.hidden = false;
    summary.focus();
  }

  function validate() {
    const list = [];
    if (selected.length === 0) list.push({ key: 'agents', message: 'Select at least one agent.' });
    if (selected.length > MAX_AGENTS) list.push({ key: 'agents', message: `Select at most ${MAX_AGENTS} agents.` });
    if (title.value.length > 200) list.push({ key: 'title', message: 'The title is at most 200 characters.' });
    if (!description.value.trim()) list.push({ key: 'description', message: 'Describe the task for the team.' });
    else if (description.value.length > 20000) list.push({ key: 'description', message: 'The description is at most 20 000 characters.' });
    const p = currentProvider();
    if (!p || !p.configured) list.push({ key: 'provider', message: 'Choose a configured provider.' });
    let parsedOptions;
    if (options.value.trim()) {
      try {
        parsedOptions = JSON.parse(options.value);
        if (!parsedOptions || typeof parsedOptions !== 'object' || Array.isArray(parsedOptions)) throw new Error('not an object');
      } catch {
        list.push({ key: 'options', message: 'Provider options must be a JSON object, like {"latencyMs": 40}.' });
      }
    }
    return { list, parsedOptions };
  }

  function requestBody(parsedOptions) {
    const body = {
      description: description.value,
      selectedAgents: [...selected],
      executionMode: form.querySelector('input[name="executionMode"]:checked')?.value || 'sequential',
      provider: provider.value,
    };
    if (title.value.trim()) body.title = title.value.trim();
    if (model.value.trim()) body.model = model.value.trim();
    if (parsedOptions) body.providerOptions = parsedOptions;
    return body;
  }

  function setSubmitting(on) {
    submitting = on;
    execute.disabled = on;
    execute.setAttribute('aria-busy', on ? 'true' : 'false');
    setText(execute, on ? 'Executing…' : 'Execute');
  }

  async function onSubmit(event) {
    event.preventDefault();
    if (submitting) return; // a second click or Enter while the first submit is in flight
    const { list, parsedOptions } = validate();
    if (list.length) { showErrors(list); return; }
    setSubmitting(true); // disabled at the first click, before any await
    showErrors([]);
    setText(submitStatus, 'Submitting the task…');
    if (!idempotencyKey) idempotencyKey = newIdempotencyKey();
    const body = requestBody(parsedOptions);
    try {
      const result = await api.submitTask(body, idempotencyKey);
      submittedStreams.set(result.taskId, result.streamUrl);
      setText(submitStatus, 'Task submitted. Opening the viewer…');
      navigate(`/tasks/${encodeURIComponent(result.taskId)}`);
    } catch (err) {
      setSubmitting(false);
      setText(submitStatus, '');
      if (err.code === 'idempotency_key_reused') idempotencyKey = null;
      if (err.status === 401) return; // the app sends the user to sign in
      const key = FIELD_FOR_CODE[err.code];
      const retryNote = err.code === 'network' ? ' Executing again will not create a second task.' : '';
      showErrors([{ key, message: `${sentence(err.message)}${retryNote}` }]);
    }
  }

  const form = h('form', { class: 'builder-form', novalidate: true, onsubmit: onSubmit, 'aria-labelledby': 'builder-heading' },
    summary,
    agentsFieldset,
    h('div', { class: 'form-columns' },
      h('div', { class: 'form-col' },
        h('div', { class: 'field' },
          h('label', { for: ids.title }, 'Title ', h('span', { class: 'optional' }, '(optional)')),
          title,
          h('p', { class: 'hint', id: `${ids.title}-hint` }, 'Default: the first line of the description.'),
          errors.title),
        h('div', { class: 'field' },
          h('label', { for: ids.description }, 'Description ', h('span', { class: 'required' }, '(required)')),
          description,
          errors.description)),
      h('div', { class: 'form-col' },
        modeFieldset,
        providerField,
        h('div', { class: 'field' },
          h('label', { for: ids.model }, 'Model ', h('span', { class: 'optional' }, '(optional)')),
          model,
          modelHint,
          errors.model),
        h('details', { class: 'field advanced' },
          h('summary', {}, 'Provider options'),
          h('label', { for: ids.options }, 'Provider options (JSON object)'),
          options,
          h('p', { class: 'hint', id: `${ids.options}-hint` },
            'Simulated provider: latencyMs (pause between chunks), tokens (number of chunks), failAgents (roles that fail, to try error handling).'),
          errors.options))),
    h('div', { class: 'form-actions' }, execute, submitStatus),
  );

  refreshTeam();
  refreshProvider();
  void ctx;
  return form;
}
