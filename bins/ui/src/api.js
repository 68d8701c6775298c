// JSON over the collector's /api: every failure becomes an ApiError whose message names the
// endpoint and carries the server's {"error": ...} text, so the UI can show it as is.

export class ApiError extends Error {}

export function query(params = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}

export async function api(path, params = {}) {
  const url = `/api/${path}${query(params)}`;
  let res;
  try {
    res = await fetch(url, { headers: { Accept: 'application/json' } });
  } catch (e) {
    throw new ApiError(`GET ${url}: collector unreachable (${e.message})`);
  }
  const text = await res.text();
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    // handled below
  }
  if (!res.ok) {
    const why = (body && body.error) || text.slice(0, 300) || res.statusText;
    throw new ApiError(`GET ${url}: ${res.status} ${why}`);
  }
  if (body === null) throw new ApiError(`GET ${url}: the answer is not JSON`);
  return body;
}

let flowParams;
// Parameters /api/flows accepts, from the OpenAPI document: lets Flow Records filter on the
// server whatever the server can filter, and narrow the rest in the browser.
export async function flowParamNames() {
  if (!flowParams) {
    flowParams = api('openapi.json').then(
      (doc) => new Set((doc.paths?.['/api/flows']?.get?.parameters ?? []).map((p) => p.name)),
      (e) => {
        flowParams = undefined;
        throw e;
      },
    );
  }
  return flowParams;
}
