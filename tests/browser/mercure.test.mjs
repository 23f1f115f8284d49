// The Mercure hub with clients nobody here wrote: Symfony's Mercure
// component (Debian's php-symfony-mercure, through tests/php/publish.php)
// publishes, public and private, and EventSource in Debian's headless
// Chromium receives: an anonymous page gets the public update only; a page
// whose browser holds the access token in the `__Secure-mercure_access_token`
// cookie gets the private one too, as a Symfony app's subscribers do.
//
//   node --test tests/browser/mercure.test.mjs     (after tests/setup)
//
// Every wait is bounded; the server and the browser are stopped whatever
// happens.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { chromium } from 'playwright-core';
import { CHROMIUM_ARGS, WAIT_MS, chromiumPath, deadline, root, startServer, stopServer } from './server.mjs';

const SECRET = 'a secret of at least thirty-two bytes, for HS256';
const ISSUER = 'https://app.example';
const DETAIL = 'https://mercure.rocks/authorization-detail';
const TOPIC = 'https://example.com/books/1';
const COOKIE = '__Secure-mercure_access_token';

const base64url = (data) => Buffer.from(data).toString('base64url');

/** An HS256 access token (`typ: at+jwt`) for `audience` with these grants. */
function token(audience, actions, matches) {
  const now = Math.floor(Date.now() / 1000);
  const header = base64url(JSON.stringify({ alg: 'HS256', typ: 'at+jwt' }));
  const claims = base64url(JSON.stringify({
    iss: ISSUER, aud: audience, sub: 'urn:test:browser', client_id: ISSUER, iat: now, exp: now + 600, jti: `urn:test:${now}`,
    authorization_details: [{ type: DETAIL, actions, topics: matches.map((match) => ({ match })) }],
  }));
  const signature = createHmac('sha256', SECRET).update(`${header}.${claims}`).digest('base64url');
  return `${header}.${claims}.${signature}`;
}

/** Publishes with Symfony's Mercure component; resolves to the id the hub answered. */
function symfonyPublish(hubUrl, jwt, data, ...args) {
  const script = resolve(root, 'tests/php/publish.php');
  return new Promise((done, fail) => {
    execFile('php', [script, hubUrl, jwt, data, TOPIC, ...args], { timeout: WAIT_MS }, (err, stdout, stderr) => {
      if (err) return fail(new Error(`php publish.php failed: ${err.message}\n${stdout}\n${stderr}`));
      done(stdout.trim());
    });
  });
}

describe('Mercure: Symfony publishes, EventSource in Chromium receives', { timeout: 120_000 }, () => {
  let server;
  let browser;
  let hubUrl;
  const pages = {};

  /** Opens `/healthz` of the hub's origin in a fresh context and an EventSource on TOPIC there. */
  async function subscriber(cookies) {
    const context = await browser.newContext();
    if (cookies.length) await context.addCookies(cookies);
    const page = await context.newPage();
    await page.goto(`${server.url}/healthz`, { timeout: WAIT_MS });
    await page.evaluate((topic) => new Promise((opened, failed) => {
      window.received = [];
      const source = new EventSource(`/.well-known/mercure?match=${encodeURIComponent(topic)}`);
      source.onmessage = (event) => window.received.push({ id: event.lastEventId, data: event.data });
      source.onopen = () => opened();
      source.onerror = () => failed(new Error(`EventSource error, readyState ${source.readyState}`));
    }), TOPIC);
    return page;
  }

  /** Waits until `page` received `count` messages, and returns them. */
  async function received(page, count) {
    try {
      await page.waitForFunction((n) => window.received.length >= n, count, { timeout: WAIT_MS });
    } catch (err) {
      const got = await page.evaluate(() => window.received).catch(() => '?');
      throw new Error(`wanted ${count} messages within ${WAIT_MS} ms, got ${JSON.stringify(got)} (${err.message.split('\n')[0]})`);
    }
    return page.evaluate(() => window.received);
  }

  before(async () => {
    assert.ok(existsSync(chromiumPath), `no Chromium at ${chromiumPath}: run tests/setup, or set CHROMIUM`);
    server = await startServer(0, ['--mercure-issuer', ISSUER, '--mercure-publisher-key', SECRET]);
    hubUrl = `${server.url}/.well-known/mercure`;
    browser = await chromium.launch({ executablePath: chromiumPath, headless: true, args: CHROMIUM_ARGS, timeout: 30_000 });
    const reader = token(hubUrl, ['subscribe'], [TOPIC]);
    // As a Symfony app sets it on discovery: Secure, HttpOnly, SameSite=Strict,
    // for the hub's path (Chromium sends Secure cookies to http://127.0.0.1,
    // a potentially trustworthy origin).
    pages.withCookie = await subscriber([{
      name: COOKIE, value: reader, domain: '127.0.0.1', path: '/.well-known/mercure', secure: true, httpOnly: true, sameSite: 'Strict',
    }]);
    pages.anonymous = await subscriber([]);
  });

  after(async () => {
    if (browser) {
      const limit = deadline(WAIT_MS, 'the browser to close');
      await Promise.race([browser.close(), limit.promise]).catch(() => {});
      limit.clear();
    }
    await stopServer(server);
  });

  test('a private update reaches only the page whose cookie holds a token that may read it', async () => {
    const publisher = token(hubUrl, ['publish'], ['*']);
    const privateId = await symfonyPublish(hubUrl, publisher, '{"title":"private"}', '--private', '--id=urn:test:private-1');
    const publicId = await symfonyPublish(hubUrl, publisher, '{"title":"public"}', '--type=message');
    assert.equal(privateId, 'urn:test:private-1', 'the hub answers the publisher\'s own id');
    assert.match(publicId, /^urn:uuid:[0-9a-f-]{36}$/, 'a hub-made id is an IRI');

    // The public update was published with type=message: EventSource's
    // onmessage sees it because `message` is the default type's name.
    const both = await received(pages.withCookie, 2);
    assert.deepEqual(both, [
      { id: 'urn:test:private-1', data: '{"title":"private"}' },
      { id: publicId, data: '{"title":"public"}' },
    ]);
    const anonymous = await received(pages.anonymous, 1);
    assert.deepEqual(anonymous, [{ id: publicId, data: '{"title":"public"}' }], 'no private update without a token');
  });

  test('a publisher without a valid token is refused, and nothing is dispatched', async () => {
    const forged = token(hubUrl, ['publish'], ['*']).replace(/.$/, (c) => (c === 'A' ? 'B' : 'A'));
    await assert.rejects(symfonyPublish(hubUrl, forged, 'forged'), /401/);
    const subscribeOnly = token(hubUrl, ['subscribe'], ['*']);
    await assert.rejects(symfonyPublish(hubUrl, subscribeOnly, 'not allowed'), /403/);
    const publisher = token(hubUrl, ['publish'], ['*']);
    const id = await symfonyPublish(hubUrl, publisher, 'after the refusals');
    const anonymous = await received(pages.anonymous, 2);
    assert.deepEqual(anonymous.at(-1), { id, data: 'after the refusals' }, 'the refused updates never arrived');
  });
});
