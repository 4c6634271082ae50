// /admin: sign in with the admin token (sessionStorage: this tab's session only), then the
// overview charts, instances (filters, search, pages, one instance with its history, a
// bonus adjustment, its grants with Void and a form to grant more), bulk sync (dry run
// first, then apply), the webhook inbox with replay, the events to the app (deliveries)
// with replay, the marketplace audit (its last run, disagreements per day, the instances
// the marketplace did not answer for, and a run: dry run first, then apply), and the plan
// catalog.
// Everything comes from the admin API.

import {
  $, ApiError, LedgerPager, Messages, PlanNames, api, beforeAfter, cell, fill, fmtDate,
  fmtDateTime, fmtInt, fmtRelative, grantsTable, h, historyTable, keepFocus, timeEl,
} from "./common.js";
import { PALETTE, dayBars, hBars } from "./charts.js";

const TOKEN_KEY = "creditsync.adminToken";
const INSTANCES_PAGE = 25;
const WEBHOOKS_PAGE = 20;
const DELIVERIES_PAGE = 20;
const HISTORY_PAGE = 10;
// inbox statuses come from GET /api/vocabulary (the core's enums), never a copy here
let STATUSES = [];
let REPLAYABLE = new Set();
let DELIVERY_STATUSES = [];
const DELIVERY_PILLS = { pending: "info", delivered: "ok", dead: "bad" };
const STATUS_COLORS = { applied: "#1a7f37", duplicate: "#57606a", stale: "#6e5494",
  ignored: "#6a737d", quarantined: "#b35900", failed: "#b3261e", pending: "#0b5cad" };
const STATUS_PILLS = { applied: "ok", duplicate: "neutral", stale: "neutral", ignored: "neutral",
  quarantined: "warn", failed: "bad", pending: "info" };

// `driftReason` lists the steps a sync would take, e.g. "plan_change,period_reset"
const DRIFT_REASONS = {
  plan_change: "a purchase or plan change is waiting to be applied",
  drift_repair: "credits differ from what the plan pays for",
  period_reset: "the monthly reset is due",
  rollover: "its unused plan credits roll over at that reset",
  expiry: "the paid plan has expired",
  plan_missing: "its plan is missing from the catalog",
};

let token = window.sessionStorage.getItem(TOKEN_KEY);
let names = new PlanNames();

// -- API access and errors ----------------------------------------------------------------

async function call(path, options = {}) {
  try {
    return await api(path, { ...options, token });
  } catch (error) {
    if (error.status === 401 && token) {
      signOut("The admin token was not accepted any more: sign in again.");
    }
    throw error;
  }
}

function explain(error, messages, retry) {
  const again = retry ? { label: "Retry", run: retry } : undefined;
  if (!(error instanceof ApiError)) {
    console.warn(error); // a bug in this page: keep the console honest about it
    messages.show("error", "Something went wrong in this page: reload it and try again.");
  } else if (error.status === 0) {
    messages.show("error", "Could not reach creditsync: check your connection, then retry.",
      again);
  } else if (error.status === 401) {
    messages.show("error", "Signed out: the admin token was not accepted.");
  } else if (error.status === 503 || error.status === 429) {
    messages.show("error", `creditsync is busy: try again in ${error.retryAfter || 5} s.`, again);
  } else {
    messages.show("error", `${capitalizeFirst(error.message)}.`.replace(/\.\.$/, "."), again);
  }
}

const capitalizeFirst = (text) => text.charAt(0).toUpperCase() + text.slice(1);

function driftText(reason) {
  return capitalizeFirst((reason || "").split(",").filter(Boolean)
    .map((step) => DRIFT_REASONS[step] || step.replaceAll("_", " ")).join("; "));
}

// -- sign in / out --------------------------------------------------------------------------

const signinMessages = new Messages($("#signin-alert"), $("#signin-alert"));

async function signIn(event) {
  event.preventDefault();
  const input = $("#token");
  const candidate = input.value.trim();
  if (!candidate) {
    input.setAttribute("aria-invalid", "true");
    signinMessages.show("error", "Enter the admin token.");
    input.focus();
    return;
  }
  try {
    await api("/api/admin/stats", { token: candidate, query: { days: 1 } });
  } catch (error) {
    input.setAttribute("aria-invalid", "true");
    if (error.status === 401) {
      signinMessages.show("error", "That is not the admin token: check " +
        "CREDITSYNC_ADMIN_TOKEN and try again.");
    } else {
      explain(error, signinMessages);
    }
    input.focus();
    return;
  }
  input.removeAttribute("aria-invalid");
  input.value = "";
  token = candidate;
  window.sessionStorage.setItem(TOKEN_KEY, token);
  signinMessages.clear();
  await showApp();
  $("#app h1").focus();
}

function signOut(reason) {
  token = null;
  window.sessionStorage.removeItem(TOKEN_KEY);
  $("#app").hidden = true;
  $("#sign-out").hidden = true;
  $("#signin").hidden = false;
  if (reason) signinMessages.show("error", reason);
  else signinMessages.clear();
  $("#token").focus();
}

async function showApp() {
  $("#signin").hidden = true;
  $("#app").hidden = false;
  $("#sign-out").hidden = false;
  await refreshPlans();
  await Promise.all([loadOverview(), loadInstances(0), loadWebhooks(0), loadDeliveries(0)]);
}

// -- plans ----------------------------------------------------------------------------------

async function refreshPlans() {
  names = await PlanNames.load();
  const select = $("#f-plan");
  const chosen = select.value;
  fill(select, h("option", { value: "" }, "Any"),
    names.list.map((plan) => h("option", { value: plan.id }, plan.displayName)));
  select.value = names.byId.has(chosen) ? chosen : "";
  const rows = names.list.map((plan) => h("tr", {},
    cell("Plan", h("code", {}, plan.id)),
    cell("Name", plan.displayName),
    cell("Credits a month", fmtInt(plan.monthlyCredits)),
    cell("Product ids", plan.aliases.length
      ? plan.aliases.map((alias, i) => [i ? ", " : "", h("code", {}, alias)])
      : h("span", { class: "muted" }, "none")),
    cell("Default", plan.default ? "Yes (new and expired instances)" : "")));
  fill($("#plans-body"), h("table", { class: "data stacked" },
    h("caption", { class: "visually-hidden" }, "Plan catalog"),
    head(["Plan", "Name", "Credits a month", "Product ids", "Default"]),
    h("tbody", {}, rows.length ? rows
      : h("tr", {}, h("td", { colspan: "5", class: "empty" }, "Could not load the catalog.")))));
}

function head(columns) {
  return h("thead", {}, h("tr", {}, columns.map((name) => (typeof name === "string"
    ? h("th", { scope: "col" }, name) : name))));
}

