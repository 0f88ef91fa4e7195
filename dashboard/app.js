// Observatory dashboard: projects, active conversations, a live feed and analytics, on
// observatory-client.js. Everything that comes from transcripts is untrusted: it is only ever put
// into the page with textContent / setAttribute on elements made with createElement.

import { ObservatoryClient } from "./observatory-client.js";

const FEED_LIMIT = 500; // entries kept in the feed, newest first
const BACKFILL = 500; // events (by seq) replayed on the first load and after a filter change
const TEXT_PREVIEW = 600; // characters shown before "Show more"
const TOKEN_KEY = "observatory.token";
const STATE_EVENTS = [
  "project_discovered", "project_updated", "conversation_started", "conversation_updated",
  "conversation_ended", "analytics_update",
];
const EVENT_LABELS = {
  conversation_started: "Conversation started",
  conversation_updated: "Conversation titled",
  conversation_ended: "Conversation ended",
  project_discovered: "Project discovered",
  project_updated: "Project updated",
  analytics_update: "Analytics",
};
const CLOSE_SHORT = { 4001: "token expired", 4003: "session revoked", 1008: "too many messages" };
const CLOSE_EXPLANATIONS = {
  4001: "Your access token has expired. Open the address the server printed at start (the one ending in #token=…) again to get a fresh one.",
  4003: "This session has been revoked. Open the dashboard again with a new token.",
  1008: "The server closed the connection because this page sent too many messages.",
};

// --- small helpers ---------------------------------------------------------------------------

/** An element with a class, text and attributes: never HTML. */
function el(tag, { cls, text, attrs } = {}, children = []) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null) node.setAttribute(name, String(value));
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

const $ = (testid) => document.querySelector(`[data-testid="${testid}"]`);
const compact = new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 1 });
const fmtNumber = (n) => compact.format(Number(n) || 0);
const isId = (v) => Number.isInteger(v);

/** A Date for an epoch-ms value from the wire, or null if it is not one. */
function dateOf(ms) {
  const date = new Date(typeof ms === "number" ? ms : NaN);
  return Number.isNaN(date.getTime()) ? null : date;
}

function fmtTime(ms) {
  const date = dateOf(ms);
  return date ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" }) : "--:--:--";
}

function fmtAgo(ms) {
  if (!ms) return "—";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 10) return "just now";
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

