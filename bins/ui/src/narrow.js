// Flow Records filters that /api/flows may not take: the server filters on what its OpenAPI
// document lists, and the browser narrows the rows for the rest. Each narrowing key has a
// server-side approximation (e.g. `srcPod` → `pod`, which matches either end), so the
// browser only drops rows from an already small page.

const podOf = (ns, name) => (ns ? `${ns}/${name}` : name);
const samePod = (want, ns, name) => (want.includes('/') ? podOf(ns, name) === want : name === want);
const policyOf = (ns, name) => (name ? podOf(ns, name) : '-');

/** key → { label, test(row, value), approx(value) → server params or null } */
export const NARROW = {
  srcPod: {
    label: 'source Pod',
    test: (r, v) => samePod(v, r.sourcePodNamespace, r.sourcePodName),
    approx: (v) => ({ pod: v }),
  },
  dstPod: {
    label: 'destination Pod',
    test: (r, v) => samePod(v, r.destinationPodNamespace, r.destinationPodName),
    approx: (v) => ({ pod: v }),
  },
  srcNode: {
    label: 'source Node',
    test: (r, v) => r.sourceNodeName === v,
    approx: (v) => ({ node: v }),
  },
  dstNode: {
    label: 'destination Node',
    test: (r, v) => r.destinationNodeName === v,
    approx: (v) => ({ node: v }),
  },
  peerIp: {
    label: 'either IP',
    test: (r, v) => r.sourceIPAddress === v || r.destinationIPAddress === v,
    approx: () => null,
  },
  external: {
    label: 'external traffic',
    test: (r) => r.flowType === 3 || r.flowType === 4,
    approx: () => null,
  },
  egressPolicy: {
    label: 'egress policy',
    test: (r, v) => policyOf(r.egressNetworkPolicyNamespace, r.egressNetworkPolicyName) === v,
    approx: (v) => (v === '-' ? null : { policy: v }),
  },
  ingressPolicy: {
    label: 'ingress policy',
    test: (r, v) => policyOf(r.ingressNetworkPolicyNamespace, r.ingressNetworkPolicyName) === v,
    approx: (v) => (v === '-' ? null : { policy: v }),
  },
};

/**
 * Splits the requested filters into server parameters and browser-side tests.
 * `wanted` maps filter names to values; `serverNames` is what /api/flows accepts.
 */
export function plan(wanted, serverNames) {
  const server = {};
  const local = [];
  for (const [k, v] of Object.entries(wanted)) {
    if (!v) continue;
    if (serverNames.has(k)) server[k] = v;
    else if (NARROW[k]) local.push([k, v]);
  }
  for (const [k, v] of local) {
    for (const [sk, sv] of Object.entries(NARROW[k].approx(v) || {})) {
      if (!server[sk] && serverNames.has(sk)) server[sk] = sv;
    }
  }
  const test = (row) => local.every(([k, v]) => NARROW[k].test(row, v));
  return { server, local, test };
}