// -- overview -------------------------------------------------------------------------------

const overviewMessages = new Messages($("#overview-alert"), $("#overview-alert"));

function daysBetween(since, until) {
  const days = [];
  const end = until.slice(0, 10);
  for (let d = new Date(`${since.slice(0, 10)}T00:00:00Z`); ; d.setUTCDate(d.getUTCDate() + 1)) {
    const iso = d.toISOString().slice(0, 10);
    days.push(iso);
    if (iso >= end || days.length > 400) break;
  }
  return days;
}

async function loadOverview() {
  let stats;
  $("#audit").setAttribute("aria-busy", "true");
  try {
    stats = await call("/api/admin/stats", { query: { days: 30 } });
  } catch (error) {
    explain(error, overviewMessages, loadOverview);
    $("#audit").setAttribute("aria-busy", "false");
    return;
  }
  overviewMessages.clear();
  const days = daysBetween(stats.since, stats.until);
  const index = new Map(days.map((day, i) => [day, i]));
  const repairs = days.map(() => 0);
  for (const row of stats.repairsPerDay) repairs[index.get(row.day)] = row.repairs;

  const byPlan = new Map();
  for (const row of stats.creditsUsedByPlanPerDay) {
    if (!byPlan.has(row.plan)) byPlan.set(row.plan, days.map(() => 0));
    byPlan.get(row.plan)[index.get(row.day)] = row.credits;
  }
  const order = [...names.list.map((plan) => plan.id),
    ...[...byPlan.keys()].filter((id) => !names.byId.has(id)).sort()];
  const series = order.filter((id) => byPlan.has(id)).map((id) => ({
    name: names.label(id), values: byPlan.get(id),
    color: PALETTE[order.indexOf(id) % PALETTE.length] }));
  const used = series.reduce((sum, s) => sum + s.values.reduce((a, b) => a + b, 0), 0);
  const webhooks = stats.webhooksByStatus;
  const backlog = (webhooks.failed || 0) + (webhooks.quarantined || 0) + (webhooks.pending || 0);

  $("#tile-instances").textContent = fmtInt(stats.instances);
  $("#tile-repairs").textContent = fmtInt(repairs.reduce((a, b) => a + b, 0));
  $("#tile-backlog").textContent = fmtInt(backlog);
  $("#tile-used").textContent = fmtInt(used);
  fill($("#updated"), "Updated ", timeEl(stats.until, fmtDateTime(stats.until)));

  dayBars($("#chart-repairs"), { days, what: "Repairs per day", unit: "repairs",
    series: [{ name: "Repairs", color: PALETTE[0], values: repairs }] });
  hBars($("#chart-webhooks"), { what: "Webhooks by outcome", unit: "events",
    items: STATUSES.map((status) => ({ label: status, value: webhooks[status] || 0,
      color: STATUS_COLORS[status] })) });
  dayBars($("#chart-usage"), { days, what: "Credits used by plan per day", unit: "credits",
    series: series.length ? series : [{ name: "Credits", color: PALETTE[0],
      values: days.map(() => 0) }] });
  renderAudit(stats.audit, days);
  $("#audit").setAttribute("aria-busy", "false");
}

// -- instances ------------------------------------------------------------------------------

const instanceMessages = new Messages($("#instances-alert"), $("#instances-alert"));
const instances = { filters: {}, cursors: [null], index: 0, items: [], selected: new Set(),
  latest: 0 };

function readFilters() {
  const form = $("#filters");
  instances.filters = {
    q: form.q.value.trim(), drifted: form.drifted.value, plan: form.plan.value,
    removed: form.removed.value,
  };
}

async function loadInstances(index, { userAction = false } = {}) {
  const body = $("#instances-body");
  const ticket = ++instances.latest;
  body.setAttribute("aria-busy", "true");
  $("#instances-prev").disabled = $("#instances-next").disabled = true;
  let page;
  try {
    page = await call("/api/admin/instances", { query: {
      ...instances.filters, limit: INSTANCES_PAGE, cursor: instances.cursors[index] } });
  } catch (error) {
    if (ticket !== instances.latest) return;
    body.setAttribute("aria-busy", "false");
    explain(error, instanceMessages, () => loadInstances(index, { userAction }));
    return;
  }
  if (ticket !== instances.latest) return; // a newer load (new filters, another page) won
  instances.index = index;
  instances.items = page.items;
  instances.cursors.length = index + 1;
  if (page.nextCursor) instances.cursors.push(page.nextCursor);
  renderInstances();
  body.setAttribute("aria-busy", "false");
  const first = index * INSTANCES_PAGE + 1;
  instanceMessages.clear();
  $("#instances-summary").textContent = page.items.length
    ? `Showing instances ${fmtInt(first)}–${fmtInt(first + page.items.length - 1)}` +
      `${page.nextCursor ? "; more on the next page" : ""}.`
    : "No instances match these filters.";
  $("#instances-prev").disabled = index === 0;
  $("#instances-next").disabled = !page.nextCursor;
  $("#instances-where").textContent = `Page ${index + 1}`;
  if (userAction) keepFocus(null, $("#instances-title"));
}

function statusCell(item) {
  if (item.subscriptionStatus === "removed") {
    return [h("span", { class: "pill neutral" }, "Uninstalled"),
      item.inSync ? null : h("span", { class: "change small muted" }, driftText(item.driftReason))];
  }
  if (item.inSync) return h("span", { class: "pill ok" }, "In sync");
  return [h("span", { class: "pill warn" }, "Drifted"),
    h("span", { class: "change small" }, driftText(item.driftReason))];
}

