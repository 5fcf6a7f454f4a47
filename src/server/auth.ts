import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { JWTPayload, JWTVerifyGetKey } from 'jose';
import { InvalidOptionError } from '../errors.js';
import { importPeer } from '../internal/peer.js';
import { HttpError } from './http.js';

/** What a client may do with a resource. `admin` implies every other action. `create`: create a durable topic (`topic/<name>`). */
export type Action = 'subscribe' | 'publish' | 'create' | 'admin';

/** Grant patterns per action. A pattern is a resource name where `*` matches any run of characters (`tenant:42:*`). */
export interface Grants {
  subscribe?: string[];
  publish?: string[];
  /** Create durable topics (resources `topic/<name>`): `PUT /topics/<name>`, and a publish to a missing topic with `autoCreateTopics`. */
  create?: string[];
  admin?: string[];
}

/** Every action, in the order grants list them. */
export const ACTIONS = ['subscribe', 'publish', 'create', 'admin'] as const;

/** An API key and what it grants. */
export interface ApiKey {
  /** Name used for per-token limits, metrics and logs (never the key itself). */
  name: string;
  /** The secret the client presents. */
  key: string;
  grants: Grants;
}

/** Who a request is, once authenticated. */
export interface Principal {
  /** Identity used for per-token limits: `key:<name>`, `jwt:<sub>` (or `jwt:<sha256 of the token>` without `sub`), or `anonymous`. */
  id: string;
  kind: 'api-key' | 'jwt' | 'anonymous';
  grants: Grants;
  /** Expiry in epoch milliseconds (JWT `exp`), or null. */
  expiresAt: number | null;
}

/** How clients authenticate. Give any mix; with none, the server runs open on loopback only. */
export interface AuthOptions {
  /** API keys with their grants. The legacy single `token` becomes a key named `admin` with `admin: ['*']`. */
  apiKeys?: ApiKey[];
  /** HS256 secret for JWTs. */
  jwtSecret?: string;
  /** RS256 public key (SPKI PEM) for JWTs. */
  jwtPublicKey?: string;
  /** JWKS URL whose keys (RS256) verify JWTs; fetched and cached by `jose`. */
  jwksUrl?: string;
  /** Required `iss` claim. */
  jwtIssuer?: string;
  /** Required `aud` claim. */
  jwtAudience?: string;
  /**
   * Refuse JWTs without an `exp` claim (401 `TOKEN_EXP_REQUIRED`): a token that never
   * expires cannot be revoked short of rotating the key. @defaultValue true
   */
  requireExp?: boolean;
}

/**
 * A compiled grant pattern: `*` matches any run of characters (none included),
 * everything else is literal. The pattern is split at its stars into literal pieces:
 * the first must start the resource, the last must end it, and the ones between are
 * found in order, each at its leftmost place after the previous one (leftmost is never
 * worse for the pieces that follow). Each piece is searched with Knuth-Morris-Pratt, so
 * the resource is read once, left to right: matching costs O(resource + pattern) steps
 * whatever the pattern (a regex with several `.*` backtracks: `*a*a*a*a*b` against a
 * long run of `a` took seconds).
 */
export class GrantPattern {
  /** Literal pieces between the stars (`a*b*c` → `a`, `b`, `c`; `*` alone → two empty pieces). */
  readonly #pieces: string[];
  /** KMP failure table of each middle piece. */
  readonly #fail: Int32Array[];

  constructor(readonly pattern: string) {
    this.#pieces = pattern.split('*');
    this.#fail = this.#pieces.map((p, i) => (i > 0 && i < this.#pieces.length - 1 ? failureTable(p) : new Int32Array(0)));
  }

  /**
   * True when `resource` matches. `work`, when given, counts the character comparisons
   * made (its `steps` grows): at most about twice the resource's length plus the
   * pattern's, whatever the inputs.
   */
  matches(resource: string, work?: { steps: number }): boolean {
    const pieces = this.#pieces;
    const n = resource.length;
    let steps = 0;
    try {
      if (pieces.length === 1) {
        steps += Math.min(n, this.pattern.length);
        return resource === this.pattern;
      }
      const first = pieces[0];
      const last = pieces[pieces.length - 1];
      if (n < first.length + last.length) return false;
      steps += first.length + last.length;
      if (!resource.startsWith(first) || !resource.endsWith(last)) return false;
      let at = first.length;
      const end = n - last.length;
      for (let i = 1; i < pieces.length - 1; i++) {
        const piece = pieces[i];
        if (piece.length === 0) continue;
        // KMP search of `piece` in resource[at, end): the text index never moves back.
        const fail = this.#fail[i];
        let k = 0;
        let found = -1;
        for (let j = at; j < end; j++) {
          const c = resource.charCodeAt(j);
          steps++;
          while (k > 0 && piece.charCodeAt(k) !== c) {
            k = fail[k - 1];
            steps++;
          }
          if (piece.charCodeAt(k) === c) k++;
          if (k === piece.length) {
            found = j + 1;
            break;
          }
        }
        if (found < 0) return false;
        at = found;
      }
      return true;
    } finally {
      if (work) work.steps += steps;
    }
  }
}

