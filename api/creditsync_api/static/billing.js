// /billing?instance=<token>: the Credit Usage card with the Sync Credits button, and the
// credit history. Every call carries the instance token from the URL, which the
// marketplace signs; the page shows only what the API says about that instance.

import {
  $, ApiError, LedgerPager, Messages, PlanNames, api, fill, fmtDate, fmtInt, fmtRelative,
  grantsTable, h, historyTable, keepFocus, timeEl,
} from "./common.js";

const HISTORY_PAGE = 10;
const token = new URLSearchParams(window.location.search).get("instance");
const syncButton = $("#sync");
const syncLabel = $("#sync-label");
const syncMessages = new Messages($("#sync-status"), $("#sync-alert"));
let names = new PlanNames();
let busy = false;
let currentPlan = null; // the plan shown on the card: its rollover rule explains the grants

const history = new LedgerPager(
  (limit, before) => api("/api/billing/history", { token, query: { limit, before } }),
  HISTORY_PAGE);

// -- the card -------------------------------------------------------------------------

function render(credits) {
  currentPlan = credits.plan;
  const plan = names.label(credits.plan);
  const total = credits.creditsTotal;
  const used = credits.creditsUsed;
  const share = total > 0 ? Math.min(used / total, 1) : (used > 0 ? 1 : 0);
  const percent = Math.round(share * 100);

  const remaining = $("#remaining");
  remaining.classList.remove("skeleton");
  remaining.textContent = fmtInt(credits.creditsRemaining);
  $("#plan-line").textContent = `${plan} plan · ${fmtInt(total)} credits a month`;

  const bar = $("#usage-bar");
  bar.setAttribute("aria-valuemax", String(Math.max(total, 1)));
  bar.setAttribute("aria-valuenow", String(Math.min(used, Math.max(total, 1))));
  bar.setAttribute("aria-valuetext",
    `${fmtInt(used)} of ${fmtInt(total)} plan credits used (${percent}%)`);
  bar.classList.toggle("high", share >= 0.8 && share < 1);
  bar.classList.toggle("full", share >= 1);
  $(".meter-fill", bar).style.width = `${percent}%`;
  const bonus = credits.bonusCredits
    ? ` · plus ${fmtInt(credits.bonusCredits)} bonus credits, used after the plan's` : "";
  // held credits are reserved by jobs still running: not spendable until they finish
  const held = credits.creditsHeld
    ? ` · ${fmtInt(credits.creditsHeld)} held for running jobs` : "";
  $("#usage-caption").textContent =
    `${fmtInt(used)} of ${fmtInt(total)} plan credits used (${percent}%)${bonus}${held}`;

  $("#plan").textContent = plan;
  $("#total").textContent = fmtInt(total);
  $("#used").textContent = fmtInt(used);
  $("#bonus").textContent = fmtInt(credits.bonusCredits);
  $("#held").textContent = fmtInt(credits.creditsHeld);
  fill($("#period"), timeEl(credits.periodStart, fmtDate(credits.periodStart)), " – ",
    timeEl(credits.periodEnd, fmtDate(credits.periodEnd)));
  fill($("#reset"), timeEl(credits.periodEnd, fmtDate(credits.periodEnd)), " ",
    h("span", { class: "muted" }, `(${fmtRelative(credits.periodEnd)})`));
  fill($("#synced"), credits.lastSyncedAt
    ? timeEl(credits.lastSyncedAt, fmtRelative(credits.lastSyncedAt)) : "Never");

  const state = $("#sync-state");
  state.className = `pill ${credits.inSync ? "ok" : "warn"}`;
  state.textContent = credits.inSync ? "In sync" : "Out of sync";
  $("#drift-note").hidden = credits.inSync;
  $("#usage").setAttribute("aria-busy", "false");
}

// -- Sync Credits -----------------------------------------------------------------------

function setBusy(on) {
  busy = on;
  syncButton.disabled = on;
  syncButton.setAttribute("aria-busy", String(on));
  syncLabel.textContent = on ? "Syncing…" : "Sync Credits";
}

