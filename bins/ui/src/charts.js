// ECharts option builders shared by the dashboards. ECharts is the global the vendored
// UMD build defines; it is loaded by index.html before the modules run.

import { bps, bytes, esc, short } from './format.js';

const PALETTE = ['#3b6fd8', '#e8833a', '#3aa776', '#c2455a', '#8e5cc9', '#2fa3b5', '#b58a2f',
  '#d65db1', '#6b7d94', '#7bb33a'];

/** Short animations: dashboards refresh often, and a half-drawn chart reads as missing data. */
/** Tests set `window.FLOWLENS_NO_ANIMATION` before the page loads, so screenshots show the end state. */
export const ANIM = window.FLOWLENS_NO_ANIMATION
  ? { animation: false }
  : { animationDuration: 300, animationDurationUpdate: 200 };

const registry = new Map();

/** The chart drawn in `el`, created on first use; every chart is resized with the window. */
export function chart(el) {
  let c = registry.get(el);
  if (!c || c.isDisposed()) {
    c = echarts.init(el, null, { renderer: 'canvas' });
    registry.set(el, c);
  }
  return c;
}

/** Disposes charts whose element left the page (a dashboard was replaced). */
export function sweep() {
  for (const [el, c] of registry) {
    if (!el.isConnected) {
      c.dispose();
      registry.delete(el);
    }
  }
}

export function resizeAll() {
  for (const c of registry.values()) c.resize();
}

/** Shows "no data" instead of an empty grid. */
export function empty(text = 'No data in this range') {
  return {
    ...ANIM,
    title: { text, left: 'center', top: 'middle', textStyle: { color: '#888', fontSize: 13, fontWeight: 'normal' } },
    series: [],
  };
}

/**
 * A sankey from the API's `{nodes, links}`; `value(link)` picks the link's weight (Tx or Rx
 * bytes). Node ids are unique per side, names are what we show.
 */
export function sankey(data, value, { tooltip } = {}) {
  const links = data.links
    .map((l) => ({ source: l.source, target: l.target, value: value(l), raw: l }))
    .filter((l) => l.value > 0);
  if (!links.length) return empty();
  const used = new Set(links.flatMap((l) => [l.source, l.target]));
  const names = new Map(data.nodes.map((n) => [n.id, n.name]));
  const nodes = data.nodes.filter((n) => used.has(n.id)).map((n) => ({ name: n.id, side: n.side }));
  return {
    ...ANIM,
    color: PALETTE,
    tooltip: {
      trigger: 'item',
      confine: true,
      // `tooltip(link, update)` may answer later through update(html) (ECharts' ticket API).
      formatter: (p, ticket, callback) => {
        if (p.dataType === 'edge') {
          if (tooltip) return tooltip(p.data.raw, (html) => callback(ticket, html));
          return `${esc(names.get(p.data.source))} → ${esc(names.get(p.data.target))}<br><b>${bytes(p.data.value)}</b>`;
        }
        return `${esc(names.get(p.name))}<br><b>${bytes(p.value)}</b>`;
      },
    },
    series: [{
      type: 'sankey',
      data: nodes,
      links,
      left: 8,
      right: 175,
      top: 8,
      bottom: 8,
      nodeGap: 5,
      nodeWidth: 12,
      draggable: false,
      layoutIterations: 16,
      emphasis: { focus: 'adjacency' },
      lineStyle: { color: 'gradient', opacity: 0.35, curveness: 0.5 },
      label: {
        fontSize: 11,
        formatter: (p) => short(names.get(p.name), 28),
      },
    }],
  };
}

/**
 * Lines over time from `/api/timeseries` series; `pick(point)` is the value (bits/s) of a
 * `[stepStart, bps, reverseBps]` point, `step` the answer's seconds per point (a minute, or an
 * hour over long ranges). Steps without traffic are drawn as zero.
 */
