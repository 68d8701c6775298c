// Pod-to-Pod: cumulative Tx and Rx bytes between Pods as sankeys, and the throughput of the
// largest source and destination Pods over time. A link opens that pair's flow records.

import { panel } from '../dom.js';
import { go, linkTo } from '../route.js';
import { seriesPanel, txRxSankeys } from './common.js';

function layout() {
  return `<h1 class="sr-only">Pod-to-Pod flows</h1>
  <div class="grid g2">
    ${panel('tx', 'Cumulative Tx bytes: source Pod → destination Pod', { cls: 'tall', hint: 'click a link → flow records' })}
    ${panel('rx', 'Cumulative Rx bytes: source Pod ← destination Pod', { cls: 'tall', hint: 'click a link → flow records' })}
    ${panel('src', 'Throughput sent by source Pod')}
    ${panel('dst', 'Throughput received by destination Pod')}
  </div>`;
}

async function load(root, ctx) {
  await Promise.all([
    txRxSankeys(ctx, 'podPair', {
      tx: 'tx',
      rx: 'rx',
      linkHref: (src, dst) => linkTo('flows', { srcPod: src, dstPod: dst }),
      onLink: (src, dst) => go('flows', { srcPod: src, dstPod: dst }),
      onNode: (name, side) => go('flows', side === 'source' ? { srcPod: name } : { dstPod: name }),
    }),
    seriesPanel(ctx, 'src', 'srcPod', (p) => p[1]),
    seriesPanel(ctx, 'dst', 'dstPod', (p) => p[1]),
  ]);
}

export default { id: 'pod-to-pod', title: 'Pod-to-Pod', layout, load };