function renderInstances() {
  const all = h("input", { type: "checkbox", id: "select-page",
    "aria-label": "Select every instance on this page", onchange: (event) => {
      for (const item of instances.items) {
        if (event.target.checked) instances.selected.add(item.instanceId);
        else instances.selected.delete(item.instanceId);
      }
      renderInstances();
      selectionChanged();
      $("#select-page").focus();
    } });
  const rows = instances.items.map((item) => {
    const chosen = instances.selected.has(item.instanceId);
    const box = h("input", { type: "checkbox", checked: chosen, value: item.instanceId,
      "aria-label": `Select ${item.instanceId}`, onchange: (event) => {
        if (event.target.checked) instances.selected.add(item.instanceId);
        else instances.selected.delete(item.instanceId);
        event.target.closest("tr").classList.toggle("selected", event.target.checked);
        syncPageBox();
        selectionChanged();
      } });
    const plan = item.plan === item.desiredPlan ? names.label(item.plan)
      : beforeAfter(item.plan, item.desiredPlan, (id) => names.label(id));
    return h("tr", { class: chosen ? "selected" : undefined, "data-instance": item.instanceId },
      h("td", { class: "no-label corner" }, box),
      cell("Instance", h("button", { type: "button", class: "linklike",
        onclick: (event) => openDetail(item.instanceId, event.currentTarget) }, item.instanceId)),
      cell("Plan", plan),
      cell("Credits", `${fmtInt(item.creditsRemaining)} left of ${fmtInt(item.creditsTotal)}`,
        item.bonusCredits ? h("span", { class: "change small muted" },
          `incl. ${fmtInt(item.bonusCredits)} bonus`) : null,
        item.creditsHeld ? h("span", { class: "change small muted" },
          `${fmtInt(item.creditsHeld)} held`) : null,
        item.creditsTotal !== item.desiredCreditsTotal && item.desiredCreditsTotal !== null
          ? h("span", { class: "change small" }, `plan pays ${fmtInt(item.desiredCreditsTotal)}`)
          : null),
      cell("Used", fmtInt(item.creditsUsed)),
      cell("Status", statusCell(item)),
      cell("Last synced", item.lastSyncedAt
        ? timeEl(item.lastSyncedAt, fmtRelative(item.lastSyncedAt)) : "never"));
  });
  if (!rows.length) {
    rows.push(h("tr", {}, h("td", { colspan: "7", class: "empty" },
      "No instances match these filters.")));
  }
  fill($("#instances-body"), h("table", { class: "data stacked" },
    h("caption", { class: "visually-hidden" }, "Instances"),
    head([h("th", { scope: "col" }, all), "Instance", "Plan", "Credits", "Used", "Status",
      "Last synced"]),
    h("tbody", {}, rows)));
  syncPageBox();
}

function syncPageBox() {
  const box = $("#select-page");
  if (!box) return;
  const onPage = instances.items.filter((item) => instances.selected.has(item.instanceId));
  box.checked = onPage.length > 0 && onPage.length === instances.items.length;
  box.indeterminate = onPage.length > 0 && onPage.length < instances.items.length;
}

// -- one instance -----------------------------------------------------------------------------

const detail = { id: null, opener: null, pager: null };
const detailMessages = new Messages($("#detail-status"), $("#detail-alert"));

async function openDetail(id, opener) {
  detail.id = id;
  detail.opener = opener || null;
  detail.pager = new LedgerPager((limit, before) => call(
    `/api/admin/instances/${encodeURIComponent(id)}/history`, { query: { limit, before } }),
  HISTORY_PAGE);
  detailMessages.clear();
  $("#adjust").reset();
  resetGrantForm();
  $("#detail").hidden = false;
  $("#detail-title").textContent = `Instance ${id}`;
  await refreshDetail();
  $("#detail-title").focus();
}

async function refreshDetail({ index = 0, userAction = false } = {}) {
  const id = detail.id;
  try {
    const [found, entries, granted] = await Promise.all([
      call(`/api/admin/instances/${encodeURIComponent(id)}`), detail.pager.load(index),
      call(`/api/admin/instances/${encodeURIComponent(id)}/grants`)]);
    if (id !== detail.id || !entries) return; // another instance or page was asked for
    renderFacts(found.instance);
    fill($("#detail-grants"), grantsTable(granted.grants, `Grants of ${id}`, {
      action: (grant) => (grant.status === "live" ? h("button", { type: "button",
        class: "btn small", "aria-label": `Void the grant of ${fmtInt(grant.amount)} credits`,
        onclick: (event) => voidGrant(grant, event.currentTarget) }, "Void") : null) }));
    fill($("#detail-history"), historyTable(entries, names, `Credit history of ${id}`));
  } catch (error) {
    explain(error, detailMessages, () => refreshDetail({ index, userAction }));
    return;
  }
  $("#detail-newer").disabled = detail.pager.index === 0;
  $("#detail-older").disabled = !detail.pager.hasOlder;
  $("#detail-where").textContent = `Page ${detail.pager.index + 1}`;
  if (userAction) keepFocus(null, $("#detail-history-title"));
}

function renderFacts(item) {
  const fact = (label, ...value) => h("div", {}, h("dt", {}, label), h("dd", {}, value));
  const subscription = item.subscriptionStatus
    ? [capitalizeFirst(item.subscriptionStatus),
      item.expiresAt ? h("span", { class: "muted" }, ` until ${fmtDate(item.expiresAt)}`) : null]
    : h("span", { class: "muted" }, "none (default plan)");
  fill($("#detail-facts"),
    h("dl", { class: "facts" },
      fact("Plan", names.label(item.plan)),
      fact("Subscription says", names.label(item.desiredPlan), h("span", { class: "muted" },
        item.desiredCreditsTotal === null ? " (not in the catalog)"
          : ` · ${fmtInt(item.desiredCreditsTotal)}`)),
      fact("Credits a month", fmtInt(item.creditsTotal)),
      fact("Used this period", fmtInt(item.creditsUsed)),
      fact("Bonus credits", h("span", { id: "detail-bonus" }, fmtInt(item.bonusCredits))),
      fact("Held by open reservations", h("span", { id: "detail-held" },
        fmtInt(item.creditsHeld))),
      fact("Credits left", fmtInt(item.creditsRemaining)),
      fact("Period", `${fmtDate(item.periodStart)} – ${fmtDate(item.periodEnd)}`),
      fact("Subscription", subscription),
      fact("Last synced", item.lastSyncedAt
        ? timeEl(item.lastSyncedAt, fmtRelative(item.lastSyncedAt)) : "never"),
      fact("Installed", timeEl(item.createdAt, fmtDate(item.createdAt)))),
    h("p", { class: "drift-note" }, item.inSync
      ? h("span", { class: "pill ok" }, "In sync")
      : [h("span", { class: "pill warn" }, "Drifted"), " ", driftText(item.driftReason)]));
}

function closeDetail() {
  $("#detail").hidden = true;
  // back to the button that opened it, or to its row's button if the list was redrawn
  const opener = detail.opener && document.contains(detail.opener) ? detail.opener
    : $(`tr[data-instance="${CSS.escape(detail.id)}"] .linklike`);
  detail.id = null;
  (opener || $("#instances-title")).focus();
}

