/**
 * The dashboard page served at `GET /` and `GET /dashboard`, and its one script bundle
 * `GET /dashboard.js` (uPlot followed by {@link DASHBOARD_JS}). The page holds no data:
 * with the admin token the operator enters (kept in sessionStorage, or given as
 * `?access_token=`) it reads `/api/dashboard` every second and renders the built-in
 * figures and every panel the parts registered; `GET /jobs/events` (SSE) makes it
 * refresh at once on announced job transitions. Charts of the last hour read
 * `/api/dashboard/series`; client-side views (`#/jobs`, `#/jobs/<id>`, `#/dead`,
 * `#/mailbox/<id>`, `#/outbox/<id>`, `#/topics`, `#/topics/<t>/groups/<g>`, `#/audit`)
 * read the admin API of routes/admin.ts. A "watch topic" box shows a topic's events
 * live through the browser client.
 */
export const DASHBOARD_HTML_TEMPLATE = String.raw`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>pgherald dashboard</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<link rel="icon" href="/favicon.svg" type="image/svg+xml">
<style>
  :root { --bg: #f6f7f9; --fg: #1d2330; --card: #fff; --line: #dde1e8; --soft: #eef0f4; --muted: #5b6477; --accent: #2563eb; --bad: #b91c1c; --ok: #15803d; --warn: #b45309; --head: #1d2330; --headfg: #fff; }
  @media (prefers-color-scheme: dark) {
    :root { --bg: #0f131a; --fg: #e3e7ee; --card: #171c25; --line: #2a3140; --soft: #222937; --muted: #9aa4b6; --accent: #60a5fa; --bad: #f87171; --ok: #4ade80; --warn: #fbbf24; --head: #05070a; --headfg: #e3e7ee; }
  }
  * { box-sizing: border-box; }
  [hidden] { display: none !important; }
  body { font: 14px/1.4 system-ui, sans-serif; margin: 0; background: var(--bg); color: var(--fg); }
  a { color: var(--accent); }
  a:focus-visible, button:focus-visible, input:focus-visible, select:focus-visible, summary:focus-visible { outline: 3px solid var(--accent); outline-offset: 2px; }
  #view:focus, #main:focus { outline: none; }
  .skip { position: absolute; left: -999px; } .skip:focus { left: 8px; top: 8px; z-index: 10; background: var(--card); padding: 6px; }
  header { background: var(--head); color: var(--headfg); padding: 8px 16px; display: flex; flex-wrap: wrap; gap: 8px 16px; align-items: center; }
  header h1 { font-size: 18px; margin: 0; }
  header nav { display: flex; flex-wrap: wrap; gap: 4px 12px; flex: 1; }
  header nav a { color: var(--headfg); text-decoration: none; padding: 2px 4px; border-radius: 4px; }
  header nav a[aria-current="page"] { background: rgba(255,255,255,0.15); }
  header .tok { display: flex; gap: 6px; align-items: center; flex-wrap: wrap; }
  header input { max-width: 14em; }
  header input, header button { color: var(--fg); }
  main { padding: 12px 16px; }
  .grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(420px, 100%), 1fr)); gap: 14px; }
  section { background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; min-width: 0; overflow-x: auto; }
  section.wide { grid-column: 1 / -1; }
  section h2 { font-size: 15px; margin: 0 0 8px; }
  table { border-collapse: collapse; width: 100%; font-size: 13px; }
  th, td { text-align: left; padding: 3px 6px; border-bottom: 1px solid var(--soft); vertical-align: top; }
  td { overflow-wrap: anywhere; }
  .kv td:first-child { color: var(--muted); width: 40%; }
  .bar { height: 10px; background: var(--soft); border-radius: 5px; overflow: hidden; }
  .bar > div { height: 100%; background: var(--accent); }
  .bad { color: var(--bad); } .ok { color: var(--ok); } .muted { color: var(--muted); }
  #events { max-height: 220px; overflow: auto; font-family: ui-monospace, monospace; font-size: 12px; }
  pre { background: var(--soft); padding: 8px; border-radius: 4px; overflow: auto; max-height: 320px; font-size: 12px; margin: 4px 0; white-space: pre-wrap; overflow-wrap: anywhere; }
  button, input, select { font: inherit; font-size: 13px; color: inherit; background: var(--card); border: 1px solid var(--line); border-radius: 4px; padding: 3px 8px; }
  button { cursor: pointer; } button:hover { border-color: var(--accent); }
  button.danger { color: var(--bad); }
  form.filters { display: flex; flex-wrap: wrap; gap: 6px; align-items: end; margin-bottom: 8px; }
  form.filters label { display: flex; flex-direction: column; font-size: 12px; color: var(--muted); }
  .state-dead, .state-cancelled { color: var(--bad); } .state-completed, .state-published, .state-consumed { color: var(--ok); } .state-running { color: var(--warn); }
  .chart { min-height: 150px; }
  .uplot .u-legend { font-size: 12px; }
  #refused { display: none; } body.refused #refused { display: block; }
  body.refused #home, body.refused #view { display: none; }
  @media (max-width: 600px) { main { padding: 8px; } th, td { white-space: nowrap; max-width: 24em; overflow: hidden; text-overflow: ellipsis; } .kv td { white-space: normal; } }
  @media (min-width: 1900px) { body { font-size: 16px; } table { font-size: 15px; } }
/*UPLOT_CSS*/
</style>
</head>
<body>
<a class="skip" href="#main">Skip to content</a>
<header>
  <h1>pgherald</h1>
  <nav aria-label="views">
    <a href="#/">Overview</a><a href="#/jobs">Jobs</a><a href="#/dead">Dead letters</a><a href="#/topics">Topics</a><a href="#/audit">Audit</a>
  </nav>
  <span id="last-action" class="muted" role="status"></span>
  <span id="status" class="muted" role="status" aria-live="polite">connecting…</span>
  <span class="tok"><input id="token" type="password" placeholder="admin token" aria-label="admin token" autocomplete="off"><button id="save">Use token</button></span>
</header>
<main id="main" tabindex="-1">
<section id="refused"><h2 id="refused-title">Token refused</h2><p id="refused-text"></p></section>
<div id="home" class="grid">
  <section id="charts" class="wide" aria-label="charts"><h2>Last hour <span id="charts-note" class="muted"></span></h2><div class="grid" id="chart-grid"></div></section>
  <section id="overview"><h2>Server</h2><table class="kv"><tbody id="overview-body"></tbody></table></section>
  <section id="queue-usage"><h2>Notification queue</h2><div class="bar"><div id="usage-bar" style="width:0%"></div></div><p id="usage-text" class="muted"></p></section>
  <section id="topics"><h2>Topics</h2><table><thead><tr><th>topic</th><th>channel</th><th>clients</th></tr></thead><tbody id="topics-body"></tbody></table></section>
  <section id="channels"><h2>Channels (listen connection)</h2><table><thead><tr><th>channel</th><th>subscribers</th><th>delivered</th><th>dropped</th><th>listening</th></tr></thead><tbody id="channels-body"></tbody></table></section>
  <section id="watch"><h2>Watch a topic</h2><input id="watch-topic" placeholder="topic" aria-label="topic to watch"> <button id="watch-go">Watch</button> <span id="watch-state" class="muted"></span><div id="events"></div></section>
  <div id="panels" style="display: contents"></div>
</div>
<div id="view" tabindex="-1"></div>
</main>
<script src="/dashboard.js"></script>
</body>
</html>
`;

