import assert from 'node:assert/strict';
import { test } from 'node:test';
import { allows, grantPattern, GrantPattern, grantsFromClaims } from './auth.js';

/** The old regex semantics, for cross-checking on short inputs only (it backtracks on long ones). */
function reference(pattern: string, resource: string): boolean {
  const body = pattern.split('*').map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('.*');
  return new RegExp(`^${body}$`, 's').test(resource);
}

test('grant patterns match like the glob they are: * is any run (none included), the rest literal', () => {
  const cases: [string, string, boolean][] = [
    ['*', '', true],
    ['*', 'anything:at:all', true],
    ['a', 'a', true],
    ['a', 'ab', false],
    ['', '', true],
    ['tenant:42:*', 'tenant:42:', true],
    ['tenant:42:*', 'tenant:420:x', false],
    ['*:orders', 'tenant:42:orders', true],
    ['*:orders', 'orders', false],
    ['a*b*c', 'abc', true],
    ['a*b*c', 'aXbYc', true],
    ['a*b*c', 'acb', false],
    ['a*a', 'a', false],
    ['a*a', 'aa', true],
    ['**', 'x', true],
    ['a**b', 'ab', true],
    ['*aab*', 'aaab', true],
    ['*abab*', 'aababab', true],
    ['*ab*ab', 'abab', true],
    ['*ab*ab', 'aba', false],
    ['x.y', 'xzy', false],
    ['a(b)*', 'a(b)c', true],
  ];
  for (const [p, r, want] of cases) {
    assert.equal(grantPattern(p).matches(r), want, `${p} vs ${r}`);
    assert.equal(reference(p, r), want, `reference: ${p} vs ${r}`);
  }
  // Random short inputs over a tiny alphabet: the same answers as the regex.
  let seed = 7;
  const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) % n);
  for (let i = 0; i < 5000; i++) {
    const p = Array.from({ length: rnd(7) }, () => 'ab*'[rnd(3)]).join('');
    const r = Array.from({ length: rnd(9) }, () => 'ab'[rnd(2)]).join('');
    assert.equal(new GrantPattern(p).matches(r), reference(p, r), `${JSON.stringify(p)} vs ${JSON.stringify(r)}`);
  }
});

test('a pathological pattern against a 10 KB resource is matched in linear work (counted, not timed)', () => {
  const resource = 'a'.repeat(10_240);
  for (const pattern of ['*a*a*a*a*a*a*a*a*b', '*aaaaaaaaab*', 'a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*c', '*' + 'a*'.repeat(40) + 'b']) {
    const work = { steps: 0 };
    assert.equal(grantPattern(pattern).matches(resource, work), false, pattern);
    // KMP reads each character once and falls back at most as often as it advanced.
    assert.ok(work.steps <= 2 * resource.length + 2 * pattern.length, `${pattern}: ${work.steps} steps for ${resource.length} characters`);
    const hit = { steps: 0 };
    assert.equal(grantPattern(pattern).matches(resource + 'b', hit), !pattern.endsWith('c'), pattern);
    assert.ok(hit.steps <= 2 * (resource.length + 1) + 2 * pattern.length, `${pattern}: ${hit.steps} steps`);
  }
  // Through the grant check too (the path every request takes).
  assert.equal(allows({ subscribe: ['*a*a*a*a*a*a*a*a*b'] }, 'subscribe', resource), false);
  assert.equal(allows({ subscribe: ['*a*a*a*a*a*a*a*a*b'] }, 'subscribe', resource + 'b'), true);
});

test('the create action: granted by create or admin, parsed from grants and scope claims', () => {
  assert.equal(allows({ create: ['topic/tenant:42:*'] }, 'create', 'topic/tenant:42:orders'), true);
  assert.equal(allows({ create: ['topic/tenant:42:*'] }, 'publish', 'topic/tenant:42:orders'), false);
  assert.equal(allows({ publish: ['topic/*'] }, 'create', 'topic/orders'), false);
  assert.equal(allows({ admin: ['topic/*'] }, 'create', 'topic/orders'), true);
  assert.deepEqual(grantsFromClaims({ scope: 'create:topic/x publish:topic/x', grants: { create: ['topic/y'] } }), { create: ['topic/y', 'topic/x'], publish: ['topic/x'] });
});
