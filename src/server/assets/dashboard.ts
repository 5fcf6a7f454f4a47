/**
 * The dashboard page served at `GET /` and `GET /dashboard`. It holds no data: it reads
 * `/api/dashboard` every second with the admin token the operator enters (kept in
 * sessionStorage, or given as `?access_token=`), renders the built-in figures and every
 * panel the parts registered, and runs panel actions through
 * `POST /api/dashboard/panels/<id>/actions/<name>`. A "watch topic" box shows a topic's
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
  section { background: #fff; border: 1px solid #dde1e8; border-radius: 6px; padding: 12px 14px; }
  section h2 { font-size: 15px; margin: 0 0 8px; }
  table { border-collapse: collapse; width: 100%; font-size: 13px; }
  th, td { text-align: left; padding: 3px 6px; border-bottom: 1px solid #eef0f4; }
  .kv td:first-child { color: #5b6477; width: 45%; }
  .bar { height: 10px; background: #eef0f4; border-radius: 5px; overflow: hidden; }
  .bar > div { height: 100%; background: #3b82f6; }
  .bad { color: #b91c1c; } .ok { color: #15803d; } .muted { color: #8a93a6; }
  #events { max-height: 220px; overflow: auto; font-family: ui-monospace, monospace; font-size: 12px; }
  button { font-size: 12px; }
</style>
</head>
<body>
<header>
  <h1>pgherald</h1>
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
    for (const [k, v] of Object.entries(data || {})) tb.append(el('tr', {}, el('td', {}, k), el('td', {}, cell(v))));
    return el('table', { class: 'kv' }, tb);
  }
  if (rows.length === 0) return el('p', { class: 'muted' }, 'none');
  const cols = [...new Set(rows.flatMap((r) => Object.keys(r)))];
  const rowActions = panel.actions.filter((a) => a.scope === 'row');
  const head = el('tr', {}, ...cols.map((c) => el('th', {}, c)), ...(rowActions.length ? [el('th', {}, '')] : []));
  const tb = el('tbody');
  for (const r of rows) {
    const tr = el('tr', {}, ...cols.map((c) => el('td', {}, cell(r[c]))));
    if (rowActions.length) tr.append(el('td', {}, ...rowActions.map((a) => el('button', { 'data-action': a.name, onclick: () => act(panel.id, a.name, r) }, a.label))));
    tb.append(tr);
  }
  return el('table', {}, el('thead', {}, head), tb);
}

async function act(panel, action, args) {
  try {
    const r = await api('/api/dashboard/panels/' + encodeURIComponent(panel) + '/actions/' + encodeURIComponent(action), { method: 'POST', body: JSON.stringify({ args }) });
    $('status').textContent = action + ': ok';
    refresh();
    return r;
  } catch (err) {
    $('status').textContent = action + ': ' + err.message;
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
  $('usage-text').textContent = (u * 100).toFixed(4) + '% of the notification queue in use' + (u >= 0.5 ? ' — a listener may sit in a long transaction' : '');
  $('topics-body').replaceChildren(...d.topics.map((t) => el('tr', {}, el('td', {}, t.topic), el('td', {}, t.channel), el('td', {}, t.clients))));
  $('channels-body').replaceChildren(...d.channels.map((c) => el('tr', {}, el('td', {}, c.channel), el('td', {}, c.subscribers), el('td', {}, c.delivered), el('td', {}, c.dropped), el('td', {}, c.listening))));
  const panels = $('panels');
  panels.replaceChildren(...d.panels.map((p) => {
    const s = el('section', { id: 'panel-' + p.id, 'data-panel': p.id }, el('h2', {}, p.title));
    if (p.missing) s.append(el('p', { class: 'muted' }, 'not installed in this server'));
    else if (p.error) s.append(el('p', { class: 'bad' }, p.error));
    else {
      for (const a of p.actions.filter((x) => x.scope === 'panel')) s.append(el('button', { 'data-action': a.name, onclick: () => act(p.id, a.name, {}) }, a.label));
      s.append(renderTable(p.data, p));
    }
    return s;
  }));
}

let timer;
async function refresh() {
  clearTimeout(timer);
  try {
    render(await api('/api/dashboard'));
    $('status').textContent = 'live';
    $('status').className = 'ok';
  } catch (err) {
    $('status').textContent = err.status === 401 || err.status === 403 ? 'enter an admin token' : 'error: ' + err.message;
    $('status').className = 'bad';
  }
  timer = setTimeout(refresh, 1000);
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
window.heraldDashboard = { refresh, get client() { return client; } };
</script>
</body>
</html>
`;
