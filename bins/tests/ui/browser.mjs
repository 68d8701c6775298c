// Browser checks of the flowlens UI, run by bins/tests/ui_browser.rs against a seeded collector.
// Env: FLOWLENS_URL (the UI), FLOWLENS_SHOTS (screenshot dir), FLOWLENS_CHROMIUM (browser),
// PLAYWRIGHT_CORE (the playwright-core package directory).
//
// For each dashboard: it opens, its charts draw data, a filter narrows them, and a click on a
// sankey link (or heatmap cell) opens Flow Records filtered to what was clicked. Also: API
// errors are shown, no request leaves the collector's origin, no script error happens, and
// the page fits a 1366×768 screen without horizontal scrolling.

import { createRequire } from 'node:module';
import path from 'node:path';

const require = createRequire(import.meta.url);
const { chromium } = require(process.env.PLAYWRIGHT_CORE);
const BASE = process.env.FLOWLENS_URL;
const SHOTS = process.env.FLOWLENS_SHOTS;

const results = [];
let page;

async function check(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    results.push([name, null]);
    console.log(`ok   ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    results.push([name, e]);
    console.log(`FAIL ${name}: ${e.stack || e}`);
    await shot(`FAILED-${name.replace(/\W+/g, '-')}`).catch(() => {});
  }
}

function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

async function shot(name) {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}

/** Waits for the UI to finish a load that started after `before` loads. */
async function settled(before) {
  await page.waitForFunction((n) => window.flowlens && window.flowlens.loads > n
    && document.body.dataset.state !== 'loading', before, { timeout: 20000 });
  await page.waitForTimeout(250); // ECharts draws on the next frame (animations are off)
}

const loads = () => page.evaluate(() => (window.flowlens ? window.flowlens.loads : 0));

async function open(hash) {
  const onPage = page.url().startsWith(BASE);
  const before = onPage ? await loads() : 0;
  if (onPage) await page.evaluate((h) => { location.hash = h; }, hash);
  else await page.goto(`${BASE}${hash}`);
  await settled(before);
}

/** A fresh page load (not a hash change) of `hash`. */
async function fresh(hash) {
  await page.goto('about:blank');
  await page.goto(`${BASE}${hash}`);
}

/** What each chart on the page draws: series type, item count and value sum. */
function charts() {
  return page.evaluate(() => [...document.querySelectorAll('.chart')].map((el) => {
    const c = window.flowlens.chartOf(el);
    const opt = c ? c.getOption() : { series: [] };
    const s = opt.series || [];
    let items = 0;
    let sum = 0;
    const names = [];
    for (const x of s) {
      const data = x.type === 'sankey' ? (x.links || []) : (x.data || []);
      items += data.length;
      for (const d of data) {
        const v = x.type === 'sankey' ? d.value
          : Array.isArray(d) ? d[d.length - 1]
            : typeof d === 'object' && d ? (Array.isArray(d.value) ? d.value[d.value.length - 1] : d.value) : d;
        sum += Number(v) || 0;
      }
      if (x.type === 'sankey') names.push(...(x.data || []).map((n) => n.name));
      else if (x.name) names.push(x.name);
    }
    const yCats = (opt.yAxis || []).flatMap((a) => a.data || []);
    const canvas = !!el.querySelector('canvas');
    return { id: el.id, types: s.map((x) => x.type), items, sum, names, yCats, canvas, title: (opt.title || [])[0]?.text };
  }));
}

async function chartsById() {
  return Object.fromEntries((await charts()).map((c) => [c.id, c]));
}

function assertDrawn(cs, ids) {
  for (const id of ids) {
    const c = cs[id];
    assert(c, `chart ${id} missing`);
    assert(c.canvas, `chart ${id} has no canvas`);
    assert(c.items > 0 && c.sum > 0, `chart ${id} draws no data (${JSON.stringify(c)})`);
  }
}

/** Sets the shared namespace filter and applies it. */
async function filterNamespace(ns) {
  const before = await loads();
  await page.fill('#f-namespace', ns);
  await page.click('#controls button[type=submit]');
  await settled(before);
}

/** Page pixel of the middle of sankey link `i` in chart element `id` (ECharts' own layout). */
function linkPoint(id, i) {
  return page.evaluate(([id, i]) => {
    const el = document.getElementById(id);
    const c = window.flowlens.chartOf(el);
    const series = c.getModel().getSeriesByIndex(0);
    const graph = series.getGraph();
    const edge = graph.edges[i];
    if (!edge) return null;
    const l = edge.getLayout();
    const n1 = edge.node1.getLayout();
    const n2 = edge.node2.getLayout();
    const info = series.layoutInfo;
    const x1 = n1.x + n1.dx;
    const y1 = n1.y + l.sy + l.dy / 2;
    const x2 = n2.x;
    const y2 = n2.y + l.ty + l.dy / 2;
    const r = el.getBoundingClientRect();
    return {
      x: r.left + info.x + (x1 + x2) / 2,
      y: r.top + info.y + (y1 + y2) / 2,
      dy: l.dy,
      source: edge.node1.id,
      target: edge.node2.id,
      links: graph.edges.length,
    };
  }, [id, i]);
}

/** Clicks sankey links in `id`, thickest first, until one navigates; returns the new hash. */
async function clickSankeyLink(id) {
  const order = await page.evaluate((id) => {
    const c = window.flowlens.chartOf(document.getElementById(id));
    const g = c.getModel().getSeriesByIndex(0).getGraph();
    return g.edges.map((e, i) => [i, e.getLayout().dy]).sort((a, b) => b[1] - a[1]).map((x) => x[0]);
  }, id);
  const start = page.url();
  for (const i of order.slice(0, 6)) {
    const p = await linkPoint(id, i);
    if (!p || p.dy < 2) continue;
    const before = await loads();
    await page.mouse.move(p.x, p.y);
    await page.waitForTimeout(150);
    await page.mouse.click(p.x, p.y);
    await page.waitForTimeout(300);
    if (page.url() !== start) {
      await settled(before);
      return { point: p, hash: new URL(page.url()).hash };
    }
  }
  throw new Error(`no click on a link of ${id} navigated`);
}

/** Flow Records rows as shown: source/destination cells, protocol and policies. */
function flowRows() {
  return page.evaluate(() => [...document.querySelectorAll('#b-records tbody tr[data-i]')].map((tr) => {
    const rec = JSON.parse(tr.nextElementSibling.querySelector('pre').textContent);
    return rec;
  }));
}

const hashParams = (hash) => new URLSearchParams(hash.split('?')[1] || '');
const podOf = (ns, name) => `${ns}/${name}`;

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.FLOWLENS_CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const context = await browser.newContext({ viewport: { width: 1366, height: 768 } });
  // Charts draw without animation, so what is checked and photographed is the end state.
  await context.addInitScript(() => { window.FLOWLENS_NO_ANIMATION = true; });
  page = await context.newPage();
  const foreign = [];
  const pageErrors = [];
  const consoleErrors = [];
  page.on('request', (r) => {
    if (!r.url().startsWith(BASE) && !r.url().startsWith('data:')) foreign.push(r.url());
  });
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.on('console', (m) => {
    if (m.type() === 'error') consoleErrors.push(m.text());
  });

  await check('overview', async () => {
    await fresh('#/overview');
    await settled(0);
    const cs = await chartsById();
    assertDrawn(cs, ['c-types', 'c-series', 'c-pods', 'c-pairs', 'c-services']);
    const kpi = await page.textContent('[data-kpi=records]');
    assert(Number(kpi.replace(/,/g, '')) > 0, `records KPI is ${kpi}`);
    await shot('1-overview');
    await filterNamespace('shop');
    const after = await chartsById();
    assert(after['c-pods'].yCats.length > 0, 'no Pods after the namespace filter');
    // A Pod in `shop` or a peer of one: every pair involves shop.
    const pairs = after['c-pairs'].yCats;
    assert(pairs.length && pairs.every((n) => n.includes('shop/')), `pairs not narrowed: ${pairs}`);
    assert(after['c-pods'].sum < cs['c-pods'].sum, 'top Pods not narrowed');
    await shot('1-overview-filtered');
    await filterNamespace('');
  });

  await check('pod-to-pod', async () => {
    await open('#/pod-to-pod');
    const cs = await chartsById();
    assertDrawn(cs, ['c-tx', 'c-rx', 'c-src', 'c-dst']);
    await shot('2-pod-to-pod');
    await filterNamespace('payments');
    const after = await chartsById();
    assert(after['c-tx'].items > 0 && after['c-tx'].sum < cs['c-tx'].sum, 'Tx sankey not narrowed');
    const { hash } = await clickSankeyLink('c-tx');
    assert(hash.startsWith('#/flows'), `link led to ${hash}`);
    const q = hashParams(hash);
    const [src, dst] = [q.get('srcPod'), q.get('dstPod')];
    assert(src && dst, `no Pod pair in ${hash}`);
    assert(q.get('namespace') === 'payments', 'the namespace filter did not carry over');
    const rows = await flowRows();
    assert(rows.length > 0, `no flow records for ${src} → ${dst}`);
    for (const r of rows) {
      assert(podOf(r.sourcePodNamespace, r.sourcePodName) === src
        && podOf(r.destinationPodNamespace, r.destinationPodName) === dst,
      `record ${r.id} is not ${src} → ${dst}`);
    }
    await shot('2-pod-to-pod-link-to-flows');
    await filterNamespace('');
    // The same links as a table (for keyboards and screen readers) lead to the same records.
    await open('#/pod-to-pod');
    await page.click('#p-tx details.as-table summary');
    const first = page.locator('#p-tx details.as-table tbody a').first();
    const href = await first.getAttribute('href');
    const b = await loads();
    await first.focus();
    await page.keyboard.press('Enter');
    await settled(b);
    const q2 = hashParams(href);
    const rows2 = await flowRows();
    assert(rows2.length > 0 && rows2.every((r) => podOf(r.sourcePodNamespace, r.sourcePodName) === q2.get('srcPod')
      && podOf(r.destinationPodNamespace, r.destinationPodName) === q2.get('dstPod')), `table link ${href} records do not match`);
  });

  await check('pod-to-external', async () => {
    await open('#/pod-to-external');
    const cs = await chartsById();
    assertDrawn(cs, ['c-tx', 'c-rx', 'c-series', 'c-top']);
    await shot('3-pod-to-external');
    await filterNamespace('monitoring');
    const after = await chartsById();
    assert(after['c-tx'].items > 0 && after['c-tx'].sum < cs['c-tx'].sum, 'sankey not narrowed');
    const { hash } = await clickSankeyLink('c-tx');
    const q = hashParams(hash);
    const [pod, ip] = [q.get('pod'), q.get('peerIp')];
    assert(pod && ip, `no Pod/IP in ${hash}`);
    const rows = await flowRows();
    assert(rows.length > 0, `no flow records for ${pod} ↔ ${ip}`);
    for (const r of rows) {
      assert(r.sourceIPAddress === ip || r.destinationIPAddress === ip, `record ${r.id} does not involve ${ip}`);
      assert([podOf(r.sourcePodNamespace, r.sourcePodName), podOf(r.destinationPodNamespace, r.destinationPodName)].includes(pod),
        `record ${r.id} does not involve ${pod}`);
    }
    await shot('3-pod-to-external-link-to-flows');
    await filterNamespace('');
  });

  await check('pod-to-service', async () => {
    await open('#/pod-to-service');
    const cs = await chartsById();
    assertDrawn(cs, ['c-tx', 'c-rx', 'c-svc-tx', 'c-svc-rx']);
    // Hovering a link shows the client and Service addresses, looked up on demand.
    const p = await linkPoint('c-tx', 0);
    await page.mouse.move(p.x, p.y);
    await page.waitForFunction(() => /Service IP: 10\.96\./.test(document.querySelector('#c-tx').innerText), null, { timeout: 10000 });
    const tip = await page.evaluate(() => document.querySelector('#c-tx').innerText);
    assert(/Client IP: 10\./.test(tip), `tooltip without client IP: ${tip}`);
    await shot('4-pod-to-service-tooltip');
    await filterNamespace('shop');
    const after = await chartsById();
    assert(after['c-tx'].items > 0 && after['c-tx'].sum < cs['c-tx'].sum, 'sankey not narrowed');
    const { hash } = await clickSankeyLink('c-tx');
    const q = hashParams(hash);
    const [pod, svc] = [q.get('srcPod'), q.get('service')];
    assert(pod && svc, `no Pod/Service in ${hash}`);
    const rows = await flowRows();
    assert(rows.length > 0, `no flow records for ${pod} → ${svc}`);
    for (const r of rows) {
      assert(r.destinationServicePortName === svc && podOf(r.sourcePodNamespace, r.sourcePodName) === pod,
        `record ${r.id} is not ${pod} → ${svc}`);
    }
    await shot('4-pod-to-service-link-to-flows');
    await filterNamespace('');
  });

  await check('flow-records', async () => {
    await open('#/flows');
    let rows = await flowRows();
    assert(rows.length === 50, `first page has ${rows.length} rows`);
    await shot('5-flow-records');
    // Older → the next 50, older than the first page.
    let b0 = await loads();
    await page.click('#next');
    await settled(b0);
    const older = await flowRows();
    assert(older.length === 50 && older[0].flowEndSeconds <= rows[49].flowEndSeconds
      && !older.some((r) => rows.some((x) => x.id === r.id)), 'the second page is not the next 50 records');
    assert(/Records 51–100/.test(await page.textContent('#page')), 'pager text');
    b0 = await loads();
    await page.click('#prev');
    await settled(b0);
    const before = await loads();
    await page.fill('#flow-filters input[name=protocol]', 'udp');
    await page.selectOption('#flow-filters select[name=flowType]', '3');
    await page.click('#flow-filters button[type=submit]');
    await settled(before);
    rows = await flowRows();
    assert(rows.length > 0, 'no UDP records to external');
    assert(rows.every((r) => r.protocolIdentifier === 17 && r.flowType === 3), 'filter not applied');
    // A row opens to the whole record.
    await page.click('#b-records tbody tr[data-i] td');
    assert(await page.isVisible('#b-records tr.detail pre'), 'record detail did not open');
    await shot('5-flow-records-filtered');
    const b2 = await loads();
    await page.click('#flow-clear');
    await settled(b2);
  });

  await check('node-throughput', async () => {
    await open('#/nodes');
    const cs = await chartsById();
    assertDrawn(cs, ['c-inter', 'c-intra', 'c-heat', 'c-pernode']);
    await shot('6-node-throughput');
    const before = await loads();
    await page.fill('#f-node', 'node-1');
    await page.click('#controls button[type=submit]');
    await settled(before);
    const after = await chartsById();
    assert(after['c-inter'].names.every((n) => n.includes('node-1')), `series not narrowed: ${after['c-inter'].names}`);
    assert(after['c-heat'].sum < cs['c-heat'].sum, 'heatmap not narrowed');
    // Click the hottest heatmap cell → flow records between those Nodes.
    const cell = await page.evaluate(() => {
      const el = document.getElementById('c-heat');
      const c = window.flowlens.chartOf(el);
      const data = c.getOption().series[0].data;
      const best = data.reduce((a, d) => (d[2] > a[2] ? d : a));
      const [x, y] = c.convertToPixel({ seriesIndex: 0 }, [best[0], best[1]]);
      const r = el.getBoundingClientRect();
      return { x: r.left + x, y: r.top + y };
    });
    const b2 = await loads();
    await page.mouse.click(cell.x, cell.y);
    await settled(b2);
    const q = hashParams(new URL(page.url()).hash);
    const [sn, dn] = [q.get('srcNode'), q.get('dstNode')];
    assert(sn && dn, `heatmap click led to ${page.url()}`);
    const rows = await flowRows();
    assert(rows.length > 0, `no records ${sn} → ${dn}`);
    assert(rows.every((r) => r.sourceNodeName === sn && r.destinationNodeName === dn), 'records not narrowed to the Node pair');
    await shot('6-node-heatmap-to-flows');
    const b3 = await loads();
    await page.evaluate(() => { location.hash = '#/nodes'; });
    await settled(b3);
  });

  await check('network-policy', async () => {
    await open('#/policy');
    const cs = await chartsById();
    assertDrawn(cs, ['c-sankey']);
    assert(await page.locator('#b-pairs tbody tr').count() > 0, 'no Pod pair table');
    // Hover shows the Pod pairs under a policy pair.
    const p = await linkPoint('c-sankey', 0);
    await page.mouse.move(p.x, p.y);
    await page.waitForFunction(() => /Pod pair/.test(document.querySelector('#c-sankey').innerText), null, { timeout: 5000 });
    await shot('7-network-policy');
    // Filter on one egress policy: only its links remain.
    const egress = await page.evaluate(() => document.querySelector('#dl-egress option')?.value);
    assert(egress, 'no egress policy suggestions');
    const before = await loads();
    await page.fill('#policy-filters input[name=egress]', egress);
    await page.click('#policy-filters button[type=submit]');
    await settled(before);
    const after = await chartsById();
    const sources = after['c-sankey'].names.filter((n) => n.startsWith('s:'));
    assert(sources.length === 1 && sources[0] === `s:${egress}`, `sources after filter: ${sources}`);
    await shot('7-network-policy-filtered');
    const { hash } = await clickSankeyLink('c-sankey');
    const q = hashParams(hash);
    assert(q.get('egressPolicy') === egress, `link led to ${hash}`);
    const ingress = q.get('ingressPolicy');
    const rows = await flowRows();
    assert(rows.length > 0, `no records under ${egress} → ${ingress}`);
    const pol = (ns, n) => (n ? `${ns}/${n}` : '-');
    assert(rows.every((r) => pol(r.egressNetworkPolicyNamespace, r.egressNetworkPolicyName) === egress
      && pol(r.ingressNetworkPolicyNamespace, r.ingressNetworkPolicyName) === ingress), 'records not narrowed to the policies');
    await shot('7-network-policy-link-to-flows');
    // The Pod pair table links to that pair's records too.
    await open('#/policy');
    const link = page.locator('#b-pairs tbody a').first();
    const b4 = await loads();
    await link.click();
    await settled(b4);
    const q2 = hashParams(new URL(page.url()).hash);
    const rows2 = await flowRows();
    assert(rows2.length > 0, `no records for the table row ${q2}`);
    assert(rows2.every((r) => podOf(r.sourcePodNamespace, r.sourcePodName) === q2.get('srcPod')), 'table link records not narrowed');
  });

  await check('an empty range says so', async () => {
    // 1970: nothing stored there (and dates written as the API takes them).
    await fresh('#/pod-to-pod?start=1970-01-01T00:10:00Z&end=1970-01-01T01:00:00Z');
    await settled(0);
    assert(await page.evaluate(() => document.body.dataset.state) === 'ready', 'ISO dates in the URL');
    const cs = await charts();
    assert(cs.length === 4 && cs.every((c) => c.items === 0 && c.title === 'No data in this range'),
      `charts over an empty range: ${JSON.stringify(cs.map((c) => [c.id, c.items, c.title]))}`);
    await shot('9-empty-range');
  });

  await check('api errors are shown', async () => {
    await fresh('#/flows?srcPort=99999');
    await page.waitForFunction(() => document.body.dataset.state === 'error', null, { timeout: 10000 });
    const text = await page.textContent('#errors');
    assert(/400/.test(text) && /srcPort/.test(text), `error banner says: ${text}`);
    assert(await page.isVisible('#p-records .panel-error'), 'panel error not shown');
    await shot('8-api-error');
  });

  await check('time range picker and auto refresh', async () => {
    await fresh('#/overview');
    await settled(0);
    let before = await loads();
    await page.selectOption('#range', 'now-15m');
    await settled(before);
    assert(hashParams(new URL(page.url()).hash).get('start') === 'now-15m', 'range not in the URL');
    // Compared in bytes (the pie): series points are per minute, or per hour over 6 h.
    const c15 = (await chartsById())['c-types'];
    before = await loads();
    await page.selectOption('#range', 'now-6h');
    await settled(before);
    const c6h = (await chartsById())['c-types'];
    assert(c15.sum < c6h.sum, 'a shorter range does not show less traffic');
    // A custom range: the last 20 minutes as absolute times.
    await page.selectOption('#range', 'custom');
    assert(await page.isVisible('#start') && await page.isVisible('#end'), 'custom range inputs hidden');
    const local = (secs) => {
      const d = new Date(secs * 1000 - new Date().getTimezoneOffset() * 60000);
      return d.toISOString().slice(0, 19);
    };
    const now = Math.floor(Date.now() / 1000);
    await page.fill('#start', local(now - 1200));
    await page.fill('#end', local(now));
    before = await loads();
    await page.click('#controls button[type=submit]');
    await page.waitForFunction(() => /[?&]end=\d+/.test(location.hash), null, { timeout: 5000 });
    await settled(before);
    const q = hashParams(new URL(page.url()).hash);
    assert(Math.abs(Number(q.get('start')) - (now - 1200)) <= 1, `custom start ${q.get('start')}`);
    const c20 = (await chartsById())['c-types'];
    assert(c20.sum > 0 && c20.sum < c6h.sum, 'custom range not applied');
    // Over 24 h the API answers hourly points: the lines follow its step (no per-minute zeros).
    await fresh('#/pod-to-pod?start=now-24h');
    await settled(0);
    const day = (await chartsById())['c-src'];
    assert(day.sum > 0 && day.items / day.names.length <= 26, `24 h: ${day.items} points in ${day.names.length} series`);
    await shot('9-pod-to-pod-24h');
    await fresh('#/overview');
    await settled(0);
    before = await loads();
    await page.selectOption('#refresh', '10');
    await settled(before);
    const armed = await loads();
    await page.waitForFunction((n) => window.flowlens.loads > n, armed, { timeout: 15000 });
  });

  await check('fits a 1366x768 screen', async () => {
    for (const v of ['overview', 'pod-to-pod', 'flows', 'nodes', 'policy']) {
      await fresh(`#/${v}`);
      await settled(0);
      const w = await page.evaluate(() => document.documentElement.scrollWidth);
      assert(w <= 1366, `${v} is ${w}px wide`);
    }
  });

  await check('no foreign requests, no script errors', async () => {
    assert(!foreign.length, `requests left the collector: ${foreign.join(', ')}`);
    assert(!pageErrors.length, `page errors: ${pageErrors.join('\n')}`);
    // The one error the run provokes on purpose: srcPort=99999 (a 400).
    const unexpected = consoleErrors.filter((m) => !/status of 400/.test(m) && !/srcPort/.test(m));
    assert(!unexpected.length, `console errors: ${unexpected.join('\n')}`);
  });

  await browser.close();
  const failed = results.filter(([, e]) => e).length;
  console.log(`${results.length - failed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

main().catch((e) => {
  console.error(e);
  process.exit(2);
});