export function lines(series, pick, range, { step = 60, stack = false, area = false } = {}) {
  if (!series.length) return empty();
  const first = Math.floor(range.start / step) * step;
  const last = Math.floor((range.end - 1) / step) * step;
  const filled = (pts) => {
    const m = new Map(pts.map((p) => [p[0], pick(p)]));
    const out = [];
    if ((last - first) / step > 20000) return pts.map((p) => [p[0] * 1000, pick(p)]);
    for (let t = first; t <= last; t += step) out.push([t * 1000, m.get(t) ?? 0]);
    return out;
  };
  return {
    ...ANIM,
    color: PALETTE,
    tooltip: {
      trigger: 'axis',
      confine: true,
      valueFormatter: (v) => bps(v),
    },
    legend: { type: 'scroll', top: 0, textStyle: { fontSize: 11 }, formatter: (n) => short(n, 26) },
    grid: { left: 8, right: 16, top: 30, bottom: 8, containLabel: true },
    xAxis: { type: 'time', axisLabel: { fontSize: 10, hideOverlap: true } },
    yAxis: { type: 'value', axisLabel: { fontSize: 10, formatter: (v) => bps(v) } },
    series: series.map((s) => ({
      name: s.name,
      type: 'line',
      showSymbol: false,
      stack: stack ? 'total' : undefined,
      areaStyle: area ? { opacity: 0.25 } : undefined,
      data: filled(s.points),
    })),
  };
}

/** Horizontal bars, largest on top; `rows` are `{name, value}`. */
export function bars(rows, fmt = bytes) {
  if (!rows.length) return empty();
  const r = [...rows].reverse();
  return {
    ...ANIM,
    color: PALETTE,
    tooltip: { trigger: 'axis', axisPointer: { type: 'shadow' }, confine: true, valueFormatter: fmt },
    grid: { left: 8, right: 24, top: 8, bottom: 8, containLabel: true },
    xAxis: { type: 'value', axisLabel: { fontSize: 10, formatter: (v) => fmt(v), hideOverlap: true } },
    yAxis: {
      type: 'category',
      data: r.map((x) => x.name),
      axisLabel: { fontSize: 11, formatter: (n) => short(n, 30) },
    },
    series: [{ type: 'bar', data: r.map((x) => x.value), barMaxWidth: 18 }],
  };
}

export function pie(rows, fmt = bytes) {
  if (!rows.some((r) => r.value > 0)) return empty();
  return {
    ...ANIM,
    color: PALETTE,
    tooltip: { trigger: 'item', confine: true, valueFormatter: fmt },
    legend: { bottom: 0, textStyle: { fontSize: 11 } },
    series: [{
      type: 'pie',
      radius: ['40%', '68%'],
      center: ['50%', '45%'],
      data: rows,
      label: { formatter: '{d}%', fontSize: 11 },
    }],
  };
}

/** Mbps per (source Node, destination Node) from `/api/node-matrix`. */
export function heatmap(matrix) {
  if (!matrix.cells.length) return empty();
  const idx = new Map(matrix.nodes.map((n, i) => [n, i]));
  const data = matrix.cells.map((c) => [idx.get(c.dst), idx.get(c.src), c.mbps]);
  const max = Math.max(...matrix.cells.map((c) => c.mbps), 0.001);
  return {
    ...ANIM,
    tooltip: {
      confine: true,
      formatter: (p) => `${esc(matrix.nodes[p.value[1]])} → ${esc(matrix.nodes[p.value[0]])}<br><b>${p.value[2].toFixed(3)} Mbps</b>`,
    },
    grid: { left: 8, right: 16, top: 8, bottom: 44, containLabel: true },
    xAxis: { type: 'category', data: matrix.nodes, splitArea: { show: true }, axisLabel: { fontSize: 11, hideOverlap: true } },
    yAxis: { type: 'category', data: matrix.nodes, splitArea: { show: true }, axisLabel: { fontSize: 11 } },
    visualMap: {
      min: 0,
      max,
      orient: 'horizontal',
      left: 'center',
      bottom: 0,
      itemHeight: 120,
      text: [`${max.toFixed(2)} Mbps`, '0'],
      inRange: { color: ['#eef3fb', '#8fb0e8', '#3b6fd8', '#1b3d87'] },
    },
    series: [{
      type: 'heatmap',
      data,
      label: { show: matrix.nodes.length <= 8, fontSize: 10, formatter: (p) => p.value[2].toFixed(2) },
      emphasis: { itemStyle: { borderColor: '#333', borderWidth: 1 } },
    }],
  };
}
