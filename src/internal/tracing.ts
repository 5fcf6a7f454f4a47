import type { Attributes, Tracer } from '@opentelemetry/api';
import { createRequire } from 'node:module';

type OtelApi = typeof import('@opentelemetry/api');

// `@opentelemetry/api` is an optional peer dependency: an application that traces has
// it (its SDK needs it); one that does not pays nothing. Resolved once, on first use.
let tracer: Tracer | null | undefined;
let api: OtelApi | undefined;

function tracerOf(): Tracer | null {
  if (tracer === undefined) {
    try {
      api = createRequire(import.meta.url)('@opentelemetry/api') as OtelApi;
      tracer = api.trace.getTracer('pgherald');
    } catch {
      tracer = null;
    }
  }
  return tracer;
}

/**
 * Runs `fn` inside an OpenTelemetry span when `@opentelemetry/api` is installed (a
 * no-op unless the application also registers an OpenTelemetry SDK); without the
 * package it just runs `fn`. Span names: `herald.<part>.<verb>`, e.g. `herald.mailbox.send`.
 */
export function withSpan<T>(name: string, attributes: Attributes, fn: () => Promise<T>): Promise<T> {
  const t = tracerOf();
  if (!t) return fn();
  return t.startActiveSpan(name, { attributes }, async (span) => {
    try {
      return await fn();
    } catch (err) {
      span.recordException(err as Error);
      span.setStatus({ code: api!.SpanStatusCode.ERROR, message: (err as Error)?.message });
      throw err;
    } finally {
      span.end();
    }
  });
}