/** KMP failure table: `t[i]` is the length of the longest proper prefix of `p[0..i]` that is also its suffix. */
function failureTable(p: string): Int32Array {
  const t = new Int32Array(p.length);
  let k = 0;
  for (let i = 1; i < p.length; i++) {
    while (k > 0 && p.charCodeAt(i) !== p.charCodeAt(k)) k = t[k - 1];
    if (p.charCodeAt(i) === p.charCodeAt(k)) k++;
    t[i] = k;
  }
  return t;
}

const patternCache = new Map<string, GrantPattern>();

/** The compiled form of `pattern`, cached (the cache is cleared past 10000 patterns). */
export function grantPattern(pattern: string): GrantPattern {
  let compiled = patternCache.get(pattern);
  if (!compiled) {
    if (patternCache.size > 10_000) patternCache.clear();
    compiled = new GrantPattern(pattern);
    patternCache.set(pattern, compiled);
  }
  return compiled;
}

/** True when `resource` matches one of `patterns` (see {@link GrantPattern}: linear time). */
export function matchesAny(patterns: readonly string[] | undefined, resource: string): boolean {
  if (!patterns) return false;
  for (const p of patterns) if (grantPattern(p).matches(resource)) return true;
  return false;
}

/** True when `grants` allow `action` on `resource` (an `admin` grant allows every action). */
export function allows(grants: Grants, action: Action, resource: string): boolean {
  if (matchesAny(grants.admin, resource)) return true;
  if (action === 'admin') return false;
  return matchesAny(grants[action], resource);
}

/**
 * Reads grants from JWT claims: a `grants` object (`{ "subscribe": ["tenant:42:*"] }`)
 * and/or an OAuth-style `scope` string (`"subscribe:tenant:42:* publish:tenant:42:chat"`).
 */
export function grantsFromClaims(claims: JWTPayload): Grants {
  const grants: Grants = {};
  const add = (action: Action, pattern: unknown) => {
    if (typeof pattern !== 'string' || pattern === '') return;
    (grants[action] ??= []).push(pattern);
  };
  const g = claims.grants as Record<string, unknown> | undefined;
  if (g && typeof g === 'object') {
    for (const action of ACTIONS) {
      const list = g[action];
      if (Array.isArray(list)) for (const p of list) add(action, p);
      else add(action, list);
    }
  }
  if (typeof claims.scope === 'string') {
    for (const item of claims.scope.split(/\s+/)) {
      const i = item.indexOf(':');
      if (i <= 0) continue;
      const action = item.slice(0, i);
      if ((ACTIONS as readonly string[]).includes(action)) add(action as Action, item.slice(i + 1));
    }
  }
  return grants;
}

function validateGrants(where: string, grants: unknown): Grants {
  if (!grants || typeof grants !== 'object') throw new InvalidOptionError(where, grants, 'an object { subscribe?, publish?, create?, admin? } of pattern lists');
  for (const [k, v] of Object.entries(grants)) {
    if (!(ACTIONS as readonly string[]).includes(k)) throw new InvalidOptionError(`${where}.${k}`, v, `one of ${ACTIONS.join(', ')}`);
    if (!Array.isArray(v) || v.some((p) => typeof p !== 'string' || p === '')) throw new InvalidOptionError(`${where}.${k}`, v, 'a list of non-empty patterns');
  }
  return grants as Grants;
}

const BEARER = /^bearer[ \t]+(\S+)[ \t]*$/i;

/**
 * The credential a request carries: `Authorization: Bearer <t>` (the scheme in any case,
 * RFC 7235), then `?access_token=<t>` (EventSource and WebSocket cannot set headers).
 */
export function credentialOf(req: IncomingMessage, url: URL): string | undefined {
  const m = BEARER.exec(req.headers.authorization ?? '');
  if (m) return m[1];
  return url.searchParams.get('access_token') || undefined;
}

const ANONYMOUS: Principal = Object.freeze({ id: 'anonymous', kind: 'anonymous', grants: { admin: ['*'] }, expiresAt: null });

/**
 * Turns a credential into a {@link Principal}: an API key (compared in constant
 * time) or a JWT verified with `jose` (HS256 secret, RS256 public key, or JWKS URL).
 * Throws {@link HttpError} 401 `UNAUTHORIZED` / `TOKEN_EXPIRED`.
 */
export class Authenticator {
  readonly #keys: { name: string; key: Buffer; grants: Grants }[];
  readonly #jwtKeys: { key: Promise<CryptoKey | Uint8Array | JWTVerifyGetKey>; alg: string }[] = [];
  // `jose` (an optional peer dependency) is loaded only when a JWT option is given.
  #jose: Promise<typeof import('jose')> | undefined;
  readonly #issuer?: string;
  readonly #audience?: string;
  readonly #requireExp: boolean;

