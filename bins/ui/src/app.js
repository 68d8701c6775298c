// The page shell: tabs for the seven dashboards, the time range and filter controls, auto
// refresh, and the load cycle. A dashboard is `{id, title, layout(), load(root, ctx)}`;
// layout() is drawn once when the tab opens, load() on every change or refresh.

import { api } from './api.js';
import * as charts from './charts.js';
import { showErrors, panelError, slot } from './dom.js';
import { esc, time } from './format.js';
import * as route from './route.js';
import overview from './dash/overview.js';
import podToPod from './dash/pod-to-pod.js';
import podToExternal from './dash/pod-to-external.js';
import podToService from './dash/pod-to-service.js';
import flows from './dash/flows.js';
import nodes from './dash/nodes.js';
import policy from './dash/policy.js';

const DASHBOARDS = [overview, podToPod, podToExternal, podToService, flows, nodes, policy];
const byId = new Map(DASHBOARDS.map((d) => [d.id, d]));
const DEFAULT_START = 'now-1h';

const $ = (id) => document.getElementById(id);
const state = { view: null, timer: null, loads: 0, generation: 0, busy: false, suggested: { at: 0, key: '' } };

/** Test and debugging hook: how many loads finished, and the charts on the page. */
window.flowlens = {
  get loads() { return state.loads; },
  chartOf: (el) => echarts.getInstanceByDom(el),
};

/** Unix seconds of `now`, `now-15m` (s, m, h, d), Unix seconds, or an ISO date (as the API takes). */
function resolveTime(v, now) {
  if (!v || v === 'now') return now;
  const m = /^now-(\d+)([smhd])$/.exec(v);
  if (m) return now - Number(m[1]) * { s: 1, m: 60, h: 3600, d: 86400 }[m[2]];
  const n = Number(v);
  if (Number.isFinite(n)) return Math.floor(n);
  const t = Date.parse(v);
  return Number.isFinite(t) ? Math.floor(t / 1000) : now;
}

function toLocalInput(secs) {
  const d = new Date(secs * 1000 - new Date().getTimezoneOffset() * 60000);
  return d.toISOString().slice(0, 19);
}

function fromLocalInput(v) {
  const t = new Date(v).getTime();
  return Number.isFinite(t) ? Math.floor(t / 1000) : null;
}

function drawTabs(current) {
  $('tabs').innerHTML = DASHBOARDS.map((d) => `<a href="${route.linkTo(d.id)}" data-view="${d.id}"${
    d.id === current ? ' aria-current="page"' : ''}>${d.title}</a>`).join('');
}

/** Puts the URL's state into the controls. */
function syncControls(params) {
  const start = params.get('start') || DEFAULT_START;
  const preset = [...$('range').options].some((o) => o.value === start) && !params.get('end');
  $('range').value = preset ? start : 'custom';
  $('custom-range').hidden = preset;
  if (!preset) {
    const now = Math.floor(Date.now() / 1000);
    $('start').value = toLocalInput(resolveTime(start, now));
    $('end').value = toLocalInput(resolveTime(params.get('end'), now));
  }
  for (const k of ['namespace', 'pod', 'node']) $(`f-${k}`).value = params.get(k) || '';
  $('refresh').value = params.get('refresh') || '0';
}

function readControls() {
  const out = {};
  if ($('range').value === 'custom') {
    out.start = fromLocalInput($('start').value);
    out.end = fromLocalInput($('end').value);
  } else {
    out.start = $('range').value === DEFAULT_START ? '' : $('range').value;
    out.end = '';
  }
  for (const k of ['namespace', 'pod', 'node']) out[k] = $(`f-${k}`).value.trim();
  out.refresh = $('refresh').value === '0' ? '' : $('refresh').value;
  return out;
}

function armRefresh(params) {
  clearInterval(state.timer);
  const secs = Number(params.get('refresh') || 0);
  if (secs > 0) {
    // A tick while the previous load is still running is skipped: a slow collector must not
    // receive a growing pile of requests.
    state.timer = setInterval(() => {
      if (document.visibilityState === 'visible' && !state.busy) load();
    }, secs * 1000);
  }
}

/**
 * Fills the filter inputs' suggestion lists from the largest Pods and Nodes in range: when the
 * range setting changes, else at most once a minute (not on every auto-refresh tick).
 */
