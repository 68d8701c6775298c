// Flow Records: the stored records, newest first, with every filter /api/flows takes plus the
// pair filters the other dashboards link with (narrowed in the browser when the server
// cannot filter on them). A row opens to show the whole record.

import { api, flowParamNames } from '../api.js';
import { panel, table } from '../dom.js';
import { ACTIONS, bps, bytes, esc, FLOW_TYPES, PROTOCOLS, time } from '../format.js';
import { parse, update } from '../route.js';
import { NARROW, plan } from '../narrow.js';

const FIELDS = [
  ['service', 'Service', 'ns/name:port'],
  ['policy', 'Policy', 'ns/name'],
  ['srcIp', 'Source IP', ''],
  ['dstIp', 'Destination IP', ''],
  ['srcPort', 'Source port', ''],
  ['dstPort', 'Destination port', ''],
  ['protocol', 'Protocol', 'tcp, udp, 6…'],
];
const PAGE = 50;

function layout() {
  const inputs = FIELDS.map(([k, label, ph]) => `<label>${label} <input name="${k}" size="9" placeholder="${ph}"></label>`).join('');
  const types = Object.entries(FLOW_TYPES).map(([v, n]) => `<option value="${v}">${n}</option>`).join('');
  return `<h1 class="sr-only">Flow Records</h1>
  <form id="flow-filters" class="filters" aria-label="Flow record filters">
    ${inputs}
    <label>Flow type <select name="flowType"><option value="">any</option>${types}</select></label>
    <button type="submit">Filter</button>
    <button type="button" id="flow-clear">Clear</button>
  </form>
  <p id="narrowing" class="narrowing" hidden></p>
  ${panel('records', 'Flow records', { chart: false, cls: 'records' })}
  <nav class="pager" aria-label="Pages">
    <button type="button" id="prev">← Newer</button><span id="page"></span><button type="button" id="next">Older →</button>
  </nav>`;
}

const ep = (ip, port) => (ip && ip.includes(':') ? `[${ip}]:${port}` : `${ip}:${port}`);
const who = (ns, pod) => (pod ? `${ns}/${pod}` : '');
const pol = (ns, name, action) => (name ? `${esc(`${ns}/${name}`)}${ACTIONS[action] ? ` <small>(${ACTIONS[action]})</small>` : ''}` : '');

const COLUMNS = [
  { label: 'Flow end', cell: (r) => esc(time(r.flowEndSeconds)), cls: 'nowrap' },
  { label: 'Source', cell: (r) => `${esc(who(r.sourcePodNamespace, r.sourcePodName))}<br><small>${esc(ep(r.sourceIPAddress, r.sourceTransportPort))}</small>` },
  { label: 'Destination', cell: (r) => `${esc(who(r.destinationPodNamespace, r.destinationPodName))}<br><small>${esc(ep(r.destinationIPAddress, r.destinationTransportPort))}</small>` },
  { label: 'Service', cell: (r) => esc(r.destinationServicePortName) },
  { label: 'Proto', cell: (r) => esc(PROTOCOLS[r.protocolIdentifier] || r.protocolIdentifier) },
  { label: 'Type', cell: (r) => esc(FLOW_TYPES[r.flowType] || r.flowType), cls: 'nowrap' },
  { label: 'Bytes →', cell: (r) => bytes(r.octetTotalCount), cls: 'num' },
  { label: 'Bytes ←', cell: (r) => bytes(r.reverseOctetTotalCount), cls: 'num' },
  { label: 'Throughput', cell: (r) => bps(r.throughput), cls: 'num' },
  { label: 'TCP state', cell: (r) => esc(r.tcpState) },
  { label: 'Egress policy', cell: (r) => pol(r.egressNetworkPolicyNamespace, r.egressNetworkPolicyName, r.egressNetworkPolicyRuleAction) },
  { label: 'Ingress policy', cell: (r) => pol(r.ingressNetworkPolicyNamespace, r.ingressNetworkPolicyName, r.ingressNetworkPolicyRuleAction) },
];

const FILTER_KEYS = [...FIELDS.map((f) => f[0]), 'flowType', ...Object.keys(NARROW)];

