// Shared by /billing and /admin: JSON API calls, number and date formatting, a tiny DOM
// builder (text only: nothing is ever parsed as HTML), messages, and ledger wording.

/** An API answer that was not 2xx, or no answer at all (status 0: network error). */
export class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

/** Call the JSON API; resolves with the body, rejects with an ApiError. */
export async function api(path, { token, method = "GET", body, query } = {}) {
  const url = new URL(path, window.location.origin);
  for (const [key, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
  }
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  let data = null;
  try {
    response = await fetch(url, {
      method, headers, cache: "no-store", credentials: "omit",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    data = await response.json().catch(() => null);
  } catch {
    throw new ApiError(0, "network_error", "could not reach the server", null);
  }
  if (!response.ok) {
    const wait = Number.parseInt(response.headers.get("Retry-After") || "", 10);
    throw new ApiError(response.status, data?.error || `http_${response.status}`,
      data?.message || response.statusText, Number.isFinite(wait) ? Math.max(wait, 1) : null);
  }
  return data;
}

// -- formatting (the browser's locale and time zone) --------------------------------------

const integer = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
const day = new Intl.DateTimeFormat(undefined, { year: "numeric", month: "short", day: "numeric" });
const dayTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });

export const fmtInt = (n) => integer.format(n);
export const fmtDate = (iso) => day.format(new Date(iso));
export const fmtDateTime = (iso) => dayTime.format(new Date(iso));

/** "3 minutes ago", "in 12 days", "now". */
export function fmtRelative(iso, now = Date.now()) {
  const seconds = (new Date(iso).getTime() - now) / 1000;
  const units = [["day", 86400], ["hour", 3600], ["minute", 60]];
  for (const [unit, size] of units) {
    if (Math.abs(seconds) >= size) return relative.format(Math.round(seconds / size), unit);
  }
  return relative.format(0, "second");
}

/** A <time> element: the readable text, the exact moment in `datetime` and the tooltip. */
export function timeEl(iso, text) {
  return h("time", { datetime: iso, title: fmtDateTime(iso) }, text ?? fmtDateTime(iso));
}

// -- DOM ------------------------------------------------------------------------------

/** h("p", {class: "x", onclick: fn, "aria-label": "y"}, "text", child, [more]) */
export function h(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key in node && typeof value !== "string") node[key] = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else node.append(child instanceof Node ? child : String(child));
  }
}

export const $ = (selector, root = document) => root.querySelector(selector);

/** Replace a node's children. */
export function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

// -- messages ---------------------------------------------------------------------------

/**
 * Messages go to two live regions that exist from page load: `status` (polite: success,
 * info) and `alert` (assertive: warnings, errors). Showing one clears the other.
 * `action` is an optional {label, run} button shown beside the text.
 */
export class Messages {
  constructor(status, alert) {
    this.status = status;
    this.alert = alert;
  }

  show(kind, text, action) {
    const urgent = kind === "error" || kind === "warning";
    const target = urgent ? this.alert : this.status;
    fill(urgent ? this.status : this.alert);
    const button = action
      ? h("button", { type: "button", class: "btn small", onclick: action.run }, action.label)
      : null;
    fill(target, h("div", { class: `notice ${kind}` }, h("p", {}, text), button));
    return button;
  }

  clear() {
    fill(this.status);
    fill(this.alert);
  }
}

// -- the ledger in words ----------------------------------------------------------------

export const KIND_LABELS = {
  provision: "Installed",
  plan_change: "Plan changed",
  drift_repair: "Credits repaired",
  period_reset: "Monthly reset",
  usage: "Credits used",
  adjustment: "Bonus adjusted",
  expiry: "Plan expired",
  grant: "Credits granted",
  grant_expired: "Grant expired",
  grant_voided: "Grant voided",
  rollover: "Credits rolled over",
};

export const ACTOR_LABELS = {
  webhook: "a billing event",
  timer: "the automatic check",
  manual: "Sync Credits",
  provision: "the app",
  admin: "support",
  cli: "an operator",
  app: "the app",
};

export function capitalize(text) {
  return text ? text.charAt(0).toUpperCase() + text.slice(1) : text;
}

/** Plan names from GET /api/plans (falls back to the id, capitalized, like the server). */
export class PlanNames {
  constructor(list = []) {
    this.list = list;
    this.byId = new Map(list.map((plan) => [plan.id, plan]));
  }

  label(id) {
    return this.byId.get(id)?.displayName || capitalize(id);
  }

  static async load() {
    try {
      return new PlanNames((await api("/api/plans")).plans);
    } catch {
      return new PlanNames(); // names are a nicety: the ids still say it all
    }
  }
}

/** "before → after" as a node; just the value when it did not change. */
export function beforeAfter(before, after, format = String) {
  if (before === after || before === null || before === undefined) return format(after);
  return [format(before), h("span", { class: "arrow", "aria-hidden": "true" }, " → "),
    h("span", { class: "visually-hidden" }, " to "), format(after)];
}

/** The lines of what a ledger entry changed: plan, allocation, usage, bonus. */
export function describeEntry(entry, names) {
  const lines = [];
  const line = (label, before, after, format) => lines.push(
    h("span", { class: "change" }, `${label} `, beforeAfter(before, after, format)));
  if (entry.planBefore === null) {
    line("Plan", null, entry.planAfter, (id) => names.label(id));
    line("Credits", null, entry.creditsTotalAfter, fmtInt);
    return lines;
  }
  if (entry.planBefore !== entry.planAfter) {
    line("Plan", entry.planBefore, entry.planAfter, (id) => names.label(id));
  }
  if (entry.creditsTotalBefore !== entry.creditsTotalAfter) {
    line("Credits", entry.creditsTotalBefore, entry.creditsTotalAfter, fmtInt);
  }
  if (entry.creditsUsedBefore !== entry.creditsUsedAfter) {
    line("Used", entry.creditsUsedBefore, entry.creditsUsedAfter, fmtInt);
  }
  if (entry.bonusBefore !== entry.bonusAfter) {
    line("Bonus", entry.bonusBefore, entry.bonusAfter, fmtInt);
  }
  if (!lines.length) lines.push(h("span", { class: "muted" }, "No change"));
  return lines;
}

