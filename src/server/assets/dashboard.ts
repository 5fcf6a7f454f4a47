import { createHash } from 'node:crypto';

/**
 * The dashboard page served at `GET /` and `GET /dashboard`. It holds no data: it reads
 * `/api/dashboard` every second with the admin token the operator enters (kept in
 * sessionStorage, or given as `?access_token=`), renders the built-in figures and every
 * panel the parts registered, and runs panel actions through
 * `POST /api/dashboard/panels/<id>/actions/<name>`; `GET /jobs/events` (SSE) makes it
 * refresh at once on every announced job transition. A "watch topic" box shows a topic's
 * events live through the browser client.
 */
export const DASHBOARD_HTML = String.raw`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>pgherald dashboard</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 0; background: #f6f7f9; color: #1d2330; }
  header { background: #1d2330; color: #fff; padding: 10px 20px; display: flex; gap: 16px; align-items: center; }
  header h1 { font-size: 18px; margin: 0; flex: 1; }
  main { padding: 16px 20px; display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 16px; }
  section { background: #fff; border: 1px solid #dde1e8; border-radius: 6px; padding: 12px 14px; min-width: 0; overflow-x: auto; }
  section.wide { grid-column: 1 / -1; }
  section h2 { font-size: 15px; margin: 0 0 8px; }
  table { border-collapse: collapse; width: 100%; font-size: 13px; }
  th, td { text-align: left; padding: 3px 6px; border-bottom: 1px solid #eef0f4; }
  .kv td:first-child { color: #5b6477; width: 45%; }
  .bar { height: 10px; background: #eef0f4; border-radius: 5px; overflow: hidden; }
  .bar > div { height: 100%; background: #3b82f6; }
  .bad { color: #b91c1c; } .ok { color: #15803d; } .muted { color: #8a93a6; }
  #events { max-height: 220px; overflow: auto; font-family: ui-monospace, monospace; font-size: 12px; }
  button { font-size: 12px; }
  .state-dead, .state-cancelled { color: #b91c1c; } .state-completed { color: #15803d; } .state-running { color: #b45309; }
</style>
</head>
<body>
<header>
  <h1>pgherald</h1>
  <span id="last-action" class="muted"></span>
  <span id="status" class="muted">connecting…</span>
  <input id="token" type="password" placeholder="admin token" size="24">
  <button id="save">Use token</button>
</header>
<main>
  <section id="overview"><h2>Server</h2><table class="kv"><tbody id="overview-body"></tbody></table></section>
  <section id="queue-usage"><h2>Notification queue</h2><div class="bar"><div id="usage-bar" style="width:0%"></div></div><p id="usage-text" class="muted"></p></section>
  <section id="topics"><h2>Topics</h2><table><thead><tr><th>topic</th><th>channel</th><th>clients</th></tr></thead><tbody id="topics-body"></tbody></table></section>
  <section id="channels"><h2>Channels (listen connection)</h2><table><thead><tr><th>channel</th><th>subscribers</th><th>delivered</th><th>dropped</th><th>listening</th></tr></thead><tbody id="channels-body"></tbody></table></section>
  <section id="watch"><h2>Watch a topic</h2><input id="watch-topic" placeholder="topic"> <button id="watch-go">Watch</button> <span id="watch-state" class="muted"></span><div id="events"></div></section>
  <div id="panels" style="display: contents"></div>
</main>
<script type="module">
import { HeraldClient } from './client.js';
const params = new URLSearchParams(location.search);
let token = params.get('access_token') || sessionStorage.getItem('herald-token') || '';
const $ = (id) => document.getElementById(id);
$('token').value = token;
$('save').onclick = () => { token = $('token').value; sessionStorage.setItem('herald-token', token); refresh(); };

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith('on')) e[k] = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c == null ? '' : String(c)));
  return e;
}
function cell(v) { return typeof v === 'object' && v !== null ? JSON.stringify(v) : v; }

async function api(path, init) {
  const headers = Object.assign({ 'content-type': 'application/json' }, token ? { authorization: 'Bearer ' + token } : {});
  const res = await fetch(path, Object.assign({ headers }, init || {}));
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw Object.assign(new Error((body.error && body.error.message) || res.statusText), { status: res.status });
  return body;
}

function renderTable(data, panel) {
  const rows = Array.isArray(data) ? data : null;
  if (!rows) {
    const tb = el('tbody');
    for (const [k, v] of Object.entries(data || {})) tb.append(el('tr', { 'data-key': k }, el('td', {}, k), el('td', { 'data-col': k }, cell(v))));
    return el('table', { class: 'kv' }, tb);
  }
  if (rows.length === 0) return el('p', { class: 'muted' }, 'none');
  const cols = [...new Set(rows.flatMap((r) => Object.keys(r)))];
  const rowActions = panel.actions.filter((a) => a.scope === 'row');
  const head = el('tr', {}, ...cols.map((c) => el('th', {}, c)), ...(rowActions.length ? [el('th', {}, '')] : []));
  const tb = el('tbody');
  rows.forEach((r, i) => {
    const tr = el('tr', r.id != null ? { 'data-row-id': r.id } : {}, ...cols.map((c) => el('td', { 'data-col': c, class: c === 'state' ? 'state-' + r[c] : '' }, cell(r[c]))));
    if (rowActions.length) {
      // rowActions[i] (when sent) names the actions this row offers: Retry on a dead job, Cancel on a waiting one.
      const offered = panel.rowActions ? rowActions.filter((a) => panel.rowActions[i].includes(a.name)) : rowActions;
      tr.append(el('td', {}, ...offered.map((a) => el('button', { 'data-action': a.name, onclick: () => act(panel.id, a.name, r) }, a.label))));
    }
    tb.append(tr);
  });
  return el('table', {}, el('thead', {}, head), tb);
}

async function act(panel, action, args) {
  try {
    const r = await api('/api/dashboard/panels/' + encodeURIComponent(panel) + '/actions/' + encodeURIComponent(action), { method: 'POST', body: JSON.stringify({ args }) });
    $('last-action').textContent = panel + ' ' + action + ': ok ' + JSON.stringify(r.result);
    $('last-action').className = 'ok';
    refresh();
    return r;
  } catch (err) {
    $('last-action').textContent = panel + ' ' + action + ': ' + err.message;
    $('last-action').className = 'bad';
  }
}

function render(d) {
  const ob = $('overview-body');
  ob.replaceChildren(
    el('tr', {}, el('td', {}, 'listen connection'), el('td', { class: d.notifier.status === 'listening' ? 'ok' : 'bad', id: 'notifier-status' }, d.notifier.status)),
    el('tr', {}, el('td', {}, 'clients (SSE / WebSocket)'), el('td', { id: 'clients' }, d.server.clients.sse + ' / ' + d.server.clients.ws)),
    el('tr', {}, el('td', {}, 'notifications received'), el('td', { id: 'notifications' }, d.server.counters.notifications)),
    el('tr', {}, el('td', {}, 'deliveries (SSE / WebSocket)'), el('td', {}, d.server.counters.deliveries.sse + ' / ' + d.server.counters.deliveries.ws)),
    el('tr', {}, el('td', {}, 'reconnects of the listen connection'), el('td', {}, d.notifier.reconnects)),
    el('tr', {}, el('td', {}, 'uptime'), el('td', {}, Math.round(d.server.uptimeMs / 1000) + ' s')),
  );
  const u = d.notifier.queueUsage == null ? 0 : d.notifier.queueUsage;
  $('usage-bar').style.width = Math.max(0.5, u * 100) + '%';
  const h = (d.notifier.queueTailHolders || [])[0];
  $('usage-text').textContent = (u * 100).toFixed(4) + '% of the notification queue in use' +
    (d.notifier.wakeups === false ? ' — WAKE-UPS PAUSED (consumers poll)' : '') +
    (h && (u >= 0.5 || d.notifier.wakeups === false) ? ' — tail likely held by pid ' + h.pid + ' (' + h.reason + ', ' + JSON.stringify(h.applicationName) + ')' : u >= 0.5 ? ' — a listener may sit in a long transaction' : '');
  $('topics-body').replaceChildren(...d.topics.map((t) => el('tr', {}, el('td', {}, t.topic), el('td', {}, t.channel), el('td', {}, t.clients))));
  $('channels-body').replaceChildren(...d.channels.map((c) => el('tr', {}, el('td', {}, c.channel), el('td', {}, c.subscribers), el('td', {}, c.delivered), el('td', {}, c.dropped), el('td', {}, c.listening))));
  // A panel's section is rebuilt only when its data changed, so buttons stay put between refreshes.
  const panels = $('panels');
  const keep = new Set();
  let prev = null;
  for (const p of d.panels) {
    const json = JSON.stringify(p);
    keep.add('panel-' + p.id);
    let s = $('panel-' + p.id);
    if (!s || s.dataset.json !== json) {
      const fresh = renderPanel(p);
      fresh.dataset.json = json;
      if (s) s.replaceWith(fresh); else panels.append(fresh);
      s = fresh;
    }
    if (prev ? prev.nextSibling !== s : panels.firstChild !== s) { if (prev) prev.after(s); else panels.prepend(s); }
    prev = s;
  }
  for (const s of [...panels.children]) if (!keep.has(s.id)) s.remove();
}

function renderPanel(p) {
  // Tables with many columns take the whole row.
  const wide = Array.isArray(p.data) && p.data.length > 0 && Object.keys(p.data[0]).length > 5;
  const s = el('section', { id: 'panel-' + p.id, 'data-panel': p.id, class: wide ? 'wide' : '' }, el('h2', {}, p.title));
  if (p.missing) s.append(el('p', { class: 'muted' }, 'not installed in this server'));
  else if (p.error) s.append(el('p', { class: 'bad' }, p.error));
  else {
    for (const a of p.actions.filter((x) => x.scope === 'panel')) s.append(el('button', { 'data-action': a.name, onclick: () => act(p.id, a.name, {}) }, a.label));
    s.append(renderTable(p.data, p));
  }
  return s;
}

// One refresh at a time: a call during a refresh runs once more right after it.
let timer, running = false, again = false, jobEvents;
async function refresh() {
  if (running) { again = true; return; }
  running = true;
  clearTimeout(timer);
  try {
    render(await api('/api/dashboard'));
    $('status').textContent = 'live';
    $('status').className = 'ok';
    followJobs();
  } catch (err) {
    $('status').textContent = err.status === 401 || err.status === 403 ? 'enter an admin token' : 'error: ' + err.message;
    $('status').className = 'bad';
  }
  running = false;
  if (again) { again = false; refresh(); } else timer = setTimeout(refresh, 1000);
}
// Transitions of announced jobs (pipelines) refresh at once; the poll above catches the rest.
function followJobs() {
  // Kept while open or reconnecting; replaced when the token changes or the server refused it (CLOSED).
  if (jobEvents && jobEvents.token === token && jobEvents.readyState !== EventSource.CLOSED) return;
  if (jobEvents) jobEvents.close();
  jobEvents = new EventSource('/jobs/events' + (token ? '?access_token=' + encodeURIComponent(token) : ''));
  jobEvents.token = token;
  jobEvents.addEventListener('transition', () => refresh());
}
refresh();

let client, watching;
$('watch-go').onclick = () => {
  if (!client) {
    client = new HeraldClient({ url: location.origin, token: () => token });
    client.on('state', (s) => { $('watch-state').textContent = s; });
    client.on('gap', (g) => $('events').prepend(el('div', { class: 'bad' }, 'gap: ' + g.reason)));
  }
  if (watching) watching.close();
  $('events').replaceChildren();
  watching = client.subscribe($('watch-topic').value, (e) => $('events').prepend(el('div', { class: 'event' }, e.id + '  ' + e.data)));
};
window.heraldDashboard = { refresh, get client() { return client; }, get jobEvents() { return jobEvents; } };
</script>
</body>
</html>
`;

/** The dashboard page's paths: `/`, `/dashboard`, `/dashboard/`. */
export const DASHBOARD_PATH = /^\/(?:dashboard\/?)?$/;

/** The page's one inline script, allowed by its hash (no 'unsafe-inline' for scripts). */
const INLINE_SCRIPT = /<script type="module">([\s\S]*?)<\/script>/.exec(DASHBOARD_HTML)![1];

/**
 * The Content-Security-Policy of the dashboard: its own inline module script (by hash)
 * and `/client.js`; fetch, EventSource and WebSocket to its own origin only; inline
 * styles (the page sets widths); no framing, no plugins, no forms, no `<base>`.
 */
export const DASHBOARD_CSP = [
  "default-src 'none'",
  `script-src 'self' 'sha256-${createHash('sha256').update(INLINE_SCRIPT).digest('base64')}'`,
  "style-src 'unsafe-inline'",
  "connect-src 'self'",
  "img-src 'self' data:",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');