/** What a sync changed, in one sentence: "Credits updated: 100 → 5,000 (Pro)." */
function summarize(result) {
  const before = result.before;
  const after = result.after;
  if (!result.changes.length) {
    return `Everything was already right: ${fmtInt(after.creditsTotal)} credits a month on ` +
      `the ${names.label(after.plan)} plan.`;
  }
  const parts = [];
  if (before.creditsTotal !== after.creditsTotal) {
    parts.push(`Credits updated: ${fmtInt(before.creditsTotal)} → ` +
      `${fmtInt(after.creditsTotal)} (${names.label(after.plan)})`);
  } else if (before.plan !== after.plan) {
    parts.push(`Plan updated: ${names.label(before.plan)} → ${names.label(after.plan)}`);
  }
  if (before.periodEnd !== after.periodEnd) {
    parts.push(`a new period started, usage ${fmtInt(before.creditsUsed)} → ` +
      `${fmtInt(after.creditsUsed)}`);
  } else if (before.creditsUsed !== after.creditsUsed) {
    parts.push(`usage ${fmtInt(before.creditsUsed)} → ${fmtInt(after.creditsUsed)}`);
  }
  if (!parts.length) parts.push("Your credits were checked and corrected");
  const sentence = parts.join("; ");
  return `${sentence.charAt(0).toUpperCase()}${sentence.slice(1)}.`;
}

/**
 * What the marketplace said, when it changed something: "The marketplace says you pay for
 * Pro: credits updated 100 → 5,000." (a purchase whose webhook never came, healed now).
 */
function marketplaceSentence(result) {
  const found = result.marketplace;
  if (!found) return null;
  const before = result.before;
  const after = result.after;
  if (found.action === "healed") {
    const paid = names.label(found.marketplacePlan);
    if (before.creditsTotal !== after.creditsTotal) {
      return `The marketplace says you pay for ${paid}: credits updated ` +
        `${fmtInt(before.creditsTotal)} → ${fmtInt(after.creditsTotal)}.`;
    }
    return `The marketplace says you pay for ${paid}: plan updated ` +
      `${names.label(before.plan)} → ${names.label(after.plan)}.`;
  }
  if (found.action === "quarantined") {
    return `The marketplace says you pay for a package creditsync does not know yet ` +
      `(${found.marketplacePlan}): nothing was taken away, and support has been told. ` +
      summarize(result);
  }
  return null;
}

/** The marketplace could not be asked: the sync itself still did its part. */
const MARKETPLACE_LATER = "The marketplace could not be asked what your site pays for just " +
  "now: creditsync will ask it again automatically.";

async function sync() {
  if (busy) return;
  setBusy(true);
  syncMessages.clear();
  let waitSeconds = 0;
  try {
    const result = await api("/api/billing/sync-credits", { token, method: "POST" });
    render(result.after);
    const fromMarketplace = marketplaceSentence(result);
    const changed = result.changes.length > 0 || result.marketplace?.action === "healed";
    const sentence = fromMarketplace || summarize(result);
    syncMessages.show(changed ? "success" : "info", result.marketplaceError
      ? `${sentence} ${MARKETPLACE_LATER}` : sentence);
    loadHistory(0);
    loadGrants();
  } catch (error) {
    waitSeconds = error.status === 429 ? error.retryAfter || 5 : 0;
    explain(error, syncMessages, { retry: sync });
  } finally {
    setBusy(false);
    if (waitSeconds) holdOff(waitSeconds);
    keepFocus(syncButton, syncButton);
  }
}

/** After a 429 the button stays off for the time the server asked for. */
function holdOff(seconds) {
  syncButton.disabled = true;
  window.setTimeout(() => {
    syncButton.disabled = false;
    syncMessages.show("info", "You can sync again now.");
  }, seconds * 1000);
}

/** Turn an API error into a message that says what to do (and a button that does it). */
function explain(error, messages, { retry }) {
  if (!(error instanceof ApiError)) {
    messages.show("error", "Something went wrong in this page: reload it and try again.",
      { label: "Reload page", run: () => window.location.reload() });
    return;
  }
  const retryAction = retry ? { label: "Retry", run: retry } : undefined;
  switch (true) {
    case error.status === 0:
      messages.show("error", "Could not reach creditsync: check your connection, then try " +
        "again.", retryAction);
      break;
    case error.code === "token_expired":
      messages.show("error", "Your session has expired: reload the page to continue.",
        { label: "Reload page", run: () => window.location.reload() });
      break;
    case error.status === 401:
      messages.show("error", "This page could not confirm which site you are signed in to: " +
        "open Billing & Credits again from your dashboard.");
      break;
    case error.status === 429:
      messages.show("warning",
        `You synced a moment ago: try again in ${error.retryAfter || 5} s.`);
      break;
    case error.code === "instance_not_found":
      messages.show("error", "creditsync has no record of this site yet: reopen the app " +
        "from your dashboard, and contact support if this persists.");
      break;
    case error.status === 503:
      messages.show("error", `creditsync is briefly unavailable: try again in ` +
        `${error.retryAfter || 5} s.`, retryAction);
      break;
    default:
      messages.show("error", `That did not work (${error.message}): try again.`, retryAction);
  }
}

// -- grants -----------------------------------------------------------------------------

const grantsMessages = new Messages($("#grants-alert"), $("#grants-alert"));