async function adjust(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const deltaInput = form.delta;
  const reasonInput = form.reason;
  const delta = Number(deltaInput.value);
  const reason = reasonInput.value.trim();
  deltaInput.removeAttribute("aria-invalid");
  reasonInput.removeAttribute("aria-invalid");
  if (!deltaInput.value || !Number.isInteger(delta) || delta === 0) {
    deltaInput.setAttribute("aria-invalid", "true");
    detailMessages.show("error", "Enter a whole number of credits other than 0.");
    deltaInput.focus();
    return;
  }
  if (!reason) {
    reasonInput.setAttribute("aria-invalid", "true");
    detailMessages.show("error", "Say why: the reason goes into the credit history.");
    reasonInput.focus();
    return;
  }
  const id = detail.id;
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    const result = await call(`/api/admin/instances/${encodeURIComponent(id)}/adjust`,
      { method: "POST", body: { bonusCreditsDelta: delta, reason } });
    form.reset();
    detailMessages.show("success", `Bonus credits of ${id}: ` +
      `${fmtInt(result.entry.bonusBefore)} → ${fmtInt(result.entry.bonusAfter)}.`);
    await Promise.all([refreshDetail(), loadInstances(instances.index)]);
  } catch (error) {
    explain(error, detailMessages);
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
    keepFocus(button, button);
  }
}

// one idempotency key per grant the form makes: a retried or doubled submit grants once
// (getRandomValues, not randomUUID: that one needs a secure context)
const newKey = () => Array.from(crypto.getRandomValues(new Uint8Array(16)),
  (byte) => byte.toString(16).padStart(2, "0")).join("");
let grantKey = newKey();

function resetGrantForm() {
  $("#grant").reset();
  grantKey = newKey();
}

async function grant(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const amount = Number(form.amount.value);
  const priority = Number(form.priority.value || 50);
  const reason = form.reason.value.trim();
  for (const input of [form.amount, form.reason, form.priority, form.expires]) {
    input.removeAttribute("aria-invalid");
  }
  const invalid = (input, message) => {
    input.setAttribute("aria-invalid", "true");
    detailMessages.show("error", message);
    input.focus();
  };
  if (!form.amount.value || !Number.isInteger(amount) || amount < 1) {
    invalid(form.amount, "Enter a whole number of credits, 1 or more.");
    return;
  }
  if (!reason) {
    invalid(form.reason, "Say why: the reason goes into the credit history.");
    return;
  }
  if (!Number.isInteger(priority) || priority < 0 || priority > 100) {
    invalid(form.priority, "Priority is a whole number from 0 to 100.");
    return;
  }
  const expiresAt = form.expires.value ? `${form.expires.value}T00:00:00Z` : null;
  if (expiresAt && new Date(expiresAt) <= new Date()) {
    invalid(form.expires, "Pick a day in the future, or leave it empty for no expiry.");
    return;
  }
  const id = detail.id;
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    const made = await call(`/api/admin/instances/${encodeURIComponent(id)}/grants`,
      { method: "POST", body: { amount, reason, priority, expiresAt, idempotencyKey: grantKey } });
    resetGrantForm();
    detailMessages.show("success", `Granted ${fmtInt(made.amount)} credits to ${id}` +
      (made.expiresAt ? `, expiring on ${fmtDate(made.expiresAt)}.` : ", never expiring."));
    await Promise.all([refreshDetail(), loadInstances(instances.index)]);
  } catch (error) {
    explain(error, detailMessages);
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
    keepFocus(button, button);
  }
}

async function voidGrant(found, button) {
  const id = detail.id;
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    await call(`/api/admin/instances/${encodeURIComponent(id)}/grants/` +
      `${encodeURIComponent(found.grantId)}/void`, { method: "POST", body: {} });
    detailMessages.show("success", `Voided the grant of ${fmtInt(found.amount)} credits: ` +
      `its ${fmtInt(found.remaining)} remaining credits left ${id}.`);
    await Promise.all([refreshDetail(), loadInstances(instances.index)]);
  } catch (error) {
    explain(error, detailMessages);
  } finally {
    keepFocus(null, $("#detail-grants-title"));
  }
}

async function syncOne() {
  const id = detail.id;
  const button = $("#detail-sync");
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    const result = await call("/api/admin/sync", { method: "POST",
      body: { instanceIds: [id], dryRun: false } });
    const change = result.changes[0];
    detailMessages.show(change ? "success" : "info", change
      ? `Synced ${id}: ${describeNumbers(change.before, change.after)}.`
      : `${id} was already in sync: nothing changed.`);
    await Promise.all([refreshDetail(), loadInstances(instances.index), loadOverview()]);
  } catch (error) {
    explain(error, detailMessages, syncOne);
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
    keepFocus(button, button);
  }
}

function describeNumbers(before, after) {
  const parts = [];
  if (before.plan !== after.plan) {
    parts.push(`plan ${names.label(before.plan)} → ${names.label(after.plan)}`);
  }
  if (before.creditsTotal !== after.creditsTotal) {
    parts.push(`credits ${fmtInt(before.creditsTotal)} → ${fmtInt(after.creditsTotal)}`);
  }
  if (before.creditsUsed !== after.creditsUsed) {
    parts.push(`used ${fmtInt(before.creditsUsed)} → ${fmtInt(after.creditsUsed)}`);
  }
  return parts.join(", ") || "period advanced";
}

// -- bulk sync ------------------------------------------------------------------------------

const bulkMessages = new Messages($("#bulk-status"), $("#bulk-alert"));
let preview = null; // the scope a shown dry run was made for

function scope() {
  const all = $("#bulk-form").scope.value === "all";
  return all ? { all: true } : { instanceIds: [...instances.selected].sort() };
}

function selectionChanged() {
  $("#selected-count").textContent = fmtInt(instances.selected.size);
  if (preview && !preview.all) discardPreview("The selection changed: preview again.");
}

function discardPreview(why) {
  preview = null;
  fill($("#bulk-diff"));
  if (why) bulkMessages.show("info", why);
}

async function previewSync(event) {
  event.preventDefault();
  const chosen = scope();
  if (chosen.instanceIds && !chosen.instanceIds.length) {
    bulkMessages.show("error", "Select instances in the list above, or choose Every instance.");
    return;
  }
  discardPreview();
  const button = $("#bulk-preview");
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    const result = await call("/api/admin/sync", { method: "POST",
      body: { ...chosen, dryRun: true } });
    showPreview(chosen, result);
  } catch (error) {
    explain(error, bulkMessages);
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
    keepFocus(button, button);
  }
}

function diffRows(changes) {
  return changes.map((change) => h("tr", {},
    cell("Instance", h("code", {}, change.instanceId)),
    cell("Plan", beforeAfter(change.before.plan, change.after.plan, (id) => names.label(id))),
    cell("Credits a month", beforeAfter(change.before.creditsTotal, change.after.creditsTotal,
      fmtInt)),
    cell("Used", beforeAfter(change.before.creditsUsed, change.after.creditsUsed, fmtInt)),
    cell("Why", change.steps.map((step) => h("span", { class: "change" },
      capitalizeFirst(step.reason))))));
}