  constructor(options: AuthOptions) {
    this.#keys = (options.apiKeys ?? []).map((k, i) => {
      if (!k || typeof k.key !== 'string' || k.key.length === 0) throw new InvalidOptionError(`apiKeys[${i}].key`, '<hidden>', 'a non-empty string');
      if (typeof k.name !== 'string' || !k.name) throw new InvalidOptionError(`apiKeys[${i}].name`, k.name, 'a non-empty string');
      return { name: k.name, key: Buffer.from(k.key), grants: validateGrants(`apiKeys[${i}].grants`, k.grants) };
    });
    if (options.jwtSecret !== undefined) {
      if (typeof options.jwtSecret !== 'string' || options.jwtSecret.length < 16) throw new InvalidOptionError('jwtSecret', '<hidden>', 'a secret of 16 characters or more');
      this.#jwtKeys.push({ key: Promise.resolve(new TextEncoder().encode(options.jwtSecret)), alg: 'HS256' });
    }
    const jose = () => (this.#jose ??= importPeer<typeof import('jose')>('jose', 'JWT authentication (jwtSecret, jwtPublicKey, jwksUrl)'));
    if (options.jwtPublicKey !== undefined) {
      const key = jose().then((j) => j.importSPKI(options.jwtPublicKey!, 'RS256'));
      key.catch(() => {});
      this.#jwtKeys.push({ key, alg: 'RS256' });
    }
    if (options.jwksUrl !== undefined) {
      let url: URL;
      try {
        url = new URL(options.jwksUrl);
      } catch {
        throw new InvalidOptionError('jwksUrl', options.jwksUrl, 'an http(s) URL');
      }
      const key = jose().then((j) => j.createRemoteJWKSet(url));
      key.catch(() => {});
      this.#jwtKeys.push({ key, alg: 'RS256' });
    }
    if (options.jwtSecret !== undefined) jose().catch(() => {});
    this.#issuer = options.jwtIssuer;
    this.#audience = options.jwtAudience;
    if (options.requireExp !== undefined && typeof options.requireExp !== 'boolean') throw new InvalidOptionError('requireExp', options.requireExp, 'true or false');
    this.#requireExp = options.requireExp ?? true;
  }

  /**
   * Resolves once every configured key is usable (`jose` loaded, PEM parsed); rejects
   * with the reason otherwise (`MISSING_DEPENDENCY` when `jose` is not installed).
   * The server awaits it in `start()`, so a bad key fails at start, not per request.
   */
  async ready(): Promise<void> {
    if (this.#jose) await this.#jose;
    for (const { key } of this.#jwtKeys) await key;
  }

  /** True when any credential is configured; without one the server is open (loopback only). */
  get enabled(): boolean {
    return this.#keys.length > 0 || this.#jwtKeys.length > 0;
  }

  /** Authenticates a credential (undefined: none given). */
  async authenticate(credential: string | undefined): Promise<Principal> {
    if (!this.enabled) return ANONYMOUS;
    if (!credential) throw new HttpError(401, 'UNAUTHORIZED', 'missing credentials: send Authorization: Bearer <token> or ?access_token=');
    const given = Buffer.from(credential);
    for (const k of this.#keys) {
      if (k.key.length === given.length && timingSafeEqual(k.key, given)) {
        return { id: `key:${k.name}`, kind: 'api-key', grants: k.grants, expiresAt: null };
      }
    }
    if (this.#jwtKeys.length > 0 && credential.split('.').length === 3) {
      let expired = false;
      const { jwtVerify, errors: joseErrors } = await this.#jose!;
      for (const { key, alg } of this.#jwtKeys) {
        let payload: JWTPayload;
        try {
          const resolved = await key;
          ({ payload } = await jwtVerify(credential, resolved as Uint8Array, {
            algorithms: [alg],
            issuer: this.#issuer,
            audience: this.#audience,
          }));
        } catch (err) {
          if (err instanceof joseErrors.JWTExpired) expired = true;
          continue;
        }
        // The signature is good: a missing exp is this token's fault, not another key's.
        if (this.#requireExp && typeof payload.exp !== 'number') {
          throw new HttpError(401, 'TOKEN_EXP_REQUIRED', 'the token has no exp claim; this server requires one (requireExp)');
        }
        const id = typeof payload.sub === 'string' && payload.sub ? `jwt:${payload.sub}` : `jwt:${createHash('sha256').update(credential).digest('hex').slice(0, 16)}`;
        return { id, kind: 'jwt', grants: grantsFromClaims(payload), expiresAt: typeof payload.exp === 'number' ? payload.exp * 1000 : null };
      }
      if (expired) throw new HttpError(401, 'TOKEN_EXPIRED', 'the token has expired');
    }
    throw new HttpError(401, 'UNAUTHORIZED', 'invalid credentials');
  }
}

/** Throws 403 `FORBIDDEN` unless `principal` may do `action` on `resource`. */
export function assertAllowed(principal: Principal, action: Action, resource: string): void {
  if (principal.expiresAt !== null && principal.expiresAt <= Date.now()) throw new HttpError(401, 'TOKEN_EXPIRED', 'the token has expired');
  if (!allows(principal.grants, action, resource)) throw new HttpError(403, 'FORBIDDEN', `no ${action} grant for ${JSON.stringify(resource)}`);
}
