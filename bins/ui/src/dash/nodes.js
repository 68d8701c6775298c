// Node Throughput: inter-Node and intra-Node throughput per Node pair over time (all Pod
// traffic summed per Node), Tx/Rx per Node, and the Mbps heatmap of source × destination Node.

import { api } from '../api.js';
import * as charts from '../charts.js';
import { panel } from '../dom.js';
import { go } from '../route.js';

function layout() {
  return `<h1 class="sr-only">Node Throughput</h1>
  <div class="grid g2">
    ${panel('inter', 'Inter-Node throughput (source Node → destination Node)')}
    ${panel('intra', 'Intra-Node throughput')}
    ${panel('heat', 'Average Mbps per Node pair', { hint: 'rows: source · columns: destination · click → records' })}
    ${panel('pernode', 'Average Tx and Rx Mbps per Node', { hint: 'click → records' })}
  </div>`;
}

async function load(root, ctx) {
  const ts = api('timeseries', { ...ctx.dash, by: 'nodePair', limit: 50 });
  ts.catch(() => {});
  const lines = (id, type) => ctx.panel(id, async (el) => {
    const { series, step } = await ts;
    ctx.chart(el).setOption(charts.lines(series.filter((s) => s.flowType === type), (p) => p[1] + p[2], ctx.range, { step }), true);
  });
  await Promise.all([
    lines('inter', 2),
    lines('intra', 1),
    ctx.panel('heat', async (el) => {
      const m = await api('node-matrix', ctx.dash);
      const c = ctx.chart(el);
      c.setOption(charts.heatmap(m), true);
      c.off('click');
      c.on('click', (p) => {
        const [dst, src] = p.value;
        go('flows', { srcNode: m.nodes[src], dstNode: m.nodes[dst] });
      });
    }),
    ctx.panel('pernode', async (el) => {
      const { rows } = await api('top', { ...ctx.dash, by: 'node', limit: 50 });
      const c = ctx.chart(el);
      if (!rows.length) {
        c.setOption(charts.empty(), true);
        return;
      }
      const secs = Math.max(1, ctx.range.end - ctx.range.start);
      const mbps = (b) => Math.round((b * 8) / secs / 1e3) / 1e3;
      const fmt = (v) => `${v.toFixed(3)} Mbps`;
      c.setOption({
        ...charts.ANIM,
        tooltip: { trigger: 'axis', axisPointer: { type: 'shadow' }, valueFormatter: fmt, confine: true },
        legend: { top: 0 },
        grid: { left: 8, right: 16, top: 30, bottom: 8, containLabel: true },
        xAxis: { type: 'category', data: rows.map((r) => r.src), axisLabel: { fontSize: 11 } },
        yAxis: { type: 'value', axisLabel: { fontSize: 10, formatter: (v) => `${v} Mbps` } },
        series: [
          { name: 'Tx', type: 'bar', data: rows.map((r) => mbps(r.octets)), color: '#3b6fd8' },
          { name: 'Rx', type: 'bar', data: rows.map((r) => mbps(r.reverseOctets)), color: '#e8833a' },
        ],
      }, true);
      c.off('click');
      c.on('click', (p) => go('flows', { node: rows[p.dataIndex].src }));
    }),
  ]);
}

export default { id: 'nodes', title: 'Node Throughput', layout, load };