/** A duration as the API writes it (`30d`, `1d12h`, `90m`) in words: "30 days". */
function inWords(duration) {
  const found = /^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$/.exec(duration);
  if (!found) return duration;
  const units = ["day", "hour", "minute", "second"];
  return found.slice(1).map((n, k) => (n ? `${fmtInt(Number(n))} ${units[k]}${n === "1" ? "" : "s"}`
    : null)).filter(Boolean).join(" ") || duration;
}

/** "320 credits on 2 grants; 200 rolled over from last period, the first expiring Mar 1." */
function grantsSummary(live) {
  if (!live.length) {
    return "No bonus credits right now. Support's grants and unused plan credits that " +
      "roll over at the monthly reset appear here.";
  }
  const left = live.reduce((sum, g) => sum + g.remaining, 0);
  const rolled = live.filter((g) => g.source === "rollover");
  const expiring = live.filter((g) => g.expiresAt)
    .sort((a, b) => a.expiresAt.localeCompare(b.expiresAt))[0];
  const parts = [`${fmtInt(left)} credits on ${live.length} grant${live.length > 1 ? "s" : ""}`];
  if (rolled.length) {
    parts.push(`${fmtInt(rolled.reduce((sum, g) => sum + g.remaining, 0))} rolled over ` +
      "from last period");
  }
  if (expiring) parts.push(`the soonest expire on ${fmtDate(expiring.expiresAt)}`);
  return `${parts.join("; ")}.`;
}

async function loadGrants() {
  const body = $("#grants-body");
  body.setAttribute("aria-busy", "true");
  try {
    const { grants } = await api("/api/billing/grants", { token });
    const live = grants.filter((g) => g.status === "live");
    $("#rollover").textContent = fmtInt(live.filter((g) => g.source === "rollover")
      .reduce((sum, g) => sum + g.remaining, 0));
    const rule = names.byId.get(currentPlan)?.rollover;
    $("#grants-summary").textContent = grantsSummary(live) + (rule ? ` At each monthly ` +
      `reset up to ${fmtInt(rule.maxCredits)} unused plan credits roll over, for ` +
      `${inWords(rule.expiresAfter)}.` : "");
    fill(body, grants.length ? grantsTable(grants, "Bonus and rolled-over credits") : null);
    fill($("#grants-alert"));
  } catch (error) {
    explain(error, grantsMessages, { retry: loadGrants });
  } finally {
    body.setAttribute("aria-busy", "false");
  }
}

// -- history ----------------------------------------------------------------------------

const historyMessages = new Messages($("#history-alert"), $("#history-alert"));

async function loadHistory(index, { userAction = false } = {}) {
  const body = $("#history-body");
  body.setAttribute("aria-busy", "true");
  $("#history-newer").disabled = $("#history-older").disabled = true;
  try {
    const entries = await history.load(index);
    if (!entries) return; // a newer load took over
    fill(body, historyTable(entries, names, "Credit history, newest first"));
    fill($("#history-alert"));
  } catch (error) {
    explain(error, historyMessages, { retry: () => loadHistory(index, { userAction }) });
  } finally {
    body.setAttribute("aria-busy", "false");
  }
  $("#history-newer").disabled = history.index === 0;
  $("#history-older").disabled = !history.hasOlder;
  $("#history-where").textContent = `Page ${history.index + 1}`;
  if (userAction) keepFocus(null, $("#history-title"));
}

// -- start ------------------------------------------------------------------------------

async function start() {
  syncButton.addEventListener("click", sync);
  $("#history-newer").addEventListener(
    "click", () => loadHistory(history.index - 1, { userAction: true }));
  $("#history-older").addEventListener(
    "click", () => loadHistory(history.index + 1, { userAction: true }));
  const pageMessages = new Messages($("#page-alert"), $("#page-alert"));  // one region
  if (!token) {
    pageMessages.show("error", "Open this page from your site's dashboard: its link carries " +
      "the sign-in that tells creditsync which site you are.");
    $("#sync-state").textContent = "Not signed in";
    fill($("#history-body"), h("p", { class: "muted" }, "No site selected."));
    fill($("#grants-body"), h("p", { class: "muted" }, "No site selected."));
    return;
  }
  names = await PlanNames.load();
  try {
    render(await api("/api/billing/credits", { token }));
    syncButton.disabled = false;
  } catch (error) {
    $("#sync-state").textContent = "Unavailable";
    $("#usage").setAttribute("aria-busy", "false");
    explain(error, pageMessages, { retry: () => window.location.reload() });
    fill($("#history-body"), h("p", { class: "muted" }, "Not available."));
    fill($("#grants-body"), h("p", { class: "muted" }, "Not available."));
    return;
  }
  await Promise.all([loadGrants(), loadHistory(0)]);
}

start();
