// Pod-to-External: traffic between Pods and addresses outside the cluster, seen from the Pod
// (Tx is what the Pod sent). A link opens the flow records of that Pod and address.

import { api } from '../api.js';
import * as charts from '../charts.js';
import { panel } from '../dom.js';
import { go, linkTo } from '../route.js';
import { seriesPanel, txRxSankeys } from './common.js';

function layout() {
  return `<h1 class="sr-only">Pod-to-External flows</h1>
  <div class="grid g2">
    ${panel('tx', 'Cumulative Tx bytes: Pod → external address', { cls: 'tall', hint: 'click a link → flow records' })}
    ${panel('rx', 'Cumulative Rx bytes: Pod ← external address', { cls: 'tall', hint: 'click a link → flow records' })}
    ${panel('series', 'Throughput between Nodes and external addresses')}
    ${panel('top', 'Top external addresses by bytes', { hint: 'click → flow records' })}
  </div>`;
}

async function load(root, ctx) {
  await Promise.all([
    txRxSankeys(ctx, 'podExternal', {
      tx: 'tx',
      rx: 'rx',
      linkHref: (pod, ip) => linkTo('flows', { pod, peerIp: ip }),
      onLink: (pod, ip) => go('flows', { pod, peerIp: ip }),
      onNode: (name, side) => go('flows', side === 'source' ? { pod: name, external: '1' } : { peerIp: name }),
    }),
    seriesPanel(ctx, 'series', 'nodePair', (p) => p[1] + p[2], {
      limit: 50,
      filter: (s) => s.flowType === 3 || s.flowType === 4,
    }),
    ctx.panel('top', async (el) => {
      const { rows } = await api('top', { ...ctx.dash, by: 'external', limit: 10 });
      const c = ctx.chart(el);
      c.setOption(charts.bars(rows.map((r) => ({ name: r.src, value: r.bytes }))), true);
      c.off('click');
      c.on('click', (p) => {
        const r = rows[rows.length - 1 - p.dataIndex];
        if (r) go('flows', { peerIp: r.src });
      });
    }),
  ]);
}

export default { id: 'pod-to-external', title: 'Pod-to-External', layout, load };
