// Client-side routing with the History API: /login, /new, /tasks, /tasks/<id>, /usage.
// The server answers index.html for each of these paths.

const ROUTES = [
  { name: 'root', pattern: /^\/?$/ },
  { name: 'login', pattern: /^\/login\/?$/ },
  { name: 'new', pattern: /^\/new\/?$/ },
  { name: 'tasks', pattern: /^\/tasks\/?$/ },
  { name: 'task', pattern: /^\/tasks\/([^/]+)\/?$/, params: ['id'] },
  { name: 'usage', pattern: /^\/usage\/?$/ },
];

export function match(pathname) {
  for (const route of ROUTES) {
    const m = route.pattern.exec(pathname);
    if (m) {
      const params = {};
      (route.params || []).forEach((key, i) => { params[key] = decodeURIComponent(m[i + 1]); });
      return { name: route.name, params };
    }
  }
  return { name: 'not_found', params: {} };
}

let listener = () => {};

/** Navigates within the app (pushState) and renders the new route. */
export function navigate(path, { replace = false } = {}) {
  const url = new URL(path, window.location.origin);
  const target = url.pathname + url.search + url.hash;
  const current = window.location.pathname + window.location.search + window.location.hash;
  if (target !== current) {
    if (replace) window.history.replaceState({}, '', target);
    else window.history.pushState({}, '', target);
  }
  listener();
}

function isAppLink(anchor) {
  if (!anchor || anchor.target === '_blank' || anchor.hasAttribute('download')) return false;
  if (anchor.origin !== window.location.origin) return false;
  const path = anchor.pathname;
  if (path.startsWith('/api/') || path.startsWith('/ui/')) return false;
  return match(path).name !== 'not_found';
}

/** Starts routing: `render()` is called now and on every navigation. */
export function startRouter(render) {
  listener = render;
  window.addEventListener('popstate', () => listener());
  document.addEventListener('click', (event) => {
    if (event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    const anchor = event.target.closest && event.target.closest('a[href]');
    if (!isAppLink(anchor)) return;
    event.preventDefault();
    navigate(anchor.pathname + anchor.search + anchor.hash);
  });
  listener();
}
