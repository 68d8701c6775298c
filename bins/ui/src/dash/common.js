// Pieces the sankey dashboards share: a Tx and an Rx sankey drawn from one `/api/sankey`
// answer, with clicks on links and nodes leading to the matching flow records.

import { api } from '../api.js';
import * as charts from '../charts.js';
import { table } from '../dom.js';
import { bytes, esc } from '../format.js';

const sideName = (id) => id.slice(2);

/**
 * Loads `/api/sankey?by=BY` once and draws the Tx (octets) sankey in panel `tx` and the Rx
 * (reverseOctets) one in `rx`. `onLink(src, dst)` and `onNode(name, side)` handle clicks.
 */
export async function txRxSankeys(ctx, by, { tx, rx, onLink, onNode, tooltip, linkHref, limit = 25 }) {
  const data = api('sankey', { ...ctx.dash, by, limit });
  data.catch(() => {});
  if (linkHref) data.then((d) => linksTable(ctx.slot(tx), d, linkHref), () => {});
  const draw = (id, pick) => ctx.panel(id, async (el) => {
    const c = ctx.chart(el);
    c.setOption(charts.sankey(await data, pick, { tooltip }), true);
    c.off('click');
    c.on('click', (p) => {
      if (p.dataType === 'edge' && onLink) onLink(sideName(p.data.source), sideName(p.data.target), p.data.raw);
      else if (p.dataType === 'node' && onNode) onNode(sideName(p.name), p.name.startsWith('s:') ? 'source' : 'destination');
    });
  });
  await Promise.all([draw(tx, (l) => l.octets), draw(rx, (l) => l.reverseOctets)]);
}

/** Draws `/api/timeseries?by=BY` into panel `id`; `pick` chooses the direction. */
export function seriesPanel(ctx, id, by, pick, opts = {}) {
  return ctx.panel(id, async (el) => {
    const ts = await api('timeseries', { ...ctx.dash, by, limit: opts.limit || 10 });
    const series = opts.filter ? ts.series.filter(opts.filter) : ts.series;
    ctx.chart(el).setOption(charts.lines(series, pick, ctx.range, { ...opts, step: ts.step }), true);
  });
}

/**
 * The sankey's links as a table under the chart (collapsed): the same data and the same links
 * to Flow Records, for keyboards and screen readers, which cannot use a canvas.
 */
function linksTable(chartEl, data, linkHref) {
  const panel = chartEl.closest('.panel');
  let box = panel.querySelector('details.as-table');
  if (!box) {
    panel.insertAdjacentHTML('beforeend', '<details class="as-table"><summary>Links as a table</summary><div></div></details>');
    box = panel.querySelector('details.as-table');
  }
  const rows = data.links.map((l) => ({ src: sideName(l.source), dst: sideName(l.target), l }));
  box.querySelector('div').innerHTML = rows.length ? table(rows, [
    { label: 'Source', cell: (r) => `<a href="${esc(linkHref(r.src, r.dst))}">${esc(r.src)}</a>` },
    { label: 'Destination', cell: (r) => esc(r.dst) },
    { label: 'Tx', cell: (r) => bytes(r.l.octets), cls: 'num' },
    { label: 'Rx', cell: (r) => bytes(r.l.reverseOctets), cls: 'num' },
  ]) : '<p class="empty">No links.</p>';
}