function fmtDuration(ms) {
  const s = Math.round((Number(ms) || 0) / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

function projectIdOf(data) {
  for (const v of [data?.projectId, data?.projectInfo?.id, data?.project?.id]) if (isId(v)) return v;
  return null;
}

function projectNameOf(data) {
  const name = data?.projectInfo?.name ?? data?.project?.name ?? data?.projectName;
  if (typeof name === "string") return name;
  return projects.get(String(projectIdOf(data)))?.name ?? null;
}

function shortId(id) {
  return typeof id === "string" ? id.slice(0, 8) : "";
}

// --- the token ---------------------------------------------------------------------------------

function takeToken() {
  const params = new URLSearchParams(location.hash.slice(1));
  const fromHash = params.get("token");
  if (fromHash) {
    try { sessionStorage.setItem(TOKEN_KEY, fromHash); } catch { /* storage disabled */ }
    history.replaceState(null, "", location.pathname + location.search); // out of the address bar
    return fromHash;
  }
  try { return sessionStorage.getItem(TOKEN_KEY); } catch { return null; }
}

// --- state -------------------------------------------------------------------------------------

const projects = new Map(); // String(projectId) -> {id, name, path, lastActivity, activeConversations, conversationCount}
const conversations = new Map(); // conversationId -> {conversationId, projectId, projectName, startTime, lastActivity, messageCount, toolUsageCount}
const titles = new Map(); // conversationId -> title (bounded)
const analytics = new Map(); // String(projectId) -> totals
const toolNames = new Set();
const toolUseNames = new Map(); // toolUse id -> tool name, to label tool results (bounded)
let feedFilters = null;
let generation = 0; // bumped at each filter change: a late refill of older filters is dropped
let refillPending = false;
let everOpened = false;

function remember(map, key, value, limit) {
  map.delete(key);
  map.set(key, value);
  if (map.size > limit) map.delete(map.keys().next().value);
}

const PROJECT_FIELDS = { name: "string", path: "string", lastActivity: "number", activeConversations: "number", conversationCount: "number" };

function upsertProject(id, fields) {
  if (!isId(id)) return;
  const key = String(id);
  const project = projects.get(key) ?? { id, name: null, path: null, lastActivity: 0, activeConversations: 0, conversationCount: null };
  for (const [name, type] of Object.entries(PROJECT_FIELDS)) {
    const value = fields[name];
    if (typeof value !== type) continue; // untrusted data: known fields of the right type only
    project[name] = name === "lastActivity" ? Math.max(project.lastActivity || 0, value) : value;
  }
  projects.set(key, project);
  schedule("projects");
}

function applyEvent(event) {
  const data = event.data || {};
  const ts = event.timestamp;
  switch (event.type) {
    case "project_discovered":
      upsertProject(data.project?.id, {
        name: data.project?.name, path: data.project?.path,
        lastActivity: data.lastActivity, conversationCount: data.conversationCount,
      });
      break;
    case "project_updated":
      upsertProject(data.projectId, data.changes || {});
      break;
    case "conversation_started":
      if (typeof data.conversationId === "string" && !conversations.has(data.conversationId)) {
        conversations.set(data.conversationId, {
          conversationId: data.conversationId, projectId: projectIdOf(data), projectName: projectNameOf(data),
          startTime: data.startTime ?? ts, lastActivity: data.startTime ?? ts, messageCount: 0, toolUsageCount: 0,
          seenAt: Date.now(),
        });
      }
      upsertProject(projectIdOf(data), { name: projectNameOf(data), path: data.projectInfo?.path });
      schedule("conversations");
      break;
    case "conversation_updated":
      if (typeof data.title === "string" && typeof data.conversationId === "string") {
        remember(titles, data.conversationId, data.title, 5000);
        retitleFeed(data.conversationId);
        schedule("conversations");
      }
      break;
    case "conversation_ended":
      conversations.delete(data.conversationId);
      schedule("conversations");
      break;
    case "message_added":
      applyMessage(data, ts);
      break;
    case "analytics_update":
      applyAnalytics(data);
      break;
    default:
  }
}

function applyMessage(data, ts) {
  const message = data.message || {};
  const when = message.timestamp ?? ts;
  const projectId = projectIdOf(data);
  upsertProject(projectId, { name: data.projectInfo?.name, path: data.projectInfo?.path, lastActivity: when });
  const uses = Array.isArray(message.toolUses) ? message.toolUses : [];
  for (const use of uses) {
    if (typeof use?.name === "string" && !toolNames.has(use.name) && toolNames.size < 500) {
      toolNames.add(use.name);
      schedule("tools");
    }
    if (typeof use?.id === "string") remember(toolUseNames, use.id, use.name, 5000);
  }
  if (typeof data.conversationId !== "string") return;
  let conv = conversations.get(data.conversationId);
  if (!conv) {
    conv = { conversationId: data.conversationId, projectId, projectName: projectNameOf(data),
      startTime: when, lastActivity: 0, messageCount: 0, toolUsageCount: 0 };
    conversations.set(data.conversationId, conv);
  }
  conv.seenAt = Date.now();
  if (when > conv.lastActivity) { // older (replayed) messages are already in the query's counts
    conv.lastActivity = when;
    conv.messageCount += 1;
    conv.toolUsageCount += uses.length;
  }
  schedule("conversations");
}

function applyAnalytics(data) {
  if (!isId(data.projectId)) return;
  const m = data.metrics || {};
  const key = String(data.projectId);
  const a = analytics.get(key) ?? { projectId: data.projectId, tokensIn: 0, tokensOut: 0, cacheRead: 0,
    messages: 0, toolUses: 0, byName: new Map(), periodEnd: 0, active: 0 };
  a.tokensIn += Number(m.tokensIn) || 0;
  a.tokensOut += Number(m.tokensOut) || 0;
  a.cacheRead += Number(m.cacheReadTokens) || 0;
  a.messages += Number(m.messages) || 0;
  a.toolUses += Number(m.toolUses) || 0;
  for (const [name, count] of Object.entries(m.toolUsesByName || {})) {
    a.byName.set(name, (a.byName.get(name) || 0) + (Number(count) || 0));
  }
  a.periodEnd = Math.max(a.periodEnd, Number(m.periodEnd) || 0);
  a.active = Number(m.activeConversations) || 0;
  analytics.set(key, a);
  schedule("analytics");
}

// --- rendering of the side panels, batched per frame --------------------------------------------

const dirty = new Set();
let frame = 0;
function schedule(part) {
  dirty.add(part);
  frame ||= requestAnimationFrame(() => {
    frame = 0;
    const parts = [...dirty];
    dirty.clear();
    for (const part of parts) RENDER[part]();
    renderStats();
  });
}

const RENDER = {
  projects() { renderProjects(); renderProjectFilter(); },
  conversations: renderConversations,
  analytics: renderAnalytics,
  tools: renderToolOptions,
  stats() {}, // renderStats runs after every batch
};

function renderProjects() {
  const list = $("projects");
  const selected = $("filter-project").value;
  const sorted = [...projects.values()].sort((a, b) => (b.lastActivity || 0) - (a.lastActivity || 0));
  list.replaceChildren(...sorted.map((p) => {
    const active = p.activeConversations > 0
      ? el("span", { cls: "pill pill-live", text: `${p.activeConversations} active` }) : null;
    const meta = [fmtAgo(p.lastActivity)];
    if (isId(p.conversationCount)) meta.push(`${p.conversationCount} conversation${p.conversationCount === 1 ? "" : "s"}`);
    const item = el("li", {
      cls: `project-item${String(p.id) === selected ? " selected" : ""}`,
      attrs: { "data-testid": "project-item", "data-project-id": p.id, title: p.path ?? "" },
    }, [
      el("button", { cls: "project-button", attrs: { type: "button", "aria-pressed": String(String(p.id) === selected) } }, [
        el("span", { cls: "row" }, [el("span", { cls: "project-name", text: p.name ?? `project ${p.id}` }), active]),
        el("span", { cls: "project-path", text: p.path ?? "" }),
        el("span", { cls: "muted small", text: meta.join(" · ") }),
      ]),
    ]);
    item.firstChild.addEventListener("click", () => {
      $("filter-project").value = String(p.id) === selected ? "" : String(p.id);
      applyFilters();
    });
    return item;
  }));
  $("projects-empty").hidden = projects.size > 0;
  $("project-count").textContent = projects.size ? String(projects.size) : "";
}

let projectOptions = "";
function renderProjectFilter() {
  const select = $("filter-project");
  const value = select.value;
  const sorted = [...projects.values()].sort((a, b) => String(a.name).localeCompare(String(b.name)));
  const signature = JSON.stringify([value, sorted.map((p) => [p.id, p.name])]);
  if (signature === projectOptions) return; // rebuilding would close the list under the user's pointer
  projectOptions = signature;
  const options = [el("option", { text: "All projects", attrs: { value: "" } })];
  for (const p of sorted) options.push(el("option", { text: p.name ?? `project ${p.id}`, attrs: { value: p.id } }));
  if (value && !projects.has(value)) options.push(el("option", { text: `project ${value}`, attrs: { value } }));
  select.replaceChildren(...options);
  select.value = value;
}

function renderConversations() {
  const list = $("conversations");
  const sorted = [...conversations.values()].sort((a, b) => (b.lastActivity || 0) - (a.lastActivity || 0)).slice(0, 100);
  list.replaceChildren(...sorted.map((c) => el("li", {
    cls: "conversation-item",
    attrs: { "data-testid": "conversation-item", "data-conversation-id": c.conversationId, "data-project-id": c.projectId },
  }, [
    el("span", { cls: "conversation-title", text: titles.get(c.conversationId) ?? `Conversation ${shortId(c.conversationId)}` }),
    el("span", { cls: "muted small", text: [
      c.projectName ?? projects.get(String(c.projectId))?.name ?? "unknown project",
      `${c.messageCount} msg${c.messageCount === 1 ? "" : "s"}`,
      `${c.toolUsageCount} tool${c.toolUsageCount === 1 ? "" : "s"}`,
      fmtAgo(c.lastActivity),
    ].join(" · ") }),
  ])));
  $("conversations-empty").hidden = conversations.size > 0;
  $("conversation-count").textContent = conversations.size ? String(conversations.size) : "";
}

function renderAnalytics() {
  const list = $("analytics");
  const sorted = [...analytics.values()].sort((a, b) => b.periodEnd - a.periodEnd);
  list.replaceChildren(...sorted.map((a) => {
    const tools = [...a.byName].sort((x, y) => y[1] - x[1]).slice(0, 8);
    return el("li", { cls: "analytics-item", attrs: { "data-testid": "analytics-item", "data-project-id": a.projectId } }, [
      el("div", { cls: "row" }, [
        el("span", { cls: "project-name", text: projects.get(String(a.projectId))?.name ?? `project ${a.projectId}` }),
        el("span", { cls: "muted small", text: a.periodEnd ? fmtTime(a.periodEnd) : "" }),
      ]),
      el("dl", { cls: "metrics" }, [
        metric("In", fmtNumber(a.tokensIn), "input tokens"),
        metric("Out", fmtNumber(a.tokensOut), "output tokens"),
        metric("Cache", fmtNumber(a.cacheRead), "cache read tokens"),
        metric("Msgs", fmtNumber(a.messages), "messages"),
      ]),
      tools.length ? el("ul", { cls: "chips" }, tools.map(([name, count]) =>
        el("li", { cls: "chip", attrs: { title: `${count} × ${name}` } }, [
          el("span", { cls: "chip-name", text: name }), el("span", { cls: "chip-count", text: count }),
        ]))) : null,
    ]);
  }));
  $("analytics-empty").hidden = analytics.size > 0;
}

function metric(label, value, title) {
  return el("div", { cls: "metric", attrs: { title } }, [el("dt", { text: label }), el("dd", { text: value })]);
}

function renderToolOptions() {
  $("tool-names").replaceChildren(...[...toolNames].sort().map((name) => el("option", { attrs: { value: name } })));
}

function renderStats() {
  const count = feedItems.length;
  $("feed-count").textContent = `${count} ${count === 1 ? "entry" : "entries"}`;
  $("feed-empty").hidden = count > 0;
}

// --- the feed ----------------------------------------------------------------------------------

const feedItems = []; // {rank, seq, key, node}, newest first
const feedKeys = new Set();
const epochRanks = new Map();

function feedMatches(event, filters) {
  const data = event.data || {};
  const message = data.message || {};
  if (filters.eventTypes && !filters.eventTypes.includes(event.type)) return false;
  if (filters.projectIds && !filters.projectIds.includes(projectIdOf(data))) return false;
  if (filters.messageTypes && !filters.messageTypes.includes(message.type)) return false;
  if (filters.toolNames) {
    const names = [...(Array.isArray(message.toolUses) ? message.toolUses : []).map((u) => u?.name),
      ...(Array.isArray(data.toolNames) ? data.toolNames : [])];
    if (!names.some((name) => filters.toolNames.includes(name))) return false;
  }
  return true;
}

function addToFeed(event) {
  if (!feedFilters || !feedMatches(event, feedFilters)) return;
  const key = `${event.epoch}:${event.seq}`;
  if (feedKeys.has(key)) return;
  if (!epochRanks.has(event.epoch)) epochRanks.set(event.epoch, epochRanks.size);
  const entry = { rank: epochRanks.get(event.epoch), seq: event.seq, key };
  const newer = (a, b) => a.rank > b.rank || (a.rank === b.rank && a.seq > b.seq);
  let lo = 0;
  let hi = feedItems.length;
  while (lo < hi) { // first position whose entry is older than this one
    const mid = (lo + hi) >> 1;
    if (newer(feedItems[mid], entry)) lo = mid + 1; else hi = mid;
  }
  if (lo >= FEED_LIMIT) return;
  entry.node = renderFeedItem(event);
  $("feed").insertBefore(entry.node, feedItems[lo]?.node ?? null);
  feedItems.splice(lo, 0, entry);
  feedKeys.add(key);
  while (feedItems.length > FEED_LIMIT) {
    const old = feedItems.pop();
    old.node.remove();
    feedKeys.delete(old.key);
  }
  schedule("stats");
}

function clearFeed() {
  for (const entry of feedItems) entry.node.remove();
  feedItems.length = 0;
  feedKeys.clear();
  schedule("stats");
}

function retitleFeed(conversationId) {
  const title = titles.get(conversationId);
  if (typeof title !== "string") return;
  for (const node of $("feed").querySelectorAll(`[data-conversation-id="${CSS.escape(conversationId)}"] .conv`)) {
    node.textContent = title;
  }
}

function renderFeedItem(event) {
  const data = event.data || {};
  const message = event.type === "message_added" ? data.message || {} : null;
  const projectId = projectIdOf(data);
  const when = dateOf(message?.timestamp) ? message.timestamp : event.timestamp;
  const kind = ["user", "assistant", "system"].includes(message?.type) ? message.type : "other";
  const item = el("li", {
    cls: `feed-item ${message ? `msg msg-${kind}` : "event"}`,
    attrs: {
      "data-testid": "feed-item", "data-event-type": event.type, "data-seq": event.seq,
      "data-project-id": projectId ?? "", "data-message-type": message?.type ?? "",
      "data-conversation-id": data.conversationId,
    },
  });
  const head = el("div", { cls: "item-head" }, [
    el("time", { cls: "time", text: fmtTime(when), attrs: { datetime: dateOf(when)?.toISOString(), title: dateOf(when)?.toLocaleString() } }),
    message
      ? el("span", { cls: `badge type-${kind}`, text: message.subtype ? `${message.type} · ${message.subtype}` : message.type ?? "message" })
      : el("span", { cls: "badge type-event", text: EVENT_LABELS[event.type] ?? event.type }),
    message?.isSidechain ? el("span", { cls: "badge sidechain", text: "sub-agent", attrs: { "data-testid": "sidechain", title: "Written by a sub-agent" } }) : null,
    el("span", { cls: "project", text: projectNameOf(data) ?? "" }),
    data.conversationId ? el("span", { cls: "conv", text: titles.get(data.conversationId) ?? shortId(data.conversationId), attrs: { title: data.conversationId } }) : null,
    el("span", { cls: "spacer" }),
    message ? messageMeta(message) : null,
  ]);
  item.append(head);
  if (message) renderMessageBody(item, message);
  else item.append(el("div", { cls: "event-text", text: describeEvent(event) }));
  return item;
}

function messageMeta(message) {
  const parts = [];
  if (typeof message.model === "string") parts.push(message.model.replace(/^claude-/, ""));
  const usage = message.usage;
  if (usage) parts.push(`${fmtNumber(usage.inputTokens)} in · ${fmtNumber(usage.outputTokens)} out`);
  return parts.length ? el("span", { cls: "meta", text: parts.join(" · ") }) : null;
}

function renderMessageBody(item, message) {
  const content = typeof message.content === "string" ? message.content : "";
  if (content) item.append(expandable(content, "text", message.truncated ? "(cut by the server)" : null));
  if (typeof message.thinking === "string" && message.thinking) {
    item.append(el("details", { cls: "thinking" }, [
      el("summary", { text: "Thinking" }), el("div", { cls: "text", text: message.thinking }),
    ]));
  }
  const uses = Array.isArray(message.toolUses) ? message.toolUses : [];
  if (uses.length) {
    item.append(el("ul", { cls: "tools" }, uses.map((use) => el("li", { cls: "tool", attrs: { "data-testid": "tool-use", "data-tool-name": use?.name } }, [
      el("span", { cls: "tool-name", text: use?.name ?? "tool" }),
      use?.summary ? el("span", { cls: "tool-summary", text: String(use.summary).slice(0, 300) }) : null,
    ]))));
  }
  const results = Array.isArray(message.toolResults) ? message.toolResults : [];
  for (const result of results) {
    const name = toolUseNames.get(result?.toolUseId);
    item.append(el("details", { cls: `result${result?.isError ? " result-error" : ""}` }, [
      el("summary", {}, [
        el("span", { text: name ? `Result of ${name}` : "Tool result" }),
        result?.isError ? el("span", { cls: "badge error", text: "error" }) : null,
      ]),
      el("pre", { text: typeof result?.content === "string" ? result.content.slice(0, 4000) : "" }),
    ]));
  }
  if (!content && !uses.length && !results.length && !message.thinking) {
    item.append(el("div", { cls: "muted small", text: "(no text)" }));
  }
}

function expandable(text, cls, note) {
  const box = el("div", { cls });
  if (text.length <= TEXT_PREVIEW) {
    box.textContent = text;
  } else {
    let open = false;
    const body = el("span", { text: `${text.slice(0, TEXT_PREVIEW)}…` });
    const toggle = el("button", { cls: "link more", text: "Show more", attrs: { type: "button", "data-testid": "feed-expand" } });
    toggle.addEventListener("click", () => {
      open = !open;
      body.textContent = open ? text : `${text.slice(0, TEXT_PREVIEW)}…`;
      toggle.textContent = open ? "Show less" : "Show more";
    });
    box.append(body, " ", toggle);
  }
  if (note) box.append(" ", el("span", { cls: "muted small", text: note }));
  return box;
}

function describeEvent(event) {
  const d = event.data || {};
  switch (event.type) {
    case "conversation_started":
      return `Session ${shortId(d.sessionId ?? d.conversationId)} began`;
    case "conversation_updated":
      return typeof d.title === "string" ? d.title : "";
    case "conversation_ended":
      return `${d.messageCount ?? 0} messages · ${d.toolUsageCount ?? 0} tool uses · ${fmtDuration(d.duration)}`;
    case "project_discovered":
      return `${d.project?.path ?? d.project?.name ?? ""} · ${d.conversationCount ?? 0} conversations`;
    case "project_updated":
      return Object.entries(d.changes || {}).map(([k, v]) => `${k}: ${k === "lastActivity" ? fmtTime(v) : v}`).join(" · ");
    case "analytics_update": {
      const m = d.metrics || {};
      return `${m.messages ?? 0} messages · ${fmtNumber(m.tokensIn)} in / ${fmtNumber(m.tokensOut)} out tokens · ${m.toolUses ?? 0} tool uses in ${d.period ?? "the period"}`;
    }
    default:
      return JSON.stringify(d).slice(0, 300);
  }
}

// --- filters -----------------------------------------------------------------------------------

function filtersFromControls() {
  const filters = {};
  const project = $("filter-project").value;
  if (project && /^-?\d+$/.test(project)) filters.projectIds = [Number(project)];
  const type = $("filter-event-type").value;
  if (type) filters.eventTypes = [type];
  const messageType = $("filter-message-type").value;
  if (messageType) filters.messageTypes = [messageType];
  const tools = $("filter-tool").value.split(",").map((s) => s.trim()).filter(Boolean).slice(0, 20);
  if (tools.length) filters.toolNames = tools.map((t) => t.slice(0, 256));
  return filters;
}

const sameFilters = (a, b) => JSON.stringify(a) === JSON.stringify(b);

/** Swap the feed's subscription for the one the controls describe, clear the feed and refill it. */
function applyFilters() {
  const next = filtersFromControls();
  if (feedFilters && sameFilters(next, feedFilters)) return;
  const previous = feedFilters;
  feedFilters = next;
  generation += 1;
  clearFeed();
  schedule("projects"); // the selected project is highlighted
  if (previous) client.unsubscribe(previous).catch(() => {});
  client.subscribe(next).catch(filtersRefused);
  refillFeed();
}

async function refillFeed() {
  const mine = generation;
  if (client.state !== "open") {
    refillPending = true; // done once connected
    return;
  }
  refillPending = false;
  try {
    const events = await client.fetchRecent(feedFilters, BACKFILL);
    if (mine === generation) for (const event of events) addToFeed(event);
  } catch {
    // the live events still come: the refill is a nicety
  }
}

let toolTimer = 0;
function wireFilters() {
  for (const id of ["filter-project", "filter-event-type", "filter-message-type"]) {
    $(id).addEventListener("change", applyFilters);
  }
  const tool = $("filter-tool");
  tool.addEventListener("input", () => {
    clearTimeout(toolTimer);
    toolTimer = setTimeout(applyFilters, 500);
  });
  tool.addEventListener("change", applyFilters);
  $("filters").addEventListener("submit", (ev) => { ev.preventDefault(); applyFilters(); });
  $("filter-reset").addEventListener("click", () => {
    $("filter-project").value = "";
    $("filter-event-type").value = "message_added";
    $("filter-message-type").value = "";
    tool.value = "";
    applyFilters();
  });
  $("feed-clear").addEventListener("click", clearFeed);
  $("connection-retry").addEventListener("click", () => client.reconnectNow());
}

// --- connection indicator ----------------------------------------------------------------------

let countdown = 0;
function renderConnection(info) {
  const status = $("connection-status");
  status.dataset.state = info.state;
  status.title = "";
  const text = status.querySelector(".conn-text");
  const retry = $("connection-retry");
  clearInterval(countdown);
  retry.hidden = info.state !== "reconnecting";
  const banner = $("connection-banner");
  banner.hidden = true;
  switch (info.state) {
    case "open":
      text.textContent = "Connected";
      status.title = client.info ? `Connection ${client.info.clientId}, worker ${client.info.capabilities?.worker ?? "?"}` : "";
      break;
    case "reconnecting": {
      const tick = () => {
        const seconds = Math.max(0, Math.ceil((info.nextAttemptAt - Date.now()) / 1000));
        text.textContent = seconds > 0 ? `Reconnecting in ${seconds} s` : "Reconnecting…";
      };
      tick();
      countdown = setInterval(tick, 250);
      if (!everOpened && info.attempt >= 2) {
        showBanner("info", "Cannot reach the server. If it requires a token, open the address it printed at start (the one ending in #token=…).");
      }
      break;
    }
    case "closed": {
      const short = CLOSE_SHORT[info.code] ?? (info.reason || (info.code ? `code ${info.code}` : ""));
      text.textContent = info.byClient ? "Disconnected" : `Closed${short ? `: ${short}` : ""}`;
      const why = CLOSE_EXPLANATIONS[info.code]
        ?? `The connection was closed${info.code ? ` (${info.code}${info.reason ? `: ${info.reason}` : ""})` : info.reason ? ` (${info.reason})` : ""}.`;
      status.title = why;
      if (info.code === 4001 || info.code === 4003) {
        try { sessionStorage.removeItem(TOKEN_KEY); } catch { /* storage disabled */ }
      }
      if (!info.byClient) showBanner("error", why, info.code !== 4001 && info.code !== 4003);
      break;
    }
    default:
      text.textContent = "Connecting…";
  }
}

function showBanner(kind, message, withReconnect = false) {
  const banner = $("connection-banner");
  banner.className = `banner banner-${kind}`;
  const children = [el("span", { text: message })];
  if (withReconnect) {
    const button = el("button", { cls: "button", text: "Try again", attrs: { type: "button", "data-testid": "connection-reconnect" } });
    button.addEventListener("click", () => client.connect());
    children.push(button);
  }
  banner.replaceChildren(...children);
  banner.hidden = false;
}

function filtersRefused(err) {
  if (err.data?.code) showNotice(`The server refused these filters: ${err.message}`); // not a close
}

let noticeTimer = 0;
function showNotice(message) {
  const notice = $("notice");
  notice.textContent = message;
  notice.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { notice.hidden = true; }, 8000);
}

// --- queries -----------------------------------------------------------------------------------

async function reloadState() {
  const asked = Date.now();
  const [projectReply, conversationReply] = await Promise.allSettled([
    client.query("get_projects", { limit: 100 }),
    client.query("get_active_conversations", { limit: 200 }),
  ]);
  if (projectReply.status === "fulfilled") {
    for (const p of projectReply.value.projects || []) {
      upsertProject(p.projectId, { name: p.projectName, path: p.projectPath, lastActivity: p.lastActivity,
        activeConversations: p.activeConversations });
    }
  }
  if (conversationReply.status === "fulfilled") {
    const listed = new Set();
    for (const c of conversationReply.value.conversations || []) {
      if (typeof c.conversationId !== "string") continue;
      listed.add(c.conversationId);
      conversations.set(c.conversationId, { ...c, seenAt: asked });
      upsertProject(c.projectId, { name: c.projectName });
    }
    for (const [id, c] of conversations) { // gone, unless an event brought it after we asked
      if (!listed.has(id) && !(c.seenAt >= asked)) conversations.delete(id);
    }
    schedule("conversations");
  }
}

// --- start -------------------------------------------------------------------------------------

const token = takeToken();
const scheme = location.protocol === "https:" ? "wss" : "ws";
const client = new ObservatoryClient(`${scheme}://${location.host}/`, {
  token, backfill: BACKFILL, clientInfo: { name: "observatory-dashboard", version: "1" },
});

client.on("state", (info) => {
  renderConnection(info);
  if (info.state === "open") {
    const first = !everOpened;
    everOpened = true;
    reloadState();
    if (first) refillPending = false; // the first connection's backfill fills the feed
    else if (refillPending) refillFeed();
  }
});
client.on("*", (msg) => {
  if (typeof msg.seq !== "number") return;
  applyEvent(msg);
  addToFeed(msg);
});
client.on("resume_failed", (msg) => {
  reloadState();
  if (feedItems.length === 0) refillFeed(); // the first load's backfill reached too far back
  else showNotice(`Events sent while this page was disconnected could not be replayed (${msg.data?.reason ?? "resume failed"}); projects and conversations were reloaded.`);
});
client.on("epoch_changed", () => {
  showNotice("The server's ingest restarted: its state was reloaded.");
  reloadState();
});

// Opening the address with a new #token in this tab does not reload the page: do it.
addEventListener("hashchange", () => {
  if (new URLSearchParams(location.hash.slice(1)).get("token")) {
    takeToken();
    location.reload();
  }
});

wireFilters();
setInterval(() => { schedule("projects"); schedule("conversations"); }, 15000); // relative times
feedFilters = filtersFromControls();
client.subscribe({ eventTypes: STATE_EVENTS }).catch(() => {});
client.subscribe(feedFilters).catch(filtersRefused);
client.connect();
