// Human-readable numbers, names and times.

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

export function bytes(n) {
  let v = Number(n) || 0;
  let i = 0;
  while (v >= 1024 && i < UNITS.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v.toFixed(i && v < 10 ? 1 : 0)} ${UNITS[i]}`;
}

export function bps(n) {
  const units = ['bps', 'kbps', 'Mbps', 'Gbps', 'Tbps'];
  let v = Number(n) || 0;
  let i = 0;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i += 1;
  }
  return `${v.toFixed(i && v < 10 ? 1 : 0)} ${units[i]}`;
}

export function count(n) {
  return (Number(n) || 0).toLocaleString('en-US');
}

export function time(secs) {
  if (!secs) return '–';
  const d = new Date(secs * 1000);
  const p = (x) => String(x).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

export const FLOW_TYPES = { 1: 'Intra-Node', 2: 'Inter-Node', 3: 'To external', 4: 'From external' };
export const PROTOCOLS = { 1: 'ICMP', 6: 'TCP', 17: 'UDP', 58: 'ICMPv6', 132: 'SCTP' };
export const ACTIONS = { 0: '', 1: 'Allow', 2: 'Drop', 3: 'Reject' };

export function pod(ns, name) {
  if (!name) return '';
  return ns ? `${ns}/${name}` : name;
}

export function policy(p) {
  return p && p.name ? pod(p.namespace, p.name) : '(no policy)';
}

export function short(s, max = 30) {
  const t = String(s ?? '');
  return t.length > max ? `${t.slice(0, max - 1)}…` : t;
}

const ESC = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
export function esc(s) {
  return String(s ?? '').replace(/[&<>"']/g, (c) => ESC[c]);
}