function showPreview(chosen, result) {
  const scanned = `${fmtInt(result.scanned)} instance${result.scanned === 1 ? "" : "s"} scanned`;
  if (!result.repaired) {
    bulkMessages.show("info", `Nothing to change: ${scanned}, all in sync` +
      `${result.planMissing ? ` (${fmtInt(result.planMissing)} on a plan missing from the ` +
        "catalog, left alone)" : ""}.`);
    return;
  }
  preview = chosen;
  const count = `${fmtInt(result.repaired)} instance${result.repaired === 1 ? "" : "s"}`;
  bulkMessages.show("info", `Dry run: ${count} would change (${scanned}). Nothing was ` +
    "written yet.");
  const apply = h("button", { type: "button", class: "btn primary", id: "bulk-apply",
    onclick: applySync }, `Apply to ${count}`);
  fill($("#bulk-diff"),
    h("div", { class: "table-wrap" }, h("table", { class: "data stacked" },
      h("caption", {}, `What the sync would change${result.changesTruncated
        ? ` (the first ${fmtInt(result.changes.length)} of ${fmtInt(result.repaired)})` : ""}`),
      head(["Instance", "Plan", "Credits a month", "Used", "Why"]),
      h("tbody", {}, diffRows(result.changes)))),
    h("div", { class: "form-actions actions" }, apply,
      h("button", { type: "button", class: "btn", onclick: () => {
        discardPreview("Preview discarded: nothing was changed.");
        $("#bulk-preview").focus();
      } }, "Discard")));
}

async function applySync() {
  const chosen = preview;
  const button = $("#bulk-apply");
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    const result = await call("/api/admin/sync", { method: "POST",
      body: { ...chosen, dryRun: false } });
    discardPreview();
    const repaired = `${fmtInt(result.repaired)} instance${result.repaired === 1 ? "" : "s"}`;
    if (result.failed) {
      bulkMessages.show("warning", `Repaired ${repaired}; ${fmtInt(result.failed)} failed ` +
        "and will be retried by the next sync.");
    } else {
      bulkMessages.show("success", `Applied: ${repaired} repaired.`);
    }
    if (chosen.instanceIds) instances.selected.clear();
    selectionChanged();
    await Promise.all([loadInstances(0), loadOverview()]);
  } catch (error) {
    explain(error, bulkMessages, applySync);
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
  keepFocus(null, $("#bulk-preview"));
}

// -- webhooks -------------------------------------------------------------------------------

const webhookMessages = new Messages($("#webhooks-status"), $("#webhooks-alert"));
const webhooks = { cursors: [null], index: 0, latest: 0 };

function hint(event) {
  if (event.status === "quarantined") {
    const known = event.productId && names.list.some(
      (plan) => plan.id === event.productId || plan.aliases.includes(event.productId));
    return known
      ? `The catalog knows ${event.productId} now: replay it.`
      : ["No plan has product id ", h("code", {}, event.productId || "(none)"),
        ": add it to the catalog, then replay."];
  }
  if (event.lastError) return event.lastError;
  if (event.status === "pending" && event.nextAttemptAt) {
    return ["Next attempt ", timeEl(event.nextAttemptAt, fmtRelative(event.nextAttemptAt))];
  }
  return event.appliedAt ? ["Applied ", timeEl(event.appliedAt, fmtRelative(event.appliedAt))]
    : "";
}

// One page of a paged admin list (`list`: its `cursors`, `index` and `latest` ticket):
// the request, a newer request winning over an older one, the error explained with a
// retry, and the cursors of the pages around it. The page, or null when nothing is to show.
async function fetchPage(list, index, { prefix, url, query, cursor, next, messages, retry }) {
  const body = $(`#${prefix}-body`);
  const ticket = ++list.latest;
  body.setAttribute("aria-busy", "true");
  $(`#${prefix}-prev`).disabled = $(`#${prefix}-next`).disabled = true;
  let page;
  try {
    page = await call(url, { query: { ...query, [cursor]: list.cursors[index] } });
  } catch (error) {
    if (ticket !== list.latest) return null;
    body.setAttribute("aria-busy", "false");
    explain(error, messages, retry);
    return null;
  }
  if (ticket !== list.latest) return null; // a newer load (another status or page) won
  list.index = index;
  list.cursors.length = index + 1;
  if (page[next]) list.cursors.push(page[next]);
  return page;
}

// The page shown: the pager's buttons and where it is; focus kept after a user's move.
function showPage(prefix, index, hasNext, userAction) {
  $(`#${prefix}-body`).setAttribute("aria-busy", "false");
  $(`#${prefix}-prev`).disabled = index === 0;
  $(`#${prefix}-next`).disabled = !hasNext;
  $(`#${prefix}-where`).textContent = `Page ${index + 1}`;
  if (userAction) keepFocus(null, $(`#${prefix}-title`));
}

// A status filter's options with their counts ("All events" counts every status).
function countOptions(select, statuses, counts) {
  const total = statuses.reduce((sum, s) => sum + (counts[s] || 0), 0);
  for (const option of select.options) {
    const count = option.value ? counts[option.value] || 0 : total;
    option.textContent = `${option.value ? capitalizeFirst(option.value) : "All events"} ` +
      `(${fmtInt(count)})`;
  }
}

async function loadWebhooks(index, { userAction = false } = {}) {
  const status = $("#wh-status").value;
  const body = $("#webhooks-body");
  const page = await fetchPage(webhooks, index, {
    prefix: "webhooks", url: "/api/admin/webhooks", query: { status, limit: WEBHOOKS_PAGE },
    cursor: "cursor", next: "nextCursor", messages: webhookMessages,
    retry: () => loadWebhooks(index, { userAction }) });
  if (page === null) return;
  countOptions($("#wh-status"), STATUSES, page.counts);
  fill($("#wh-counts"), ["failed", "quarantined", "pending"].map((s) => h("li", {},
    h("span", { class: `pill ${page.counts[s] ? STATUS_PILLS[s] : "neutral"}` },
      `${capitalizeFirst(s)} ${fmtInt(page.counts[s] || 0)}`))));

  const rows = page.items.map((event) => h("tr", { "data-event": event.eventId,
    "data-status": event.status },
  cell("Received", timeEl(event.receivedAt, fmtRelative(event.receivedAt))),
  cell("Event", event.eventType),
  cell("Instance", h("code", {}, event.instanceId)),
  cell("Product", event.productId ? h("code", {}, event.productId)
    : h("span", { class: "muted" }, "—")),
  cell("Status", h("span", { class: `pill ${STATUS_PILLS[event.status] || "neutral"}` },
    event.status)),
  cell("Attempts", fmtInt(event.attempts)),
  cell("Details", hint(event)),
  h("td", { class: "no-label" }, REPLAYABLE.has(event.status)
    ? h("button", { type: "button", class: "btn small",
      "aria-label": `Replay ${event.eventType} for ${event.instanceId}`,
      onclick: (click) => replay(event, click.currentTarget) }, "Replay")
    : null)));
  if (!rows.length) {
    rows.push(h("tr", {}, h("td", { colspan: "8", class: "empty" },
      status ? `No ${status} events.` : "The inbox is empty.")));
  }
  fill(body, h("table", { class: "data stacked" },
    h("caption", { class: "visually-hidden" }, "Webhook events, newest first"),
    head(["Received", "Event", "Instance", "Product", "Status", "Attempts", "Details",
      h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "Actions"))]),
    h("tbody", {}, rows)));
  showPage("webhooks", index, Boolean(page.nextCursor), userAction);
}

