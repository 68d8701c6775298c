// Small DOM helpers: dashboard panels, tables, and the error banner.

import { esc } from './format.js';

/** A titled panel; with `chart` it holds an ECharts canvas, else a plain body. */
export function panel(id, title, { cls = '', chart = true, hint = '' } = {}) {
  const inner = chart
    ? `<div class="chart" id="c-${id}" role="img" aria-label="${esc(title)}"></div>`
    : `<div class="body" id="b-${id}"></div>`;
  return `<section class="panel ${cls}" id="p-${id}" aria-labelledby="h-${id}">
    <header><h2 id="h-${id}">${esc(title)}</h2>${hint ? `<span class="hint">${esc(hint)}</span>` : ''}</header>
    ${inner}
    <p class="panel-error" role="alert" hidden></p>
  </section>`;
}

/** The chart or body element of panel `id`. */
export function slot(root, id) {
  return root.querySelector(`#c-${id}`) || root.querySelector(`#b-${id}`);
}

/** Shows (or clears, with null) an error inside panel `id`. */
export function panelError(root, id, message) {
  const p = root.querySelector(`#p-${id} .panel-error`);
  if (!p) return;
  p.hidden = !message;
  p.textContent = message || '';
}

const banner = () => document.getElementById('errors');

export function showErrors(messages) {
  const b = banner();
  if (!messages.length) {
    b.hidden = true;
    b.textContent = '';
    return;
  }
  b.hidden = false;
  b.innerHTML = `<strong>Some data could not be loaded:</strong><ul>${[...new Set(messages)]
    .map((m) => `<li>${esc(m)}</li>`).join('')}</ul>`;
}

/** A table: `cols` are `{label, cell(row) -> html, cls?}`. */
export function table(rows, cols, { caption = '', rowAttrs = () => '' } = {}) {
  const head = cols.map((c) => `<th scope="col" class="${c.cls || ''}">${esc(c.label)}</th>`).join('');
  const body = rows.map((r) => `<tr ${rowAttrs(r)}>${cols
    .map((c) => `<td class="${c.cls || ''}">${c.cell(r)}</td>`).join('')}</tr>`).join('');
  return `<table class="grid">${caption ? `<caption>${esc(caption)}</caption>` : ''}
    <thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>`;
}