/** The page's script (after uPlot in `/dashboard.js`); a classic script, no inline code in the page. */
export const DASHBOARD_JS = String.raw`(function () {
'use strict';
var params = new URLSearchParams(location.search);
var token = params.get('access_token') || sessionStorage.getItem('herald-token') || '';
var $ = function (id) { return document.getElementById(id); };
var isAdmin = false;
$('token').value = token;
$('save').onclick = function () { token = $('token').value; sessionStorage.setItem('herald-token', token); refresh(); route(); };
$('token').onkeydown = function (e) { if (e.key === 'Enter') $('save').click(); };

function el(tag, attrs) {
  var e = document.createElement(tag);
  var a = attrs || {};
  for (var k in a) {
    if (a[k] == null) continue;
    if (k.slice(0, 2) === 'on') e[k] = a[k]; else e.setAttribute(k, a[k]);
  }
  for (var i = 2; i < arguments.length; i++) {
    var c = arguments[i];
    if (Array.isArray(c)) c.forEach(function (x) { e.append(x instanceof Node ? x : document.createTextNode(x == null ? '' : String(x))); });
    else e.append(c instanceof Node ? c : document.createTextNode(c == null ? '' : String(c)));
  }
  return e;
}

// Readable units.
function dur(ms) {
  if (ms == null || isNaN(ms)) return '—';
  var a = Math.abs(ms);
  if (a < 1000) return Math.round(ms) + ' ms';
  if (a < 60000) return (ms / 1000).toFixed(a < 10000 ? 2 : 1) + ' s';
  if (a < 3600000) return Math.floor(a / 60000) + ' min ' + Math.round((a % 60000) / 1000) + ' s';
  if (a < 86400000) return Math.floor(a / 3600000) + ' h ' + Math.round((a % 3600000) / 60000) + ' min';
  return Math.floor(a / 86400000) + ' d ' + Math.round((a % 86400000) / 3600000) + ' h';
}
function size(b) {
  if (b == null) return '—';
  var u = ['B', 'KB', 'MB', 'GB', 'TB'], i = 0;
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return (i ? b.toFixed(b < 10 ? 1 : 0) : b) + ' ' + u[i];
}
function ago(iso) {
  if (!iso) return '—';
  var t = new Date(iso).getTime();
  if (isNaN(t)) return String(iso);
  var d = Date.now() - t;
  return d >= 0 ? dur(d) + ' ago' : 'in ' + dur(-d);
}
function num(n) { return typeof n === 'number' ? n.toLocaleString() : n; }
/** A table cell: times relative (ISO in the title), durations and sizes readable, objects as JSON. */
function fmtCell(k, v) {
  if (v == null) return { text: '' };
  if (/At$/.test(k) && typeof v === 'string') return { text: ago(v), title: v };
  if (/Ms$/.test(k) && typeof v === 'number') return { text: dur(v) };
  if (/^bytes$|Bytes$/.test(k) && typeof v === 'number') return { text: size(v) };
  if (typeof v === 'object') return { text: JSON.stringify(v) };
  return { text: String(v) };
}
var linkOf = {
  jobs: function (r) { return '#/jobs/' + r.id; }, pipelines: function (r) { return '#/jobs/' + r.id; }, stuck: function (r) { return '#/jobs/' + r.id; },
  'mailbox-dead': function (r) { return '#/mailbox/' + encodeURIComponent(r.id); }, 'outbox-dead': function (r) { return '#/outbox/' + r.id; },
  mailboxes: function (r) { return '#/dead?to=' + encodeURIComponent(r.to); },
};

async function api(path, init) {
  var headers = Object.assign({ 'content-type': 'application/json' }, token ? { authorization: 'Bearer ' + token } : {});
  var res = await fetch(path, Object.assign({ headers: headers }, init || {}));
  var body = await res.json().catch(function () { return {}; });
  if (!res.ok) throw Object.assign(new Error((body.error && body.error.message) || res.statusText), { status: res.status, code: body.error && body.error.code });
  return body;
}
function post(path, body) { return api(path, { method: 'POST', body: JSON.stringify(body || {}) }); }

/** Token states: none given, refused (401/403), or accepted. */
function authState(err) {
  var refused = err && (err.status === 401 || err.status === 403);
  document.body.classList.toggle('refused', !!refused);
  if (refused) {
    isAdmin = false;
    document.body.classList.remove('admin');
    $('panels').replaceChildren();
    $('view').replaceChildren();
    if (!token) {
      $('status').textContent = 'enter an admin token';
      $('refused-title').textContent = 'No token';
      $('refused-text').textContent = 'This server needs an admin token: enter it above (it is kept in this tab only).';
    } else {
      $('status').textContent = 'token refused';
      $('refused-title').textContent = 'Token refused';
      $('refused-text').textContent = (err.status === 401 ? 'The server does not accept this token (401): check it, or whether it expired.' : 'This token is valid but holds no admin grant on the dashboard (403).') + ' ' + err.message;
    }
    $('status').className = 'bad';
    return true;
  }
  return false;
}

async function act(panel, action, args) {
  try {
    var r = await post('/api/dashboard/panels/' + encodeURIComponent(panel) + '/actions/' + encodeURIComponent(action), { args: args });
    $('last-action').textContent = panel + ' ' + action + ': ok ' + JSON.stringify(r.result);
    $('last-action').className = 'ok';
    refresh();
    return r;
  } catch (err) {
    $('last-action').textContent = panel + ' ' + action + ': ' + err.message;
    $('last-action').className = 'bad';
  }
}

/** Runs a control action after the operator confirms it; reports the outcome in the header. */
async function control(what, path, body, after) {
  if (!confirm(what + '?')) return;
  try {
    var r = await post(path, body);
    $('last-action').textContent = what + ': ok ' + JSON.stringify(r);
    $('last-action').className = 'ok';
    refresh();
    if (after) after(r);
  } catch (err) {
    $('last-action').textContent = what + ': ' + err.message;
    $('last-action').className = 'bad';
  }
}

function renderTable(data, panel) {
  var rows = Array.isArray(data) ? data : null;
  if (!rows) {
    var tb = el('tbody');
    Object.keys(data || {}).forEach(function (k) { var f = fmtCell(k, data[k]); tb.append(el('tr', { 'data-key': k }, el('td', {}, k), el('td', { 'data-col': k, title: f.title }, f.text))); });
    return el('table', { class: 'kv' }, tb);
  }
  if (rows.length === 0) return el('p', { class: 'muted' }, 'none');
  var cols = Array.from(new Set(rows.flatMap(function (r) { return Object.keys(r); })));
  var rowActions = isAdmin ? panel.actions.filter(function (a) { return a.scope === 'row'; }) : [];
  var head = el('tr', {}, cols.map(function (c) { return el('th', { scope: 'col' }, c); }), rowActions.length ? [el('th', {}, '')] : []);
  var tbody = el('tbody');
  var link = linkOf[panel.id];
  rows.forEach(function (r, i) {
    var tr = el('tr', r.id != null ? { 'data-row-id': r.id } : {}, cols.map(function (c) {
      var f = fmtCell(c, r[c]);
      var first = link && (c === 'id' || (c === 'to' && panel.id === 'mailboxes'));
      return el('td', { 'data-col': c, class: c === 'state' ? 'state-' + r[c] : null, title: f.title }, first ? el('a', { href: link(r) }, f.text) : f.text);
    }));
    if (rowActions.length) {
      var offered = panel.rowActions ? rowActions.filter(function (a) { return panel.rowActions[i].includes(a.name); }) : rowActions;
      tr.append(el('td', {}, offered.map(function (a) { return el('button', { 'data-action': a.name, onclick: function () { act(panel.id, a.name, r); } }, a.label); })));
    }
    tbody.append(tr);
  });
  return el('table', {}, el('thead', {}, head), tbody);
}

function render(d) {
  $('overview-body').replaceChildren(
    el('tr', {}, el('td', {}, 'listen connection'), el('td', { class: d.notifier.status === 'listening' ? 'ok' : 'bad', id: 'notifier-status' }, d.notifier.status)),
    el('tr', {}, el('td', {}, 'clients (SSE / WebSocket)'), el('td', { id: 'clients' }, d.server.clients.sse + ' / ' + d.server.clients.ws)),
    el('tr', {}, el('td', {}, 'notifications received'), el('td', { id: 'notifications' }, num(d.server.counters.notifications))),
    el('tr', {}, el('td', {}, 'deliveries (SSE / WebSocket)'), el('td', {}, num(d.server.counters.deliveries.sse) + ' / ' + num(d.server.counters.deliveries.ws))),
    el('tr', {}, el('td', {}, 'reconnects of the listen connection'), el('td', {}, d.notifier.reconnects)),
    el('tr', {}, el('td', {}, 'uptime'), el('td', {}, dur(d.server.uptimeMs))),
    el('tr', {}, el('td', {}, 'panels read'), el('td', { title: d.panelsReadAt }, ago(d.panelsReadAt))),
  );
  var u = d.notifier.queueUsage == null ? 0 : d.notifier.queueUsage;
  $('usage-bar').style.width = Math.max(0.5, u * 100) + '%';
  var h = (d.notifier.queueTailHolders || [])[0];
  $('usage-text').textContent = (u * 100).toFixed(4) + '% of the notification queue in use' +
    (d.notifier.wakeups === false ? ' — WAKE-UPS PAUSED (consumers poll)' : '') +
    (h && (u >= 0.5 || d.notifier.wakeups === false) ? ' — tail likely held by pid ' + h.pid + ' (' + h.reason + ', ' + JSON.stringify(h.applicationName) + ')' : u >= 0.5 ? ' — a listener may sit in a long transaction' : '');
  $('topics-body').replaceChildren.apply($('topics-body'), d.topics.map(function (t) { return el('tr', {}, el('td', {}, t.topic), el('td', {}, t.channel), el('td', {}, t.clients)); }));
  $('channels-body').replaceChildren.apply($('channels-body'), d.channels.map(function (c) { return el('tr', {}, el('td', {}, c.channel), el('td', {}, c.subscribers), el('td', {}, num(c.delivered)), el('td', {}, num(c.dropped)), el('td', {}, c.listening)); }));
  // A panel's section is rebuilt only when its data changed, so buttons (and focus) stay put between refreshes.
  var panels = $('panels');
  var keep = new Set();
  var prev = null;
  d.panels.forEach(function (p) {
    var json = JSON.stringify(p);
    keep.add('panel-' + p.id);
    var s = $('panel-' + p.id);
    if (!s || s.dataset.json !== json) {
      var fresh = renderPanel(p);
      fresh.dataset.json = json;
      if (s) s.replaceWith(fresh); else panels.append(fresh);
      s = fresh;
    }
    if (prev ? prev.nextSibling !== s : panels.firstChild !== s) { if (prev) prev.after(s); else panels.prepend(s); }
    prev = s;
  });
  Array.from(panels.children).forEach(function (s) { if (!keep.has(s.id)) s.remove(); });
}

// Row actions of a panel (the queues panel's Pause/Resume, retry, cancel, redrive) are
// buttons posting to /api/dashboard/panels/<id>/actions/<name> (audited by the server).
function renderPanel(p) {
  var wide = Array.isArray(p.data) && p.data.length > 0 && Object.keys(p.data[0]).length > 5;
  var s = el('section', { id: 'panel-' + p.id, 'data-panel': p.id, class: wide ? 'wide' : null }, el('h2', {}, p.title));
  if (p.missing) s.append(el('p', { class: 'muted' }, 'not installed in this server'));
  else if (p.error) s.append(el('p', { class: 'bad' }, p.error));
  else {
    if (isAdmin) p.actions.filter(function (x) { return x.scope === 'panel'; }).forEach(function (a) { s.append(el('button', { 'data-action': a.name, onclick: function () { act(p.id, a.name, {}); } }, a.label)); });
    s.append(renderTable(p.data, p));
  }
  return s;
}

// One refresh at a time: a call during a refresh runs once more right after it.
var timer, running = false, again = false, jobEvents;
async function refresh() {
  if (running) { again = true; return; }
  running = true;
  clearTimeout(timer);
  try {
    var d = await api('/api/dashboard');
    authState(null);
    var first = !isAdmin;
    if (first) { isAdmin = true; document.body.classList.add('admin'); $('panels').replaceChildren(); }
    render(d);
    if (first) { route(); loadSeries(); }
    $('status').textContent = 'live';
    $('status').className = 'ok';
    followJobs();
  } catch (err) {
    if (!authState(err)) { $('status').textContent = 'error: ' + err.message; $('status').className = 'bad'; }
  }
  running = false;
  if (again) { again = false; refresh(); } else timer = setTimeout(refresh, 1000);
}
// Transitions of announced jobs (pipelines) refresh at once; the poll above catches the rest.
function followJobs() {
  if (jobEvents && jobEvents.token === token && jobEvents.readyState !== EventSource.CLOSED) return;
  if (jobEvents) jobEvents.close();
  jobEvents = new EventSource('/jobs/events' + (token ? '?access_token=' + encodeURIComponent(token) : ''));
  jobEvents.token = token;
  jobEvents.addEventListener('transition', function (e) {
    refresh();
    try { var t = JSON.parse(e.data); if (current && current.jobId === t.id) route(); } catch (_) { /* not JSON */ }
  });
}

// ---- Charts (uPlot), fed by GET /api/dashboard/series (the server samples on a timer) ----
var charts = {}, lastSeries = null, seriesTimer;
var PALETTE = ['#2563eb', '#dc2626', '#16a34a', '#d97706', '#7c3aed', '#0891b2', '#db2777', '#65a30d', '#9333ea', '#ea580c'];
function css(v) { return getComputedStyle(document.documentElement).getPropertyValue(v).trim(); }
function chartDefs(s) {
  var per = function (obj, suffix) { return Object.keys(obj).map(function (k) { return { label: k + (suffix || ''), data: obj[k] }; }); };
  return [
    { id: 'throughput', title: 'Throughput (jobs/s: completed, dead)', unit: '/s', series: per(s.completed, ' completed').concat(per(s.failed, ' dead')) },
    { id: 'depth', title: 'Queue depth (due jobs waiting)', series: per(s.depth) },
    { id: 'latency', title: 'Due-to-start latency', unit: 'ms', series: per(s.latency) },
    { id: 'mailbox', title: 'Mailbox backlog (ready, dead)', series: per(s.mailbox, ' ready').concat(per(s.mailboxDead, ' dead')) },
    { id: 'outbox', title: 'Outbox backlog', series: [{ label: 'pending', data: s.outbox.pending }, { label: 'dead', data: s.outbox.dead }] },
    { id: 'lag', title: 'Topic group lag (messages)', series: per(s.groups) },
  ];
}
function fmtVal(unit) {
  return function (u, v) { return v == null ? '—' : unit === 'ms' ? dur(v) : unit === '/s' ? (v < 10 ? v.toFixed(2) : v.toFixed(0)) + '/s' : Number.isInteger(v) ? num(v) : v.toFixed(1); };
}
function drawCharts(s) {
  lastSeries = s;
  if (typeof uPlot === 'undefined') { $('charts-note').textContent = '(charts unavailable: uPlot not shipped)'; return; }
  $('charts-note').textContent = s.t.length ? '— ' + s.t.length + ' samples, every ' + dur(s.intervalMs) : '— waiting for the first sample';
  var grid = $('chart-grid');
  chartDefs(s).forEach(function (def) {
    var box = $('chart-' + def.id);
    if (!box) { box = el('div', { id: 'chart-' + def.id, class: 'chart', 'data-chart': def.id, role: 'img', 'aria-label': def.title }); grid.append(box); }
    var key = def.series.map(function (x) { return x.label; }).join('|');
    var data = [s.t].concat(def.series.map(function (x) { return x.data; }));
    var c = charts[def.id];
    var width = Math.max(200, box.clientWidth || grid.clientWidth || 300);
    if (c && c.key === key) { c.setData(data); return; }
    if (c) c.destroy();
    box.replaceChildren();
    var fg = css('--fg'), line = css('--soft');
    var f = fmtVal(def.unit);
    c = new uPlot({
      title: def.title, width: width, height: 170,
      series: [{ value: function (u, v) { return v == null ? '—' : new Date(v * 1000).toLocaleTimeString(); } }].concat(def.series.map(function (x, i) {
        return { label: x.label, stroke: PALETTE[i % PALETTE.length], width: 1.5, spanGaps: false, value: f };
      })),
      axes: [
        { stroke: fg, grid: { stroke: line, width: 1 }, ticks: { stroke: line, width: 1 } },
        { stroke: fg, grid: { stroke: line, width: 1 }, ticks: { stroke: line, width: 1 }, size: 64, values: function (u, vals) { return vals.map(function (v) { return f(u, v); }); } },
      ],
      scales: { x: { time: true }, y: { range: function (u, min, max) { return [0, Math.max(1, max || 0) * 1.1]; } } },
      legend: { live: true },
    }, data, box);
    c.key = key;
    charts[def.id] = c;
  });
}
async function loadSeries() {
  clearTimeout(seriesTimer);
  var next = 5000;
  try {
    if (!document.body.classList.contains('refused') && isAdmin) {
      var s = await api('/api/dashboard/series');
      next = Math.max(1000, Math.min(s.intervalMs || 5000, 30000));
      if (!current || current.name === 'home') drawCharts(s);
    } else next = 1000;
  } catch (err) { authState(err); }
  seriesTimer = setTimeout(loadSeries, next);
}
// The system switched between light and dark: draw the charts again in its colours.
if (window.matchMedia) matchMedia('(prefers-color-scheme: dark)').addEventListener('change', function () {
  Object.keys(charts).forEach(function (k) { charts[k].destroy(); delete charts[k]; });
  if (lastSeries && (!current || current.name === 'home')) drawCharts(lastSeries);
});
window.addEventListener('resize', function () {
  Object.keys(charts).forEach(function (k) { var box = $('chart-' + k); if (box && box.clientWidth) charts[k].setSize({ width: box.clientWidth, height: 170 }); });
});

// ---- Views: #/ (overview), #/jobs, #/jobs/<id>, #/dead, #/mailbox/<id>, #/outbox/<id>, #/topics, #/topics/<t>/groups/<g>, #/audit ----
var current = null;
function kv(obj, keys) {
  var tb = el('tbody');
  keys.forEach(function (k) {
    var v = obj[k];
    var f = fmtCell(k, v);
    tb.append(el('tr', { 'data-key': k }, el('th', { scope: 'row' }, k), el('td', { 'data-col': k, title: f.title, class: k === 'state' ? 'state-' + v : null }, f.text)));
  });
  return el('table', { class: 'kv' }, tb);
}
function json(v) { return el('pre', {}, v === undefined ? '' : JSON.stringify(v, null, 2)); }
function section(title, attrs) { var s = el('section', attrs || {}, el('h2', {}, title)); for (var i = 2; i < arguments.length; i++) s.append(arguments[i]); return s; }
function ctl(label, onclick, cls) { return el('button', { class: cls || null, onclick: onclick, 'data-control': label.toLowerCase().replace(/[^a-z]+/g, '-') }, label); }
/** A table whose rows can be selected for a bulk action. */
function selectable(rows, cols, idOf, linkTo, bulk) {
  var picked = new Set();
  var all = el('input', { type: 'checkbox', 'aria-label': 'select all' });
  var boxes = [];
  all.onchange = function () { boxes.forEach(function (b) { b.checked = all.checked; b.onchange(); }); };
  var head = el('tr', {}, isAdmin && bulk.length ? el('th', {}, all) : '', cols.map(function (c) { return el('th', { scope: 'col' }, c); }));
  var tb = el('tbody');
  rows.forEach(function (r) {
    var id = idOf(r);
    var box = el('input', { type: 'checkbox', 'aria-label': 'select ' + id, 'data-select': id });
    box.onchange = function () { if (box.checked) picked.add(id); else picked.delete(id); };
    boxes.push(box);
    tb.append(el('tr', { 'data-row-id': id }, isAdmin && bulk.length ? el('td', {}, box) : '', cols.map(function (c, i) {
      var f = fmtCell(c, r[c]);
      return el('td', { 'data-col': c, class: c === 'state' ? 'state-' + r[c] : null, title: f.title }, i === 0 ? el('a', { href: linkTo(r) }, f.text) : f.text);
    })));
  });
  var bar = el('div', {}, isAdmin ? bulk.map(function (b) { return ctl(b.label, function () { if (picked.size === 0) { alert('select rows first'); return; } b.run(Array.from(picked)); }, b.cls); }) : '');
  return el('div', {}, bar, rows.length ? el('table', {}, el('thead', {}, head), tb) : el('p', { class: 'muted' }, 'none'));
}

var views = {
  async jobs(q) {
    var f = { state: q.get('state') || '', queue: q.get('queue') || '', kind: q.get('kind') || '', from: q.get('from') || '', to: q.get('to') || '', q: q.get('q') || '', beforeId: q.get('beforeId') || '' };
    var qs = new URLSearchParams();
    Object.keys(f).forEach(function (k) { if (f[k]) qs.set(k, k === 'from' || k === 'to' ? new Date(f[k]).toISOString() : f[k]); });
    var r = await api('/api/jobs?' + qs);
    var form = el('form', { class: 'filters', id: 'job-filters' },
      el('label', {}, 'search id / unique key', el('input', { name: 'q', value: f.q, type: 'search' })),
      el('label', {}, 'state', el('select', { name: 'state' }, ['', 'waiting', 'available', 'running', 'completed', 'dead', 'cancelled'].map(function (s) { var o = el('option', { value: s }, s || 'any'); if (s === f.state) o.selected = true; return o; }))),
      el('label', {}, 'queue', el('input', { name: 'queue', value: f.queue, size: 10 })),
      el('label', {}, 'kind', el('input', { name: 'kind', value: f.kind, size: 10 })),
      el('label', {}, 'created from', el('input', { name: 'from', type: 'datetime-local', value: f.from })),
      el('label', {}, 'to', el('input', { name: 'to', type: 'datetime-local', value: f.to })),
      el('button', { type: 'submit' }, 'Filter'));
    form.onsubmit = function (e) {
      e.preventDefault();
      var p = new URLSearchParams();
      new FormData(form).forEach(function (v, k) { if (v) p.set(k, v); });
      location.hash = '#/jobs' + (p.toString() ? '?' + p : '');
    };
    var rows = r.jobs.map(function (j) { return { id: j.id, queue: j.queue, kind: j.kind, state: j.state, stage: j.stage, attempt: j.attempt + '/' + j.maxAttempts, runAt: j.runAt, createdAt: j.createdAt, lastError: j.lastError }; });
    var table = selectable(rows, ['id', 'queue', 'kind', 'state', 'stage', 'attempt', 'runAt', 'createdAt', 'lastError'], function (x) { return x.id; }, function (x) { return '#/jobs/' + x.id; }, [
      { label: 'Retry selected', run: function (ids) { control('Retry ' + ids.length + ' job(s)', '/api/jobs/actions/retry', { ids: ids }, function () { route(); }); } },
      { label: 'Cancel selected', cls: 'danger', run: function (ids) { control('Cancel ' + ids.length + ' job(s)', '/api/jobs/actions/cancel', { ids: ids }, function () { route(); }); } },
    ]);
    var pager = el('p', {});
    if (f.beforeId) { var first = new URLSearchParams(q); first.delete('beforeId'); pager.append(el('a', { href: '#/jobs?' + first }, '« newest'), ' '); }
    if (r.nextBeforeId) { var nq = new URLSearchParams(q); nq.set('beforeId', r.nextBeforeId); pager.append(el('a', { href: '#/jobs?' + nq, id: 'older' }, 'older »')); }
    return [section('Jobs', { class: 'wide', id: 'jobs-list' }, form, table, pager)];
  },
  async job(id) {
    var j = await api('/api/jobs/' + id);
    current.jobId = j.id;
    var attempts = el('tbody');
    (j.errors || []).forEach(function (e, i) { attempts.append(el('tr', { 'data-attempt': e.attempt }, el('td', {}, e.attempt), el('td', { title: e.at }, ago(e.at)), el('td', {}, e.durationMs != null ? dur(e.durationMs) : (i > 0 ? dur(new Date(e.at) - new Date(j.errors[i - 1].at)) + ' after the previous' : '')), el('td', { class: 'bad' }, e.error))); });
    var lastRun = j.attemptedAt ? (j.finishedAt ? dur(new Date(j.finishedAt) - new Date(j.attemptedAt)) : 'running for ' + dur(Date.now() - new Date(j.attemptedAt))) : '—';
    var history = el('tbody');
    (j.history || []).forEach(function (h, i) { history.append(el('tr', {}, el('td', {}, h.stage || ''), el('td', { class: 'state-' + h.state }, h.state), el('td', { title: h.at }, ago(h.at)), el('td', {}, i > 0 ? dur(new Date(h.at) - new Date(j.history[i - 1].at)) : ''))); });
    var actions = el('div', {});
    if (isAdmin) {
      if (j.state === 'dead' || j.state === 'cancelled') actions.append(ctl('Retry', function () { control('Retry job ' + j.id, '/api/jobs/actions/retry', { ids: [j.id] }, function () { route(); }); }));
      if (j.state === 'available' || j.state === 'running') actions.append(ctl('Cancel', function () { control('Cancel job ' + j.id, '/api/jobs/actions/cancel', { ids: [j.id] }, function () { route(); }); }, 'danger'));
    }
    return [
      section('Job ' + j.id, { id: 'job-detail' }, actions, kv(j, ['state', 'queue', 'kind', 'stage', 'attempt', 'maxAttempts', 'priority', 'uniqueKey', 'createdAt', 'runAt', 'attemptedAt', 'finishedAt', 'leaseExpiresAt', 'lastError']), el('p', {}, 'last attempt took: ', el('span', { id: 'last-run' }, lastRun))),
      section('Payload', { id: 'job-payload' }, json(j.payload)),
      section('Result', { id: 'job-result' }, json(j.result)),
      section('Attempts that failed', { id: 'job-attempts', class: 'wide' }, (j.errors || []).length ? el('table', {}, el('thead', {}, el('tr', {}, el('th', {}, 'attempt'), el('th', {}, 'at'), el('th', {}, 'ran for'), el('th', {}, 'error'))), attempts) : el('p', { class: 'muted' }, 'none')),
      section('Pipeline history', { id: 'job-history', class: 'wide' }, j.history ? el('table', {}, el('thead', {}, el('tr', {}, el('th', {}, 'stage'), el('th', {}, 'state'), el('th', {}, 'at'), el('th', {}, 'after'))), history) : el('p', { class: 'muted' }, j.stages ? 'not announced' : 'not a pipeline job')),
    ];
  },
  async message(id) {
    var m = await api('/api/mailbox/messages/' + encodeURIComponent(id));
    var actions = el('div', {});
    if (isAdmin && m.state === 'dead') actions.append(ctl('Redrive', function () { control('Redrive message ' + m.id, '/api/mailbox/' + encodeURIComponent(m.to) + '/redrive', { ids: [m.id] }, function () { route(); }); }));
    return [section('Mailbox message ' + m.id, { id: 'message-detail' }, actions, kv(m, ['state', 'to', 'topic', 'attempts', 'createdAt', 'visibleAt', 'consumedAt', 'deadAt', 'lastError'])), section('Payload', {}, json(m.payload))];
  },
  async event(id) {
    var e = await api('/api/outbox/events/' + encodeURIComponent(id));
    var actions = el('div', {});
    if (isAdmin && e.state === 'dead') actions.append(ctl('Redrive', function () { control('Redrive event ' + e.id, '/api/outbox/redrive', { ids: [e.id] }, function () { route(); }); }));
    return [section('Outbox event ' + e.id, { id: 'event-detail' }, actions, kv(e, ['state', 'type', 'key', 'seq', 'attempts', 'createdAt', 'nextAttemptAt', 'publishedAt', 'deadAt', 'lastError'])), section('Payload', {}, json(e.payload)), section('Headers', {}, json(e.headers))];
  },
  async dead(q) {
    var d = await api('/api/dashboard');
    var out = [];
    var boxes = (d.panels.find(function (p) { return p.id === 'mailboxes'; }) || {}).data || [];
    var only = q.get('to');
    for (var i = 0; i < boxes.length; i++) {
      var b = boxes[i];
      if ((only && b.to !== only) || (!only && !b.dead)) continue;
      var rows = await api('/api/mailbox/' + encodeURIComponent(b.to) + '/dead?limit=200');
      out.push(section('Mailbox ' + b.to + ': dead letters', { class: 'wide', 'data-destination': b.to }, selectable(rows.map(function (m) { return { id: m.id, topic: m.topic, attempts: m.attempts, deadAt: m.deadAt, lastError: m.lastError }; }), ['id', 'topic', 'attempts', 'deadAt', 'lastError'], function (x) { return x.id; }, function (x) { return '#/mailbox/' + encodeURIComponent(x.id); }, [
        { label: 'Redrive selected', run: (function (to) { return function (ids) { control('Redrive ' + ids.length + ' message(s) of ' + to, '/api/mailbox/' + encodeURIComponent(to) + '/redrive', { ids: ids }, function () { route(); }); }; })(b.to) },
      ])));
    }
    var dead = (d.panels.find(function (p) { return p.id === 'outbox-dead'; }) || {}).data || [];
    out.push(section('Outbox dead letters', { class: 'wide', id: 'outbox-dead-list' }, selectable(dead, ['id', 'type', 'key', 'attempts', 'deadAt', 'lastError'], function (x) { return x.id; }, function (x) { return '#/outbox/' + x.id; }, [
      { label: 'Redrive selected', run: function (ids) { control('Redrive ' + ids.length + ' outbox event(s)', '/api/outbox/redrive', { ids: ids }, function () { route(); }); } },
    ])));
    if (out.length === 1 && !dead.length) out.unshift(el('p', { class: 'muted' }, 'No dead letters.'));
    return out;
  },
  async topics() {
    var ts = await api('/api/topics');
    var tb = el('tbody');
    ts.forEach(function (t) {
      var groups = t.groups.length ? t.groups.map(function (g) { return el('div', {}, el('a', { href: '#/topics/' + encodeURIComponent(t.name) + '/groups/' + encodeURIComponent(g.name) }, g.name), ' lag ' + num(g.lag)); }) : [el('span', { class: 'muted' }, 'no groups')];
      tb.append(el('tr', { 'data-topic': t.name }, el('td', {}, t.name), el('td', {}, t.partitions), el('td', {}, num(t.messages)), el('td', {}, size(t.bytes)), el('td', { title: t.newestAt }, ago(t.newestAt)), el('td', {}, groups)));
    });
    return [section('Topics', { class: 'wide', id: 'topics-list' }, ts.length ? el('table', {}, el('thead', {}, el('tr', {}, ['topic', 'partitions', 'messages', 'size', 'newest', 'groups'].map(function (c) { return el('th', {}, c); }))), tb) : el('p', { class: 'muted' }, 'none'))];
  },
  async group(topic, group) {
    var g = await api('/api/topics/' + encodeURIComponent(topic) + '/groups/' + encodeURIComponent(group));
    var tb = el('tbody');
    g.partitions.forEach(function (p) { tb.append(el('tr', { 'data-partition': p.partition }, el('td', {}, p.partition), el('td', {}, p.position), el('td', { 'data-col': 'lag' }, num(p.lag)), el('td', { title: p.updatedAt }, ago(p.updatedAt)))); });
    var actions = el('div', {});
    var path = '/api/topics/' + encodeURIComponent(topic) + '/groups/' + encodeURIComponent(group) + '/reset';
    if (isAdmin) {
      actions.append(ctl('Reset to earliest', function () { control('Reset group ' + group + ' of ' + topic + ' to earliest (replays every retained message)', path, { to: 'earliest' }, function () { route(); }); }, 'danger'));
      actions.append(' ', ctl('Reset to latest', function () { control('Reset group ' + group + ' of ' + topic + ' to latest (skips the backlog)', path, { to: 'latest' }, function () { route(); }); }, 'danger'));
    }
    return [section('Group ' + group + ' on ' + topic, { id: 'group-detail', class: 'wide' }, actions, el('p', {}, 'lag: ', el('strong', { id: 'group-lag' }, num(g.lag)), ' of ' + num(g.topicMessages) + ' retained messages'), el('table', {}, el('thead', {}, el('tr', {}, ['partition', 'position', 'lag', 'updated'].map(function (c) { return el('th', {}, c); }))), tb))];
  },
  async audit() {
    var a = await api('/api/dashboard/audit');
    var tb = el('tbody');
    a.forEach(function (e) { tb.append(el('tr', { 'data-seq': e.seq }, el('td', { title: e.at }, ago(e.at)), el('td', {}, e.principal), el('td', { 'data-col': 'action' }, e.action), el('td', {}, JSON.stringify(e.target)), el('td', { class: e.outcome === 'ok' ? 'ok' : 'bad' }, e.outcome), el('td', {}, JSON.stringify(e.detail)))); });
    return [section('Audit log (this server, newest first)', { class: 'wide', id: 'audit-list' }, a.length ? el('table', {}, el('thead', {}, el('tr', {}, ['when', 'who', 'action', 'target', 'outcome', 'detail'].map(function (c) { return el('th', {}, c); }))), tb) : el('p', { class: 'muted' }, 'none'))];
  },
};

function parseHash() {
  var h = location.hash.replace(/^#/, '') || '/';
  var qi = h.indexOf('?');
  var path = qi >= 0 ? h.slice(0, qi) : h;
  var q = new URLSearchParams(qi >= 0 ? h.slice(qi + 1) : '');
  var m;
  if (path === '/' || path === '' || path[0] !== '/') return { name: 'home', nav: '#/' };
  if (path === '/jobs') return { name: 'jobs', nav: '#/jobs', run: function () { return views.jobs(q); } };
  if ((m = /^\/jobs\/(\d+)$/.exec(path))) return { name: 'job', nav: '#/jobs', run: function () { return views.job(m[1]); } };
  if ((m = /^\/mailbox\/(.+)$/.exec(path))) return { name: 'message', nav: '#/dead', run: function () { return views.message(decodeURIComponent(m[1])); } };
  if ((m = /^\/outbox\/(.+)$/.exec(path))) return { name: 'event', nav: '#/dead', run: function () { return views.event(decodeURIComponent(m[1])); } };
  if (path === '/dead') return { name: 'dead', nav: '#/dead', run: function () { return views.dead(q); } };
  if (path === '/topics') return { name: 'topics', nav: '#/topics', run: function () { return views.topics(); } };
  if ((m = /^\/topics\/([^/]+)\/groups\/([^/]+)$/.exec(path))) return { name: 'group', nav: '#/topics', run: function () { return views.group(decodeURIComponent(m[1]), decodeURIComponent(m[2])); } };
  if (path === '/audit') return { name: 'audit', nav: '#/audit', run: function () { return views.audit(); } };
  return { name: 'missing', nav: '', run: function () { return [el('p', { class: 'bad' }, 'no such view: ' + path)]; } };
}
var routing = 0;
async function route() {
  var r = parseHash();
  var fresh = !current || current.hash !== location.hash;
  current = r;
  r.hash = location.hash;
  document.querySelectorAll('header nav a').forEach(function (a) { if (a.getAttribute('href') === r.nav) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current'); });
  $('home').hidden = r.name !== 'home';
  $('view').hidden = r.name === 'home';
  if (r.name === 'home') { $('view').replaceChildren(); if (lastSeries) drawCharts(lastSeries); return; }
  var mine = ++routing;
  try {
    var parts = await r.run();
    if (mine !== routing) return;
    $('view').replaceChildren(el('div', { class: 'grid', 'data-view': r.name }, parts));
    if (fresh) $('view').focus({ preventScroll: true });
  } catch (err) {
    if (mine !== routing || authState(err)) return;
    $('view').replaceChildren(el('section', { 'data-view': r.name }, el('p', { class: 'bad' }, (err.status === 404 ? 'not found: ' : 'error: ') + err.message)));
  }
}
window.addEventListener('hashchange', route);
refresh();
route();
loadSeries();

var client, watching;
$('watch-go').onclick = async function () {
  if (!client) {
    var mod = await import('./client.js');
    client = new mod.HeraldClient({ url: location.origin, token: function () { return token; } });
    client.on('state', function (s) { $('watch-state').textContent = s; });
    client.on('gap', function (g) { $('events').prepend(el('div', { class: 'bad' }, 'gap: ' + g.reason)); });
  }
  if (watching) watching.close();
  $('events').replaceChildren();
  watching = client.subscribe($('watch-topic').value, function (e) { $('events').prepend(el('div', { class: 'event' }, e.id + '  ' + e.data)); });
};
$('watch-topic').onkeydown = function (e) { if (e.key === 'Enter') $('watch-go').click(); };
window.heraldDashboard = { refresh: refresh, route: route, charts: charts, get series() { return lastSeries; }, get client() { return client; }, get jobEvents() { return jobEvents; } };
})();
`;