async function replay(event, button) {
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    const result = await call(`/api/admin/webhooks/${encodeURIComponent(event.eventId)}/replay`,
      { method: "POST" });
    const what = `${event.eventType} for ${event.instanceId}`;
    if (result.status === "applied") {
      webhookMessages.show("success", `Replayed ${what}: applied, and the instance converged.`);
    } else if (result.status === "quarantined") {
      webhookMessages.show("warning", `${what} is still quarantined: no plan has product id ` +
        `${event.productId} yet. Add it (creditsync plans apply, or a CreditPlan), then replay.`);
    } else {
      webhookMessages.show("info", `Replayed ${what}: ${result.status}.`);
    }
  } catch (error) {
    explain(error, webhookMessages);
  }
  await refreshPlans();
  await Promise.all([loadWebhooks(webhooks.index), loadOverview(), loadInstances(instances.index)]);
  keepFocus(null, $("#webhooks-title"));
}

// -- events to the app ----------------------------------------------------------------------

const deliveryMessages = new Messages($("#deliveries-status"), $("#deliveries-alert"));
const deliveries = { cursors: [null], index: 0, latest: 0 };

function deliveryHint(item) {
  if (item.status === "delivered" && item.deliveredAt) {
    return ["Delivered ", timeEl(item.deliveredAt, fmtRelative(item.deliveredAt))];
  }
  const parts = [];
  if (item.lastError) parts.push(item.lastError);
  if (item.status === "pending" && item.nextAttemptAt) {
    parts.push(parts.length ? " · next attempt " : "Next attempt ",
      timeEl(item.nextAttemptAt, fmtRelative(item.nextAttemptAt)));
  }
  if (item.status === "dead") parts.push(parts.length ? " · gave up" : "Gave up");
  return parts;
}

async function loadDeliveries(index, { userAction = false } = {}) {
  const status = $("#dl-status").value;
  const body = $("#deliveries-body");
  const page = await fetchPage(deliveries, index, {
    prefix: "deliveries", url: "/api/admin/deliveries",
    query: { status, limit: DELIVERIES_PAGE }, cursor: "before", next: "nextBefore",
    messages: deliveryMessages, retry: () => loadDeliveries(index, { userAction }) });
  if (page === null) return;
  countOptions($("#dl-status"), DELIVERY_STATUSES, page.counts);
  fill($("#dl-counts"), ["dead", "pending"].map((s) => h("li", {},
    h("span", { class: `pill ${page.counts[s] ? DELIVERY_PILLS[s] : "neutral"}` },
      `${capitalizeFirst(s)} ${fmtInt(page.counts[s] || 0)}`))));

  const rows = page.items.map((item) => h("tr", { "data-delivery": item.webhookId,
    "data-status": item.status },
  cell("Created", timeEl(item.createdAt, fmtRelative(item.createdAt))),
  cell("Event", h("code", {}, item.type)),
  cell("Instance", h("code", {}, item.instanceId)),
  cell("Status", h("span", { class: `pill ${DELIVERY_PILLS[item.status] || "neutral"}` },
    item.status)),
  cell("Attempts", fmtInt(item.attempts)),
  cell("Details", deliveryHint(item)),
  h("td", { class: "no-label" }, item.status !== "pending"
    ? h("button", { type: "button", class: "btn small",
      "aria-label": `Send ${item.type} for ${item.instanceId} again`,
      onclick: (click) => replayDelivery(item, click.currentTarget) },
    item.status === "dead" ? "Replay" : "Send again")
    : null)));
  if (!rows.length) {
    rows.push(h("tr", {}, h("td", { colspan: "7", class: "empty" },
      status ? `No ${status} events.` : "No events to the app yet.")));
  }
  fill(body, h("table", { class: "data stacked" },
    h("caption", { class: "visually-hidden" }, "Events to the app, newest first"),
    head(["Created", "Event", "Instance", "Status", "Attempts", "Details",
      h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "Actions"))]),
    h("tbody", {}, rows)));
  showPage("deliveries", index, Boolean(page.nextBefore), userAction);
}

async function replayDelivery(item, button) {
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    await call(`/api/admin/deliveries/${encodeURIComponent(item.webhookId)}/replay`,
      { method: "POST" });
    deliveryMessages.show("success", `${item.type} for ${item.instanceId} is queued again ` +
      `(webhook id ${item.webhookId}): it goes out next in its instance's line.`);
  } catch (error) {
    explain(error, deliveryMessages);
  }
  await loadDeliveries(deliveries.index);
  keepFocus(null, $("#deliveries-title"));
}

// -- marketplace audit ----------------------------------------------------------------------

// What the audit did about a disagreement (the core's AuditAction), as a pill; an action this
// page does not know yet is shown as the API names it.
const AUDIT_PILLS = { healed: "ok", would_heal: "info", quarantined: "warn", none: "neutral" };
const AUDIT_LABELS = { healed: "Healed", would_heal: "Would heal", quarantined: "Quarantined",
  none: "Nothing to do" };

const auditMessages = new Messages($("#audit-status"), $("#audit-alert"));
let auditPreview = null; // the scope a shown dry run was made for

const plural = (n, word) => `${fmtInt(n)} ${word}${n === 1 ? "" : "s"}`;