function bind(root, params) {
  const form = root.querySelector('#flow-filters');
  for (const el of form.elements) if (el.name) el.value = params.get(el.name) || '';
  if (form.dataset.bound) return;
  form.dataset.bound = '1';
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const changes = { offset: '' };
    for (const el of form.elements) if (el.name) changes[el.name] = el.value.trim();
    update(changes);
  });
  root.querySelector('#flow-clear').addEventListener('click', () => {
    update(Object.fromEntries([...FILTER_KEYS, 'offset'].map((k) => [k, ''])));
  });
  const offset = () => Number(parse().params.get('offset') || 0);
  root.querySelector('#prev').addEventListener('click', () => update({ offset: Math.max(0, offset() - PAGE) || '' }));
  root.querySelector('#next').addEventListener('click', () => update({ offset: offset() + PAGE }));
  const toggle = (e) => {
    const tr = e.target.closest('tr[data-i]');
    const detail = tr && tr.nextElementSibling;
    if (detail && detail.classList.contains('detail')) {
      detail.toggleAttribute('hidden');
      tr.setAttribute('aria-expanded', String(!detail.hidden));
    }
  };
  const body = root.querySelector('#b-records');
  body.addEventListener('click', toggle);
  body.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' || e.key === ' ') {
      e.preventDefault();
      toggle(e);
    }
  });
}

function showNarrowing(root, local) {
  const p = root.querySelector('#narrowing');
  p.hidden = !local.length;
  p.innerHTML = local.length
    ? `Narrowed to ${local.map(([k, v]) => `<span class="chip">${esc(NARROW[k].label)}: <b>${esc(v)}</b>
        <button type="button" data-drop="${k}" aria-label="Remove ${esc(NARROW[k].label)} filter">×</button></span>`).join(' ')}`
    : '';
  for (const b of p.querySelectorAll('button[data-drop]')) {
    b.addEventListener('click', () => update({ [b.dataset.drop]: '', offset: '' }));
  }
}

async function load(root, ctx) {
  bind(root, ctx.params);
  // Until this load answers, the pager must not page through stale rows.
  root.querySelector('#next').disabled = true;
  root.querySelector('#page').textContent = '';
  await ctx.panel('records', async (el) => {
    const names = await flowParamNames();
    const wanted = Object.fromEntries(FILTER_KEYS.map((k) => [k, ctx.params.get(k) || '']));
    for (const k of ['namespace', 'pod', 'node']) wanted[k] = ctx.dash[k];
    const { server, local, test } = plan(wanted, names);
    showNarrowing(root, local);
    const offset = Number(ctx.params.get('offset') || 0);
    // With browser-side narrowing, read a larger server page and narrow it.
    const q = { ...server, start: ctx.range.start, end: ctx.range.end };
    const res = local.length
      ? await api('flows', { ...q, limit: 1000 })
      : await api('flows', { ...q, limit: PAGE, offset });
    let rows = res.flows;
    if (local.length) rows = rows.filter(test).slice(offset, offset + PAGE);
    const detail = (r) => `<tr class="detail" hidden><td colspan="${COLUMNS.length}"><pre>${esc(JSON.stringify(r, null, 2))}</pre></td></tr>`;
    el.innerHTML = rows.length
      ? table(rows, COLUMNS, { caption: 'Click a row for the whole record', rowAttrs: (r) => `data-i="${r.id}" tabindex="0" aria-expanded="false"` })
      : '<p class="empty">No flow records match these filters in this range.</p>';
    // Insert the detail rows after each record row.
    const trs = el.querySelectorAll('tbody tr[data-i]');
    trs.forEach((tr, i) => tr.insertAdjacentHTML('afterend', detail(rows[i])));
    el.dataset.rows = String(rows.length);
    root.querySelector('#page').textContent = rows.length
      ? `Records ${offset + 1}–${offset + rows.length}${local.length ? ` (narrowed from the newest ${res.flows.length})` : ''}`
      : '';
    root.querySelector('#prev').disabled = offset === 0;
    root.querySelector('#next').disabled = rows.length < PAGE;
  });
}

export default { id: 'flows', title: 'Flow Records', layout, load };
