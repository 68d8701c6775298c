// The page's state lives in the URL hash, `#/VIEW?k=v&…`, so every view is a link: the
// browser's back button, bookmarks and the links between dashboards all use it.

/** Parameters every dashboard shares (time range, refresh, the dashboard filters). */
export const GLOBAL = ['start', 'end', 'refresh', 'namespace', 'pod', 'node'];

export function parse(hash = location.hash) {
  const h = hash.replace(/^#\/?/, '');
  const i = h.indexOf('?');
  const view = (i < 0 ? h : h.slice(0, i)) || 'overview';
  const params = new URLSearchParams(i < 0 ? '' : h.slice(i + 1));
  return { view, params };
}

export function href(view, params) {
  const q = new URLSearchParams();
  for (const [k, v] of params instanceof URLSearchParams ? params : Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, v);
  }
  const s = q.toString();
  return `#/${view}${s ? `?${s}` : ''}`;
}

/** The current global parameters plus `extra`: a link to another dashboard in the same range. */
export function linkTo(view, extra = {}) {
  const { params } = parse();
  const out = {};
  for (const k of GLOBAL) if (params.get(k)) out[k] = params.get(k);
  return href(view, { ...out, ...extra });
}

export function go(view, extra = {}) {
  location.hash = linkTo(view, extra);
}

/**
 * Replaces some parameters of the current view (empty values remove them). Returns false when
 * nothing changed (no hashchange will follow).
 */
export function update(changes) {
  const { view, params } = parse();
  for (const [k, v] of Object.entries(changes)) {
    if (v === undefined || v === null || v === '') params.delete(k);
    else params.set(k, v);
  }
  const next = href(view, params);
  if (next === location.hash) return false;
  location.hash = next;
  return true;
}