/** The "why" of a ledger entry: its reason, and who made the change. */
export function whyEntry(entry) {
  const by = ACTOR_LABELS[entry.actor] || entry.actor;
  return [entry.reason ? h("span", { class: "change" }, capitalize(entry.reason)) : null,
    h("span", { class: "change muted small" }, `By ${by}`)];
}

// -- grants -----------------------------------------------------------------------------

export const GRANT_STATUS = {
  live: ["ok", "Active"], spent: ["neutral", "Used up"], expired: ["neutral", "Expired"],
  voided: ["warn", "Voided"],
};

export const GRANT_SOURCE = {
  admin: "From support", app: "From the app", rollover: "Rolled over from last period",
  migration: "Bonus credits",
};

/** When a grant's remainder leaves: "Never", or its date with how soon. */
function grantExpiry(grant) {
  if (!grant.expiresAt) return h("span", { class: "muted" }, "Never");
  if (grant.status !== "live") return timeEl(grant.expiresAt, fmtDate(grant.expiresAt));
  return [timeEl(grant.expiresAt, fmtDate(grant.expiresAt)),
    h("span", { class: "change muted small" }, fmtRelative(grant.expiresAt))];
}

/**
 * A grants table, live ones first in the order they are spent (billing and the admin's
 * instance view share it); `action(grant)` adds a last column (the admin's Void button).
 */
export function grantsTable(grants, caption, { action } = {}) {
  const columns = ["Credits left", "Expires", "From", "Status", ...(action ? [""] : [])];
  const rows = grants.map((grant) => {
    const [tone, label] = GRANT_STATUS[grant.status] || ["neutral", grant.status];
    return h("tr", { "data-grant": grant.grantId, "data-status": grant.status },
      cell("Credits left", h("span", { class: "num" }, fmtInt(grant.remaining)),
        h("span", { class: "muted" }, ` of ${fmtInt(grant.amount)}`)),
      cell("Expires", grantExpiry(grant)),
      cell("From", GRANT_SOURCE[grant.source] || grant.source,
        h("span", { class: "change muted small" }, capitalize(grant.reason))),
      cell("Status", h("span", { class: `pill ${tone}` }, label)),
      action ? cell("Actions", action(grant)) : null);
  });
  if (!rows.length) {
    rows.push(h("tr", {}, h("td", { colspan: String(columns.length), class: "empty" },
      "No grants.")));
  }
  return h("table", { class: "data stacked" },
    h("caption", { class: "visually-hidden" }, caption),
    h("thead", {}, h("tr", {}, columns.map((name) => h("th", { scope: "col" },
      name || h("span", { class: "visually-hidden" }, "Actions"))))),
    h("tbody", {}, rows));
}

/** A table cell labelled by its column (narrow screens show the label beside the value). */
export function cell(label, ...content) {
  return h("td", { "data-label": label }, h("div", {}, content));
}

/** A ledger table (billing and the admin's instance view share it). */
export function historyTable(entries, names, caption) {
  const rows = entries.map((entry) => h("tr", { "data-kind": entry.kind },
    cell("When", timeEl(entry.at)),
    cell("What", KIND_LABELS[entry.kind] || entry.kind),
    cell("Change", describeEntry(entry, names)),
    cell("Why", whyEntry(entry))));
  if (!rows.length) {
    rows.push(h("tr", {}, h("td", { colspan: "4", class: "empty" }, "No changes yet.")));
  }
  return h("table", { class: "data stacked" },
    h("caption", { class: "visually-hidden" }, caption),
    h("thead", {}, h("tr", {}, ["When", "What", "Change", "Why"].map(
      (name) => h("th", { scope: "col" }, name)))),
    h("tbody", {}, rows));
}

/**
 * Keyset pages over a ledger (`before` = the last id seen). It asks for one row more than
 * it shows, so "Older" is only offered when there is an older row. A load that a newer
 * one overtook resolves to null and changes nothing.
 */
export class LedgerPager {
  constructor(fetchPage, size) {
    this.fetchPage = fetchPage; // (limit, before) => Promise<{entries}>
    this.size = size;
    this.cursors = [null];
    this.index = 0;
    this.hasOlder = false;
    this.latest = 0;
  }

  async load(index = 0) {
    const ticket = ++this.latest;
    const page = await this.fetchPage(this.size + 1, this.cursors[index] ?? null);
    if (ticket !== this.latest) return null;
    this.index = index;
    this.hasOlder = page.entries.length > this.size;
    const entries = page.entries.slice(0, this.size);
    this.cursors.length = index + 1;
    if (this.hasOlder) this.cursors.push(entries[entries.length - 1].id);
    return entries;
  }
}

/** Move focus to `target` when the focused element was removed or disabled. */
export function keepFocus(preferred, fallback) {
  const active = document.activeElement;
  if (active && active !== document.body && document.contains(active) && !active.disabled) {
    return;
  }
  const target = preferred && !preferred.disabled && !preferred.hidden ? preferred : fallback;
  target?.focus();
}
