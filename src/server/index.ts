/**
 * `pgherald/server`: the server of `herald serve` (realtime gateway, HTTP API,
 * authentication, metrics, dashboard) for embedding in an application.
 * Needs the packages `ws` and `prom-client` (and `jose` for JWTs); a missing one is a
 * `MISSING_DEPENDENCY` error that names it.
 * @packageDocumentation
 */
export { HeraldServer, SERVER_DEFAULTS, isLoopback, type ServerOptions } from './server.js';
export { Router, HttpError, readJson, sendJson, type Handler, type RouteOptions } from './http.js';
export { allows, type Action, type ApiKey, type AuthOptions, type Grants, type Principal } from './auth.js';
export type { DurableStreamSource, StreamEvent, StreamSink } from './stream.js';
export type { DashboardAction, DashboardPanel } from './dashboard.js';