function renderAudit(audit, days) {
  const last = audit.last;
  fill($("#audit-when"), audit.lastRunAt
    ? timeEl(audit.lastRunAt, fmtRelative(audit.lastRunAt)) : "Never");
  $("#audit-checked").textContent = last ? fmtInt(last.checked) : "—";
  $("#audit-disagreed").textContent = last ? fmtInt(last.disagreed) : "—";
  $("#audit-healed").textContent = last ? fmtInt(last.healed) : "—";
  $("#audit-errors").textContent = last ? fmtInt(last.errors) : "—";
  $("#audit-queue").textContent = audit.neverChecked
    ? `${plural(audit.neverChecked, "instance")} never asked about yet: the next audit asks ` +
      "about them first."
    : "Every instance has been asked about at least once.";

  const index = new Map(days.map((day, i) => [day, i]));
  const healed = days.map(() => 0);
  const unhealed = days.map(() => 0);
  for (const row of audit.perDay) {
    const i = index.get(row.day);
    if (i === undefined) continue;
    healed[i] = row.healed;
    unhealed[i] = Math.max(row.disagreed - row.healed, 0);
  }
  dayBars($("#chart-audit"), { days, what: "Disagreements per day", unit: "disagreements",
    series: [{ name: "Healed", color: PALETTE[2], values: healed },
      { name: "Not healed", color: PALETTE[1], values: unhealed }] });

  const shown = audit.unanswered.length;
  const most = audit.unansweredCount > shown ? ` (the ${fmtInt(shown)} most recent below)` : "";
  $("#audit-unanswered-summary").textContent = audit.unansweredCount
    ? `The marketplace could not answer for ${plural(audit.unansweredCount, "instance")} ` +
      `when last asked${most}; nothing was changed for them, and the audit asks again soon.`
    : "The marketplace answered for every instance it was asked about.";
  const rows = audit.unanswered.map((item) => h("tr", { "data-instance": item.instanceId },
    cell("Instance", h("code", {}, item.instanceId)),
    cell("Last checked", item.checkedAt ? timeEl(item.checkedAt, fmtRelative(item.checkedAt))
      : "never"),
    cell("Error", capitalizeFirst(item.error)),
    h("td", { class: "no-label" }, h("button", { type: "button", class: "btn small",
      "aria-label": `Ask again about ${item.instanceId}`,
      onclick: () => askAgain(item.instanceId) }, "Ask again"))));
  fill($("#audit-unanswered"), rows.length ? h("table", { class: "data stacked" },
    h("caption", { class: "visually-hidden" },
      "Instances the marketplace could not answer for, most recent first"),
    head(["Instance", "Last checked", "Error",
      h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "Actions"))]),
    h("tbody", {}, rows)) : null);
}

/** "Ask again" beside an unanswered instance: a dry run for that instance alone. */
function askAgain(instanceId) {
  const form = $("#audit-form");
  form.scope.value = "listed";
  scopeChanged();
  form.ids.value = instanceId;
  form.requestSubmit();
}

function auditScope() {
  const form = $("#audit-form");
  if (form.scope.value === "all") return { all: true };
  return { instanceIds: [...new Set(form.ids.value.split(/[\s,]+/).filter(Boolean))] };
}

function scopeChanged() {
  const all = $("#audit-form").scope.value === "all";
  $("#audit-ids").disabled = all;
  $("#audit-ids").removeAttribute("aria-invalid");
  if (auditPreview) discardAudit("The instances to ask about changed: preview again.");
}

function discardAudit(why) {
  auditPreview = null;
  fill($("#audit-diff"));
  if (why) auditMessages.show("info", why);
}

function explainAudit(error, retry) {
  if (error instanceof ApiError && error.code === "marketplace_off") {
    auditMessages.show("warning", ["The marketplace source is off, so there is nobody to ask. ",
      "Set ", h("code", {}, "CREDITSYNC_WIX_APP_ID"), " (the app's id at the marketplace, with ",
      h("code", {}, "CREDITSYNC_APP_SECRET"), " as its secret) where creditsync runs, restart ",
      "it, and audit again."]);
    return;
  }
  explain(error, auditMessages, retry);
}

async function previewAudit(event) {
  event.preventDefault();
  const chosen = auditScope();
  const ids = $("#audit-ids");
  if (chosen.instanceIds && (!chosen.instanceIds.length || chosen.instanceIds.length > 1000)) {
    ids.setAttribute("aria-invalid", "true");
    auditMessages.show("error", chosen.instanceIds.length
      ? `That is ${fmtInt(chosen.instanceIds.length)} instance ids: list at most 1,000, or ` +
        "choose Every instance."
      : "List the instance ids to ask about, or choose Every instance.");
    ids.focus();
    return;
  }
  ids.removeAttribute("aria-invalid");
  discardAudit();
  auditMessages.clear();
  const button = $("#audit-preview");
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    const result = await call("/api/admin/audit", { method: "POST",
      body: { ...chosen, dryRun: true } });
    showAuditPreview(chosen, result);
  } catch (error) {
    explainAudit(error);
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
    keepFocus(button, button);
  }
}

function planName(id) {
  return names.byId.has(id) ? names.label(id) : h("code", {}, id);
}

function auditMeaning(item, dryRun) {
  switch (item.action) {
    case "would_heal":
      return "Applying stores what the marketplace says and applies it like the webhook " +
        "that never came.";
    case "healed":
      return "Applied like the webhook that never came; the instance converged.";
    case "quarantined":
      return ["No plan has product id ", h("code", {}, item.marketplacePlan), dryRun
        ? ": applying stores it quarantined and alerts; nobody is downgraded."
        : ": quarantined and alerted, nobody downgraded. Add it to the catalog, then replay " +
          "it in the inbox."];
    case "none":
      return "A newer webhook had already decided: nothing to do.";
    default:
      return "";
  }
}

function auditTable(result, dryRun) {
  const rows = result.disagreements.map((item) => h("tr", { "data-instance": item.instanceId,
    "data-action": item.action },
  cell("Instance", h("code", {}, item.instanceId)),
  cell("Our plan", planName(item.ourPlan)),
  cell("Marketplace", planName(item.marketplacePlan)),
  cell("Action", h("span", { class: `pill ${AUDIT_PILLS[item.action] || "neutral"}` },
    AUDIT_LABELS[item.action] || capitalizeFirst(item.action.replaceAll("_", " ")))),
  cell("Details", auditMeaning(item, dryRun))));
  return h("div", { class: "table-wrap" }, h("table", { class: "data stacked" },
    h("caption", {}, dryRun ? "Where the marketplace disagrees with our plan"
      : "What the audit did"),
    head(["Instance", "Our plan", "Marketplace", "Action", "Details"]),
    h("tbody", {}, rows)));
}

function unansweredNote(result) {
  return result.errors
    ? `; the marketplace could not answer for ${plural(result.errors, "instance")}` : "";
}

