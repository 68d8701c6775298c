// Overview: what the store holds and where the traffic goes — totals, throughput by flow
// type, the largest Pods, Pod pairs, Services and external peers. Bars link to Flow Records.

import { api } from '../api.js';
import * as charts from '../charts.js';
import { panel } from '../dom.js';
import { bytes, count, esc, FLOW_TYPES, time } from '../format.js';
import { go } from '../route.js';

function layout() {
  return `<h1 class="sr-only">Overview</h1>
  <div class="grid g3">
    ${panel('kpi', 'Summary', { chart: false, hint: 'Node filter only' })}
    ${panel('types', 'Traffic by flow type', { hint: 'Node filter only · click → records' })}
    ${panel('series', 'Throughput by flow type', { hint: 'Node filter only' })}
    ${panel('pods', 'Top Pods by bytes', { hint: 'click → flow records' })}
    ${panel('pairs', 'Top Pod pairs by bytes', { hint: 'click → flow records' })}
    ${panel('services', 'Top Services by bytes', { hint: 'click → flow records' })}
  </div>`;
}

/** Per-minute throughput summed per flow type from the Node-pair series. */
function byFlowType(series) {
  const out = new Map();
  for (const s of series) {
    const name = FLOW_TYPES[s.flowType] || `flowType ${s.flowType}`;
    const acc = out.get(name) || new Map();
    for (const [t, a, b] of s.points) acc.set(t, (acc.get(t) || 0) + a + b);
    out.set(name, acc);
  }
  return [...out].map(([name, m]) => ({ name, points: [...m].sort((x, y) => x[0] - y[0]).map(([t, v]) => [t, v, 0]) }));
}

function clickable(chart, rows, onRow) {
  chart.off('click');
  chart.on('click', (p) => {
    const row = rows[rows.length - 1 - p.dataIndex];
    if (row) onRow(row);
  });
}

async function load(root, ctx) {
  const d = ctx.dash;
  const nodeSeries = api('timeseries', { ...d, by: 'nodePair', limit: 50 });
  nodeSeries.catch(() => {}); // each panel reports it
  await Promise.all([
    ctx.panel('kpi', async (el) => {
      const [stats, pairs] = await Promise.all([
        api('stats'),
        api('top', { ...d, by: 'nodePair', limit: 1000 }),
      ]);
      const total = pairs.rows.reduce((a, r) => a + r.bytes, 0);
      const records = pairs.rows.reduce((a, r) => a + r.records, 0);
      el.innerHTML = `<dl class="kpis">
        <div><dt>Bytes in range</dt><dd data-kpi="bytes">${bytes(total)}</dd></div>
        <div><dt>Exports in range</dt><dd data-kpi="exports">${count(records)}</dd></div>
        <div><dt>Records stored</dt><dd data-kpi="records">${count(stats.records)}</dd></div>
        <div><dt>Store size</dt><dd>${stats.bytes == null ? '–' : bytes(stats.bytes)}</dd></div>
        <div><dt>Newest record</dt><dd class="small">${time(stats.newestEndSecs)}</dd></div>
        <div><dt>Backend</dt><dd title="${esc(stats.location)}">${esc(stats.backend)}</dd></div>
      </dl>`;
    }),
    ctx.panel('types', async (el) => {
      const ts = await nodeSeries;
      const sums = byFlowType(ts.series).map((s) => ({
        name: s.name,
        value: s.points.reduce((a, p) => a + (p[1] * ts.step) / 8, 0),
      }));
      const c = ctx.chart(el);
      c.setOption(charts.pie(sums), true);
      c.off('click');
      c.on('click', (p) => {
        const ft = Object.entries(FLOW_TYPES).find(([, n]) => n === p.name);
        if (ft) go('flows', { flowType: ft[0] });
      });
    }),
    ctx.panel('series', async (el) => {
      const ts = await nodeSeries;
      ctx.chart(el).setOption(
        charts.lines(byFlowType(ts.series), (p) => p[1], ctx.range, { step: ts.step, stack: true, area: true }), true);
    }),
    ctx.panel('pods', async (el) => {
      const { rows } = await api('top', { ...d, by: 'pod', limit: 10 });
      const c = ctx.chart(el);
      c.setOption(charts.bars(rows.map((r) => ({ name: r.src, value: r.bytes }))), true);
      clickable(c, rows, (r) => go('flows', { pod: r.src }));
    }),
    ctx.panel('pairs', async (el) => {
      const { rows } = await api('top', { ...d, by: 'podPair', limit: 10 });
      const c = ctx.chart(el);
      c.setOption(charts.bars(rows.map((r) => ({ name: `${r.src} → ${r.dst}`, value: r.bytes }))), true);
      clickable(c, rows, (r) => go('flows', { srcPod: r.src, dstPod: r.dst }));
    }),
    ctx.panel('services', async (el) => {
      const { rows } = await api('top', { ...d, by: 'service', limit: 10 });
      const c = ctx.chart(el);
      c.setOption(charts.bars(rows.map((r) => ({ name: r.src, value: r.bytes }))), true);
      clickable(c, rows, (r) => go('flows', { service: r.src }));
    }),
  ]);
}

export default { id: 'overview', title: 'Overview', layout, load };
