// Every call the page makes to the API, in one place: paths, headers, keys, error shapes.
//
// URLs are relative to the page (/ui/ -> ../v1/...), so the page works behind the chart's path
// prefixes (/model-a/ui/ talks to /model-a/v1/...). An API key, when the API asks for one, is
// kept in sessionStorage: it lives as long as the tab and is never written anywhere else.

const KEY_STORE = "maskfleet.apiKey";
const base = new URL("../", document.baseURI);

export class ApiError extends Error {
  constructor(status, title, detail) {
    super(detail || title || `HTTP ${status}`);
    this.status = status;
    this.title = title || `HTTP ${status}`;
  }

  /** The API wants a (different) key: 401 without or with a bad one, 403 without the scope. */
  get needsKey() {
    return this.status === 401 || this.status === 403;
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY_STORE) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORE, key);
  else sessionStorage.removeItem(KEY_STORE);
}

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function call(path, init = {}) {
  const url = new URL(path, base);
  const response = await fetch(url, {
    ...init,
    headers: { ...authHeaders(), ...(init.headers || {}) },
    credentials: "same-origin",
    cache: "no-store",
  });
  if (!response.ok) {
    let title = "", detail = "";
    try {
      const problem = await response.json();
      title = problem.title || "";
      detail = problem.detail || "";
    } catch {
      detail = `${response.status} ${response.statusText}`;
    }
    throw new ApiError(response.status, title, detail);
  }
  return response;
}

/** What the page shows and needs beside the API's own answers (GET /ui/config.json). */
export async function pageConfig() {
  return (await call("ui/config.json")).json();
}

function base64Bytes(text) {
  const raw = atob(text);
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}

/**
 * Segment one image. `stage` asks this API for a stage it also serves (?stage=), `variant`
 * asks the gateway for one Deployment (the HTTPRoute's variant header), `keep` asks the API
 * to keep the answer durably for a later correction.
 */
export async function segment(image, { stage = null, variant = null, keep = false } = {}) {
  const query = new URLSearchParams({ format: "json" });
  if (stage) query.set("stage", stage);
  if (keep) query.set("keep", "true");
  const headers = { "Content-Type": image.type || "application/octet-stream" };
  if (variant) headers[variant.header] = variant.value;
  const started = performance.now();
  const response = await call(`v1/segment?${query}`, { method: "POST", body: image, headers });
  const body = await response.json();
  const latencyMs = performance.now() - started;
  return {
    requestId: body.request_id || response.headers.get("X-Request-Id"),
    // Drawn by the server for this answer and this caller; names it in /v1/feedback. Absent
    // when the answer was not kept (not sampled, too large), so it cannot be corrected.
    feedbackToken: body.feedback_token || response.headers.get("X-Feedback-Token"),
    model: body.model,
    version: body.version,
    cached: body.cached,
    // "durable" (kept in storage for days), "short" (seconds to minutes), null (not kept)
    kept: response.headers.get("X-Feedback-Kept"),
    width: body.width,
    height: body.height,
    fractions: body.class_fractions,
    maskPng: base64Bytes(body.mask_png),
    latencyMs,
  };
}

/**
 * Send a corrected trimap PNG for an answer, named by its feedback token (which the API binds
 * to the key that received it); resolves to the receipt ({iou, version, ...}).
 */
export async function sendFeedback(answer, png) {
  const query = new URLSearchParams({ feedback_token: answer.feedbackToken });
  const headers = { "Content-Type": "image/png" };
  const response = await call(`v1/feedback?${query}`, { method: "POST", body: png, headers });
  return response.json();
}

export async function submitJob(request) {
  const response = await call("v1/jobs", {
    method: "POST", body: JSON.stringify(request), headers: { "Content-Type": "application/json" },
  });
  return response.json();
}

export async function job(jobId) {
  return (await call(`v1/jobs/${encodeURIComponent(jobId)}`)).json();
}

export async function jobItems(jobId, offset = 0, limit = 50) {
  const query = new URLSearchParams({ offset, limit });
  return (await call(`v1/jobs/${encodeURIComponent(jobId)}/items?${query}`)).json();
}

export async function jobItemFile(jobId, index, which) {
  const response = await call(`v1/jobs/${encodeURIComponent(jobId)}/items/${index}/${which}`);
  return response.blob();
}
