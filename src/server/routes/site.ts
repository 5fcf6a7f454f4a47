import { CLIENT_JS } from '../assets/client.js';
import { DASHBOARD_CSP, DASHBOARD_JS, DASHBOARD_PATH, dashboardHtml, FAVICON_SVG } from '../assets/dashboard.js';
import { loadUplot } from '../assets/vendor.js';
import { readJson, sendJson, sendText } from '../http.js';
import type { HeraldServer } from '../server.js';

/**
 * The dashboard's one script: uPlot (with its MIT license notice) followed by the
 * page's own code. Built once per process from the files read at startup.
 */
let bundle: { js: string; html: string } | undefined;
export function dashboardBundle(): { js: string; html: string } {
  if (bundle) return bundle;
  const uplot = loadUplot();
  const js = uplot
    ? `/*! uPlot ${'\u2014'} the dashboard's charts. Its license:\n${uplot.license.replace(/\*\//g, '* /')}*/\n${uplot.js}\n;\n${DASHBOARD_JS}`
    : DASHBOARD_JS;
  bundle = { js, html: dashboardHtml(uplot?.css ?? '') };
  return bundle;
}

/** The browser client, the dashboard page, its script, favicon and data API. */
export function registerSiteRoutes(server: HeraldServer): void {
  const { js, html } = dashboardBundle();
  server.router.add('GET', /^\/client\.js$/, (_req, res) => sendText(res, 200, 'text/javascript; charset=utf-8', CLIENT_JS), { open: true });
  server.router.add('GET', /^\/dashboard\.js$/, (_req, res) => sendText(res, 200, 'text/javascript; charset=utf-8', js), { open: true });
  server.router.add('GET', /^\/favicon\.svg$/, (_req, res) => sendText(res, 200, 'image/svg+xml', FAVICON_SVG), { open: true });
  // The page holds no data: it asks for a token and reads /api/dashboard with it.
  server.router.add('GET', DASHBOARD_PATH, (_req, res) => {
    res.setHeader('content-security-policy', DASHBOARD_CSP); // replaces the guard's default-src 'none'
    sendText(res, 200, 'text/html; charset=utf-8', html);
  }, { open: true });
  server.router.add('GET', /^\/api\/dashboard$/, async (_req, res) => sendJson(res, 200, await server.dashboard.snapshot()), {
    action: 'admin',
    resource: () => 'dashboard',
  });
  server.router.add(
    'POST',
    /^\/api\/dashboard\/panels\/([^/]+)\/actions\/([^/]+)$/,
    async (req, res, [panel, action], _url, principal) => {
      const body = await readJson<{ args?: Record<string, unknown> }>(req, server.options.maxBodyBytes, ['args']);
      const args = body.args ?? {};
      const result = await server.audit.record(principal?.id ?? 'anonymous', `panel.${panel}.${action}`, args, () => Promise.resolve(server.dashboard.run(panel, action, args)));
      sendJson(res, 200, { ok: true, result: result ?? null });
    },
    { action: 'admin', resource: () => 'dashboard' },
  );
}
