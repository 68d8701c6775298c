// Network Policy: flows grouped by the egress policy of the source and the ingress policy of
// the destination, filtered by either; hovering a link lists its Pod pairs, clicking it opens
// their flow records.

import { api } from '../api.js';
import * as charts from '../charts.js';
import { panel, table } from '../dom.js';
import { ACTIONS, bytes, esc, policy as policyName } from '../format.js';
import { go, linkTo, update } from '../route.js';

function layout() {
  return `<h1 class="sr-only">Network Policy</h1>
  <form id="policy-filters" class="filters" aria-label="Network policy filters">
    <label>Egress policy <input name="egress" size="22" placeholder="namespace/name or name" list="dl-egress"></label>
    <label>Ingress policy <input name="ingress" size="22" placeholder="namespace/name or name" list="dl-ingress"></label>
    <button type="submit">Filter</button>
    <button type="button" id="policy-clear">Clear</button>
    <datalist id="dl-egress"></datalist><datalist id="dl-ingress"></datalist>
  </form>
  <div class="grid g2 policy">
    ${panel('sankey', 'Bytes by egress policy (source) → ingress policy (destination)', { cls: 'xtall', hint: 'hover for Pod pairs · click → records' })}
    ${panel('pairs', 'Pod pairs under these policies', { chart: false, cls: 'xtall scroll', hint: 'click a Pod → records' })}
  </div>`;
}

function bind(root, params) {
  const form = root.querySelector('#policy-filters');
  for (const k of ['egress', 'ingress']) form.elements[k].value = params.get(k) || '';
  if (form.dataset.bound) return;
  form.dataset.bound = '1';
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    update({ egress: form.elements.egress.value.trim(), ingress: form.elements.ingress.value.trim() });
  });
  root.querySelector('#policy-clear').addEventListener('click', () => update({ egress: '', ingress: '' }));
}

const key = (p) => (p.name ? `${p.namespace}/${p.name}` : '-');

/** Sums Pod-pair rows into egress → ingress links, each keeping its Pod pairs. */
function group(flows) {
  const links = new Map();
  for (const f of flows) {
    const k = `${key(f.egress)}|${key(f.ingress)}`;
    let l = links.get(k);
    if (!l) {
      l = { source: `s:${policyName(f.egress)}`, target: `d:${policyName(f.ingress)}`, egress: f.egress, ingress: f.ingress, bytes: 0, octets: 0, reverseOctets: 0, pairs: [] };
      links.set(k, l);
    }
    l.bytes += f.bytes;
    l.octets += f.octets;
    l.reverseOctets += f.reverseOctets;
    l.pairs.push(f);
  }
  const list = [...links.values()];
  const nodes = new Map();
  for (const l of list) {
    nodes.set(l.source, { id: l.source, name: l.source.slice(2), side: 'source' });
    nodes.set(l.target, { id: l.target, name: l.target.slice(2), side: 'destination' });
  }
  return { nodes: [...nodes.values()], links: list };
}

function tooltip(l) {
  const pairs = l.pairs.slice(0, 8).map((f) => `${esc(f.srcPod || '(external)')} → ${esc(f.dstPod || '(external)')}: ${bytes(f.bytes)}`).join('<br>');
  const more = l.pairs.length > 8 ? `<br>… ${l.pairs.length - 8} more` : '';
  const act = (p) => (ACTIONS[p.action] ? ` (${ACTIONS[p.action]})` : '');
  return `<b>${esc(policyName(l.egress))}${act(l.egress)} → ${esc(policyName(l.ingress))}${act(l.ingress)}</b><br>${bytes(l.bytes)} in ${l.pairs.length} Pod pair(s)<br>${pairs}${more}`;
}

/** Flow Records of one row: its Pods (an empty side is external) under its policies. */
function pairLink(f) {
  return linkTo('flows', {
    srcPod: f.srcPod,
    dstPod: f.dstPod,
    external: f.srcPod && f.dstPod ? '' : '1',
    egressPolicy: key(f.egress),
    ingressPolicy: key(f.ingress),
  });
}

async function load(root, ctx) {
  bind(root, ctx.params);
  const filters = { egress: ctx.params.get('egress') || '', ingress: ctx.params.get('ingress') || '' };
  const data = api('policies', { ...ctx.dash, ...filters, limit: 1000 });
  data.catch(() => {});
  // Suggestions come from the unfiltered set, so a filter can be changed to any policy.
  api('policies', { ...ctx.dash, limit: 1000 }).then(({ flows }) => {
    const opts = (pick) => [...new Set(flows.map(pick).filter((p) => p.name).map(key))].sort()
      .map((v) => `<option value="${esc(v)}"></option>`).join('');
    root.querySelector('#dl-egress').innerHTML = opts((f) => f.egress);
    root.querySelector('#dl-ingress').innerHTML = opts((f) => f.ingress);
  }, () => {});
  await Promise.all([
    ctx.panel('sankey', async (el) => {
      const { flows } = await data;
      const g = group(flows);
      const c = ctx.chart(el);
      c.setOption(charts.sankey(g, (l) => l.bytes, { tooltip: (l) => tooltip(l) }), true);
      c.off('click');
      c.on('click', (p) => {
        if (p.dataType !== 'edge') return;
        const l = p.data.raw;
        go('flows', { egressPolicy: key(l.egress), ingressPolicy: key(l.ingress) });
      });
    }),
    ctx.panel('pairs', async (el) => {
      const { flows } = await data;
      const act = (p) => (ACTIONS[p.action] ? ` <small>(${ACTIONS[p.action]})</small>` : '');
      el.innerHTML = flows.length ? table(flows.slice(0, 200), [
        { label: 'Source Pod', cls: 'nowrap', cell: (f) => `<a href="${esc(pairLink(f))}" title="Flow records of this Pod pair">${esc(f.srcPod || '(external)')}</a>` },
        { label: 'Destination Pod', cell: (f) => esc(f.dstPod || '(external)') },
        { label: 'Bytes', cell: (f) => bytes(f.bytes), cls: 'num' },
        { label: 'Egress policy', cell: (f) => esc(policyName(f.egress)) + act(f.egress) },
        { label: 'Ingress policy', cell: (f) => esc(policyName(f.ingress)) + act(f.ingress) },
      ]) : '<p class="empty">No flows under these policies in this range.</p>';
    }),
  ]);
}

export default { id: 'policy', title: 'Network Policy', layout, load };
