// Pod-to-Service: client Pods → Services as Tx/Rx sankeys whose tooltips show the client and
// Service addresses (looked up from the flow records on first hover), and Tx/Rx throughput
// per Service over time. A link opens that client's flow records to that Service.

import { api } from '../api.js';
import { panel } from '../dom.js';
import { bytes, esc } from '../format.js';
import { go, linkTo } from '../route.js';
import { seriesPanel, txRxSankeys } from './common.js';

function layout() {
  return `<h1 class="sr-only">Pod-to-Service flows</h1>
  <div class="grid g2">
    ${panel('tx', 'Cumulative Tx bytes: client Pod → Service', { cls: 'tall', hint: 'hover for IPs · click → flow records' })}
    ${panel('rx', 'Cumulative Rx bytes: client Pod ← Service', { cls: 'tall', hint: 'hover for IPs · click → flow records' })}
    ${panel('svc-tx', 'Tx throughput to each Service')}
    ${panel('svc-rx', 'Rx throughput from each Service')}
  </div>`;
}

/**
 * Addresses of a client Pod → Service pair, from a few of its flow records. Cached per range;
 * auto refresh moves the range, so the cache is emptied before it grows large.
 */
const addresses = new Map();
const MAX_CACHED = 200;
function lookup(ctx, pod, service) {
  const key = `${pod}|${service}|${ctx.range.start}|${ctx.range.end}`;
  if (!addresses.has(key)) {
    if (addresses.size >= MAX_CACHED) addresses.clear();
    const q = { start: ctx.range.start, end: ctx.range.end, pod, service, limit: 50 };
    const uniq = (xs) => [...new Set(xs.filter(Boolean))];
    const entry = { promise: null, value: null, error: null };
    entry.promise = api('flows', q).then(({ flows }) => {
      const mine = flows.filter((f) => `${f.sourcePodNamespace}/${f.sourcePodName}` === pod);
      entry.value = {
        src: uniq(mine.map((f) => f.sourceIPAddress)),
        cluster: uniq(mine.map((f) => f.destinationClusterIP && `${f.destinationClusterIP}:${f.destinationServicePort}`)),
        endpoints: uniq(mine.map((f) => `${f.destinationIPAddress}:${f.destinationTransportPort}`)),
      };
    }, (e) => {
      entry.error = e.message;
    });
    addresses.set(key, entry);
  }
  return addresses.get(key);
}

function tooltip(ctx) {
  return (link, update) => {
    const pod = link.source.slice(2);
    const svc = link.target.slice(2);
    const head = `${esc(pod)} → ${esc(svc)}<br>Tx <b>${bytes(link.octets)}</b> · Rx <b>${bytes(link.reverseOctets)}</b>`;
    const list = (xs) => esc(xs.slice(0, 4).join(', ') + (xs.length > 4 ? ', …' : '')) || '–';
    const entry = lookup(ctx, pod, svc);
    const html = () => (entry.error
      ? `${head}<br><span class="err">${esc(entry.error)}</span>`
      : `${head}<br>Client IP: ${list(entry.value.src)}<br>Service IP: ${list(entry.value.cluster)}<br>Endpoints: ${list(entry.value.endpoints)}`);
    if (entry.value || entry.error) return html();
    entry.promise.then(() => update(html()));
    return `${head}<br><i>looking up addresses…</i>`;
  };
}

async function load(root, ctx) {
  await Promise.all([
    txRxSankeys(ctx, 'podService', {
      tx: 'tx',
      rx: 'rx',
      linkHref: (pod, service) => linkTo('flows', { srcPod: pod, service }),
      tooltip: tooltip(ctx),
      onLink: (pod, service) => go('flows', { srcPod: pod, service }),
      onNode: (name, side) => go('flows', side === 'source' ? { srcPod: name } : { service: name }),
    }),
    seriesPanel(ctx, 'svc-tx', 'service', (p) => p[1]),
    seriesPanel(ctx, 'svc-rx', 'service', (p) => p[2]),
  ]);
}

export default { id: 'pod-to-service', title: 'Pod-to-Service', layout, load };
