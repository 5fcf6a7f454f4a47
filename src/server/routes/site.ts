import { CLIENT_JS } from '../assets/client.js';
import { DASHBOARD_CSP, DASHBOARD_HTML, DASHBOARD_PATH } from '../assets/dashboard.js';
import { readJson, sendJson, sendText } from '../http.js';
import type { HeraldServer } from '../server.js';

/** The browser client, the dashboard page and its data API. */
export function registerSiteRoutes(server: HeraldServer): void {
  server.router.add('GET', /^\/client\.js$/, (_req, res) => sendText(res, 200, 'text/javascript; charset=utf-8', CLIENT_JS), { open: true });
  // The page holds no data: it asks for a token and reads /api/dashboard with it.
  server.router.add('GET', DASHBOARD_PATH, (_req, res) => {
    res.setHeader('content-security-policy', DASHBOARD_CSP); // replaces the guard's default-src 'none'
    sendText(res, 200, 'text/html; charset=utf-8', DASHBOARD_HTML);
  }, { open: true });
  server.router.add('GET', /^\/api\/dashboard$/, async (_req, res) => sendJson(res, 200, await server.dashboard.snapshot()), {
    action: 'admin',
    resource: () => 'dashboard',
  });
  server.router.add(
    'POST',
    /^\/api\/dashboard\/panels\/([^/]+)\/actions\/([^/]+)$/,
    async (req, res, [panel, action]) => {
      const body = await readJson<{ args?: Record<string, unknown> }>(req, server.options.maxBodyBytes, ['args']);
      const result = await server.dashboard.run(panel, action, body.args ?? {});
      sendJson(res, 200, { ok: true, result: result ?? null });
    },
    { action: 'admin', resource: () => 'dashboard' },
  );
}