async function suggest(dash, key) {
  if (key === state.suggested.key && Date.now() - state.suggested.at < 60000) return;
  state.suggested = { at: Date.now(), key };
  try {
    const [pods, nodeRows] = await Promise.all([
      api('top', { start: dash.start, end: dash.end, by: 'pod', limit: 200 }),
      api('top', { start: dash.start, end: dash.end, by: 'node', limit: 100 }),
    ]);
    const names = pods.rows.map((r) => r.src);
    const opts = (xs) => [...new Set(xs)].sort().map((x) => `<option value="${esc(x)}"></option>`).join('');
    $('dl-pods').innerHTML = opts(names);
    $('dl-namespaces').innerHTML = opts(names.filter((n) => n.includes('/')).map((n) => n.split('/')[0]));
    $('dl-nodes').innerHTML = opts(nodeRows.rows.map((r) => r.src));
  } catch {
    // Suggestions are a convenience; the dashboards report API errors themselves.
  }
}

async function load() {
  const { view, params } = route.parse();
  const dashboard = byId.get(view) || overview;
  const root = $('view');
  const generation = ++state.generation;
  if (state.view !== dashboard.id) {
    state.view = dashboard.id;
    root.innerHTML = dashboard.layout();
    root.dataset.view = dashboard.id;
    charts.sweep();
    document.title = `${dashboard.title} · flowlens`;
  }
  drawTabs(dashboard.id);
  syncControls(params);
  armRefresh(params);
  document.body.dataset.state = 'loading';
  $('status').textContent = 'Loading…';

  const now = Math.floor(Date.now() / 1000);
  const range = {
    start: resolveTime(params.get('start') || DEFAULT_START, now),
    end: resolveTime(params.get('end') || 'now', now),
  };
  const dash = {
    start: range.start,
    end: range.end,
    namespace: params.get('namespace') || '',
    pod: params.get('pod') || '',
    node: params.get('node') || '',
  };
  const errors = [];
  const ctx = {
    params,
    range,
    dash,
    chart: (el) => charts.chart(el),
    slot: (id) => slot(root, id),
    /** Runs one panel's loader; its failure shows in the panel and the banner. */
    panel: async (id, fn) => {
      const el = slot(root, id);
      // A spinner only on a chart's first load: refreshes update in place without flicker.
      const first = el.classList.contains('chart') && !echarts.getInstanceByDom(el);
      if (first) charts.chart(el).showLoading({ text: '', color: '#3b6fd8' });
      try {
        await fn(el);
        panelError(root, id, null);
      } catch (e) {
        console.error(e);
        errors.push(e.message);
        panelError(root, id, e.message);
      } finally {
        if (first) charts.chart(el).hideLoading();
      }
    },
  };
  suggest(dash, `${params.get('start')}|${params.get('end')}`);
  state.busy = true;
  try {
    await dashboard.load(root, ctx);
  } catch (e) {
    console.error(e);
    errors.push(e.message);
  } finally {
    if (generation === state.generation) state.busy = false;
  }
  if (generation !== state.generation) return; // a newer load superseded this one
  showErrors(errors);
  state.loads += 1;
  document.body.dataset.state = errors.length ? 'error' : 'ready';
  $('status').textContent = `${time(range.start)} – ${time(range.end)} · updated ${new Date().toLocaleTimeString()}${
    errors.length ? ` · ${errors.length} error(s)` : ''}`;
}

function init() {
  $('controls').addEventListener('submit', (e) => {
    e.preventDefault();
    // Apply with unchanged settings reloads, as a user pressing it expects.
    if (!route.update(readControls())) load();
  });
  for (const id of ['range', 'refresh', 'start', 'end']) {
    $(id).addEventListener('change', () => {
      if (id === 'range' && $('range').value === 'custom') {
        $('custom-range').hidden = false;
        const now = Math.floor(Date.now() / 1000);
        if (!$('start').value) $('start').value = toLocalInput(now - 3600);
        if (!$('end').value) $('end').value = toLocalInput(now);
        return;
      }
      route.update(readControls());
    });
  }
  $('reload').addEventListener('click', () => load());
  window.addEventListener('hashchange', load);
  window.addEventListener('resize', charts.resizeAll);
  load();
}

if (typeof echarts === 'undefined') {
  showErrors(['The chart library did not load (/assets/vendor/echarts-5.6.0.min.js).']);
  document.body.dataset.state = 'error';
} else {
  init();
}