/** The favicon (`GET /favicon.svg`): a small herald's horn on a dark square. */
export const FAVICON_SVG = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><rect width="32" height="32" rx="6" fill="#1d2330"/><path d="M6 13h5l11-6v18l-11-6H6z" fill="#60a5fa"/><path d="M9 19l2 7h3l-2-7z" fill="#93c5fd"/></svg>';

/** The dashboard page's paths: `/`, `/dashboard`, `/dashboard/`. */
export const DASHBOARD_PATH = /^\/(?:dashboard\/?)?$/;

/**
 * The page with uPlot's stylesheet inlined (`css`, empty without uPlot). The page has no
 * inline script: its code is `/dashboard.js`.
 */
export function dashboardHtml(css: string): string {
  return DASHBOARD_HTML_TEMPLATE.replace('/*UPLOT_CSS*/', css.replace(/<\//g, '<\\/'));
}

/**
 * The Content-Security-Policy of the dashboard: scripts from its own origin only (its
 * bundle and `/client.js`; no inline script), fetch, EventSource and WebSocket to its own
 * origin only; inline styles (the page sets widths, uPlot positions its canvas); images
 * from itself (favicon) and data URLs; no framing, no plugins, no forms posted anywhere,
 * no `<base>`.
 */
export const DASHBOARD_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'unsafe-inline'",
  "connect-src 'self'",
  "img-src 'self' data:",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');