function showAuditPreview(chosen, result) {
  const checked = `${plural(result.checked, "instance")} checked`;
  if (!result.disagreed && result.errors) {
    auditMessages.show("warning", `The marketplace could not answer for ` +
      `${plural(result.errors, "instance")}${result.checked ? `; the ${plural(result.checked,
        "instance")} it answered for agree` : ""}. Nothing was written.`);
    return;
  }
  if (!result.disagreed) {
    auditMessages.show("info", `The marketplace agrees: ${checked}, nothing to heal.`);
    return;
  }
  auditPreview = chosen;
  const count = plural(result.disagreed, "instance");
  auditMessages.show(result.errors ? "warning" : "info", `Dry run: the marketplace disagrees ` +
    `on ${count} (${checked})${unansweredNote(result)}. Nothing was written yet.`);
  fill($("#audit-diff"), auditTable(result, true),
    h("div", { class: "form-actions actions" },
      h("button", { type: "button", class: "btn primary", id: "audit-apply",
        onclick: applyAudit }, `Apply to ${count}`),
      h("button", { type: "button", class: "btn", onclick: () => {
        discardAudit("Preview discarded: nothing was changed.");
        $("#audit-preview").focus();
      } }, "Discard")));
}

async function applyAudit() {
  const chosen = auditPreview;
  const button = $("#audit-apply");
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  $("#audit").setAttribute("aria-busy", "true"); // until the counts below are reloaded
  try {
    const result = await call("/api/admin/audit", { method: "POST",
      body: { ...chosen, dryRun: false } });
    discardAudit();
    const quarantined = result.disagreements.filter((d) => d.action === "quarantined").length;
    const odd = quarantined ? `, ${fmtInt(quarantined)} quarantined (a package no plan names; ` +
      "nobody was downgraded)" : "";
    const text = `Applied: ${plural(result.healed, "instance")} healed${odd} ` +
      `(${plural(result.checked, "instance")} checked)${unansweredNote(result)}.`;
    auditMessages.show(result.errors ? "warning" : "success", text);
    if (result.disagreements.length) fill($("#audit-diff"), auditTable(result, false));
    await Promise.all([loadOverview(), loadInstances(instances.index),
      loadWebhooks(webhooks.index)]);
  } catch (error) {
    explainAudit(error, applyAudit);
    button.disabled = false;
    button.removeAttribute("aria-busy");
    $("#audit").setAttribute("aria-busy", "false");
  }
  keepFocus(null, $("#audit-preview"));
}

// -- wiring ---------------------------------------------------------------------------------

function wire() {
  $("#signin-form").addEventListener("submit", signIn);
  $("#sign-out").addEventListener("click", () => signOut());
  $("#filters").addEventListener("submit", (event) => {
    event.preventDefault();
    readFilters();
    instances.cursors = [null];
    loadInstances(0);
  });
  $("#filters").addEventListener("reset", () => window.setTimeout(() => {
    readFilters();
    instances.cursors = [null];
    loadInstances(0);
  }));
  for (const select of $("#filters").querySelectorAll("select")) {
    select.addEventListener("change", () => $("#filters").requestSubmit());
  }
  $("#instances-prev").addEventListener("click",
    () => loadInstances(instances.index - 1, { userAction: true }));
  $("#instances-next").addEventListener("click",
    () => loadInstances(instances.index + 1, { userAction: true }));
  $("#detail-close").addEventListener("click", closeDetail);
  $("#detail").addEventListener("keydown", (event) => {
    if (event.key === "Escape") closeDetail();
  });
  $("#detail-newer").addEventListener("click", () => refreshDetail(
    { index: detail.pager.index - 1, userAction: true }));
  $("#detail-older").addEventListener("click", () => refreshDetail(
    { index: detail.pager.index + 1, userAction: true }));
  $("#adjust").addEventListener("submit", adjust);
  $("#grant").addEventListener("submit", grant);
  $("#detail-sync").addEventListener("click", syncOne);
  $("#bulk-form").addEventListener("submit", previewSync);
  $("#bulk-form").addEventListener("change", (event) => {
    if (event.target.name === "scope" && preview) discardPreview("The scope changed: preview again.");
  });
  $("#wh-status").addEventListener("change", () => {
    webhooks.cursors = [null];
    loadWebhooks(0);
  });
  $("#webhooks-refresh").addEventListener("click", async () => {
    webhookMessages.clear();
    await refreshPlans(); // a quarantined event's hint depends on the catalog
    await loadWebhooks(webhooks.index);
  });
  $("#webhooks-prev").addEventListener("click",
    () => loadWebhooks(webhooks.index - 1, { userAction: true }));
  $("#webhooks-next").addEventListener("click",
    () => loadWebhooks(webhooks.index + 1, { userAction: true }));
  $("#dl-status").addEventListener("change", () => {
    deliveries.cursors = [null];
    loadDeliveries(0);
  });
  $("#deliveries-refresh").addEventListener("click", () => {
    deliveryMessages.clear();
    loadDeliveries(deliveries.index);
  });
  $("#deliveries-prev").addEventListener("click",
    () => loadDeliveries(deliveries.index - 1, { userAction: true }));
  $("#deliveries-next").addEventListener("click",
    () => loadDeliveries(deliveries.index + 1, { userAction: true }));
  $("#audit-form").addEventListener("submit", previewAudit);
  $("#audit-form").addEventListener("change", (event) => {
    if (event.target.name === "scope") scopeChanged();
  });
  $("#audit-ids").addEventListener("input", () => {
    if (auditPreview) discardAudit("The instance ids changed: preview again.");
  });
  $("#audit-refresh").addEventListener("click", () => loadOverview());
  for (const link of document.querySelectorAll(".tabs a")) {
    link.addEventListener("click", () => {
      for (const other of document.querySelectorAll(".tabs a")) {
        other.removeAttribute("aria-current");
      }
      link.setAttribute("aria-current", "true");
    });
  }
}

async function loadVocabulary() {
  const words = await api("/api/vocabulary");
  STATUSES = words.webhookStatuses;
  REPLAYABLE = new Set(words.replayable);
  const backlog = new Set(words.backlog);
  const ordered = [...words.backlog, ...STATUSES.filter((s) => !backlog.has(s))];
  const select = $("#wh-status");
  fill(select, h("option", { value: "" }, "All events"), ordered.map((status) =>
    h("option", { value: status }, status.charAt(0).toUpperCase() + status.slice(1))));
  DELIVERY_STATUSES = words.deliveryStatuses;
  fill($("#dl-status"), h("option", { value: "" }, "All events"), DELIVERY_STATUSES.map(
    (status) => h("option", { value: status }, capitalizeFirst(status))));
}

async function start() {
  wire();
  await loadVocabulary();
  if (!token) {
    $("#signin").hidden = false;
    $("#token").focus();
    return;
  }
  try {
    await api("/api/admin/stats", { token, query: { days: 1 } });
  } catch (error) {
    signOut(error.status === 401 ? "The admin token was not accepted: sign in again." : null);
    if (error.status !== 401) explain(error, signinMessages);
    return;
  }
  await showApp();
}

start();
