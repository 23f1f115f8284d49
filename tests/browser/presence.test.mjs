// "Who is online", as a browser app shows it with Mercure's active
// subscriptions (--mercure-subscriptions): a page (presence/who-is-online.html)
// lists a document topic's subscribers from the subscription API, then
// follows the subscription events from the listing's cursor, and keeps a list
// of who is there (by subscriber id, named by each token's payload) in the
// DOM. Tabs of other users (presence/document.html, each user in a browser
// context of their own, with their own token in the hub's cookie) subscribe to
// the topic, and leave; the list must converge to exactly who is connected.
//
// The pages come from a small static server here, on another origin than the
// hub's (another port of 127.0.0.1: cross-origin, same site). So the hub runs
// with --cors-origin naming that origin: the token cookie goes with the
// credentialed fetch and EventSource, and the page can read the cursor in the
// Link header only because the hub exposes it.
//
//   node --test tests/browser/presence.test.mjs     (after tests/setup)
//
// Every wait is a condition with a bound (waitForFunction), never a sleep;
// the servers and the browser are stopped whatever happens.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { CHROMIUM_ARGS, WAIT_MS, chromiumPath, deadline, startServer, stopServer } from './server.mjs';

const SECRET = 'a secret of at least thirty-two bytes, for HS256';
const ISSUER = 'https://app.example';
const DETAIL = 'https://mercure.rocks/authorization-detail';
const COOKIE = '__Secure-mercure_access_token';
/** The document everyone has open; a ? and a / in it, to be percent-encoded in the API's paths. */
const TOPIC = 'https://example.com/docs/1?lang=en&v=a/b';

/** RFC 6570 simple expansion of one value (the page has the same function). */
const expand = (value) =>
  encodeURIComponent(value).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
const COLLECTION = `/.well-known/mercure/subscriptions/exact/${expand(TOPIC)}`;

/** An HS256 access token (`typ: at+jwt`) for `audience` with these authorization details. */
function token(audience, details) {
  const now = Math.floor(Date.now() / 1000);
  const encode = (part) => Buffer.from(JSON.stringify(part)).toString('base64url');
  const header = encode({ alg: 'HS256', typ: 'at+jwt' });
  const claims = encode({
    iss: ISSUER, aud: audience, sub: 'urn:test:presence', client_id: ISSUER, iat: now, exp: now + 600, jti: `urn:test:${now}`,
    authorization_details: details.map((detail) => ({ type: DETAIL, ...detail })),
  });
  const signature = createHmac('sha256', SECRET).update(`${header}.${claims}`).digest('base64url');
  return `${header}.${claims}.${signature}`;
}

/** Serves the two pages of presence/ on 127.0.0.1, any free port. */
async function startPageServer() {
  const dir = resolve(dirname(fileURLToPath(import.meta.url)), 'presence');
  const pages = new Map(['who-is-online.html', 'document.html'].map((name) => [`/${name}`, readFileSync(resolve(dir, name))]));
  const server = createServer((request, response) => {
    const page = pages.get(new URL(request.url, 'http://x').pathname);
    response.writeHead(page ? 200 : 404, { 'Content-Type': page ? 'text/html; charset=utf-8' : 'text/plain' });
    response.end(page ?? 'not found');
  });
  await new Promise((listening, failed) => server.once('error', failed).listen(0, '127.0.0.1', listening));
  return { server, origin: `http://127.0.0.1:${server.address().port}` };
}

describe('who is online: the subscription API and subscription events in Chromium', { timeout: 120_000 }, () => {
  let pageServer;
  let hub;
  let hubUrl;
  let browser;

  /** A browser context (one user's browser) whose hub cookie holds `jwt`, if any. */
  async function browserOf(jwt) {
    const context = await browser.newContext();
    // As a Symfony app sets it: Secure (Chromium keeps it for http://127.0.0.1,
    // a potentially trustworthy origin), HttpOnly, SameSite=Strict (the page's
    // origin is another port of the same site), for the hub's path.
    if (jwt) {
      await context.addCookies([{
        name: COOKIE, value: jwt, domain: '127.0.0.1', path: '/.well-known/mercure', secure: true, httpOnly: true, sameSite: 'Strict',
      }]);
    }
    return context;
  }

  /** Opens `page` of the page server in `context`, and waits until its state reads `state`. */
  async function open(context, page, state, extra = '') {
    const tab = await context.newPage();
    const query = new URLSearchParams({ hub: hubUrl, topic: TOPIC });
    await tab.goto(`${pageServer.origin}/${page}?${query}${extra}`, { timeout: WAIT_MS });
    await waitForState(tab, state);
    return tab;
  }

  /** Waits until `tab`'s state reads `state`; fails at once if it reads one it never leaves. */
  async function waitForState(tab, state) {
    let reached;
    try {
      const handle = await tab.waitForFunction(
        (want) => {
          const now = document.getElementById('state').textContent;
          return (now === want || now === 'closed' || now === 'error') && now;
        },
        state,
        { timeout: WAIT_MS },
      );
      reached = await handle.jsonValue();
    } catch (err) {
      reached = `not within ${WAIT_MS} ms (${err.message.split('\n')[0]})`;
    }
    if (reached !== state) {
      const shown = await tab.evaluate(() => document.body.innerText).catch(() => '?');
      throw new Error(`${tab.url()} did not reach state ${state}: ${reached}; it shows:\n${shown}`);
    }
  }

  /** A user's tab on the document, subscribed. */
  const documentTab = (context) => open(context, 'document.html', 'open');

  /** The names a who-is-online page lists, in its order (sorted by name). */
  const listed = (tab) => tab.$$eval('#online li', (items) => items.map((item) => item.textContent));

  /** Waits until `tab` lists exactly `names` (sorted), and returns the subscriber ids of its items. */
  async function waitForList(tab, names) {
    const want = [...names].sort((a, b) => a.localeCompare(b));
    try {
      await tab.waitForFunction(
        (want) => JSON.stringify([...document.querySelectorAll('#online li')].map((item) => item.textContent)) === want,
        JSON.stringify(want),
        { timeout: WAIT_MS },
      );
    } catch (err) {
      const state = await tab.evaluate(() => document.getElementById('state').textContent).catch(() => '?');
      throw new Error(
        `wanted ${JSON.stringify(want)} within ${WAIT_MS} ms, the page lists ${JSON.stringify(await listed(tab).catch(() => '?'))} ` +
          `(state ${state}; ${err.message.split('\n')[0]})`,
      );
    }
    const ids = await tab.$$eval('#online li', (items) => items.map((item) => item.dataset.subscriber));
    for (const id of ids) assert.match(id, /^urn:uuid:[0-9a-f-]{36}$/, 'each item is one subscriber, by the hub\'s id');
    assert.equal(new Set(ids).size, ids.length, `one item per subscriber: ${ids}`);
    return ids;
  }

  let users; // name -> browser context
  let watchers; // a context whose token may read the topic's subscriptions
  const tabs = {};

  before(async () => {
    assert.ok(existsSync(chromiumPath), `no Chromium at ${chromiumPath}: run tests/setup, or set CHROMIUM`);
    pageServer = await startPageServer();
    hub = await startServer(0, [
      '--mercure-issuer', ISSUER, '--mercure-publisher-key', SECRET, '--mercure-subscriptions',
      '--cors-origin', pageServer.origin,
    ]);
    hubUrl = `${hub.url}/.well-known/mercure`;
    assert.notEqual(new URL(hubUrl).origin, pageServer.origin, 'the pages are cross-origin to the hub');
    browser = await chromium.launch({ executablePath: chromiumPath, headless: true, args: CHROMIUM_ARGS, timeout: 30_000 });

    // Each user may read the document; the payload of that grant is what
    // the hub tells watchers about them.
    const reader = (name) => token(hubUrl, [{ actions: ['subscribe'], topics: [{ match: TOPIC }], payload: { name } }]);
    users = {};
    for (const name of ['alice', 'bob', 'carol', 'dave']) users[name] = await browserOf(reader(name));
    users.anonymous = await browserOf(null); // no token: present, with no payload
    // The watcher may read this topic's subscription collection (the API
    // path as a topic) and its events (the collection plus the subscriber).
    watchers = await browserOf(token(hubUrl, [{
      actions: ['subscribe'],
      topics: [{ match: COLLECTION, match_type: 'exact' }, { match: `${COLLECTION}/:subscriber`, match_type: 'urlpattern' }],
    }]));
  });

  after(async () => {
    if (browser) {
      const limit = deadline(WAIT_MS, 'the browser to close');
      await Promise.race([browser.close(), limit.promise]).catch(() => {});
      limit.clear();
    }
    await stopServer(hub);
    if (pageServer) {
      pageServer.server.closeAllConnections();
      await new Promise((closed) => pageServer.server.close(closed));
    }
  });

  test('the listing, then the events after its cursor: nothing between the two is lost', async () => {
    tabs.alice = await documentTab(users.alice);
    tabs.bob = await documentTab(users.bob);

    // A watcher that lists, and stops there until resumed; and one that
    // follows at once, which tells when the hub has seen what happens next.
    const paused = await open(watchers, 'who-is-online.html', 'paused', '&paused');
    tabs.witness = await open(watchers, 'who-is-online.html', 'live');
    await waitForList(paused, ['alice', 'bob']);
    await waitForList(tabs.witness, ['alice', 'bob']);
    // The cursor came from the Link header (readable cross-origin only
    // because the hub exposes it), and agrees with the body's.
    const { link, lastEventID } = await paused.evaluate(() => window.listing);
    assert.match(lastEventID, /^urn:uuid:/);
    assert.deepEqual([link.url, link.type, link['content-type']], [hubUrl, 'mercure', 'application/json'], JSON.stringify(link));

    // Between the listing and its events: bob leaves, carol and a visitor
    // without a token come.
    await tabs.bob.close();
    tabs.carol = await documentTab(users.carol);
    tabs.anonymous = await documentTab(users.anonymous);
    await waitForList(tabs.witness, ['(anonymous)', 'alice', 'carol']);
    assert.deepEqual(await listed(paused), ['alice', 'bob'], 'the paused page did not follow yet');

    // Resumed from the cursor, the paused page gets all three by replay.
    await paused.evaluate(() => window.resume());
    await waitForState(paused, 'live');
    await waitForList(paused, ['(anonymous)', 'alice', 'carol']);
    await paused.close();
  });

  test('tabs that open and close after the watcher loaded', async () => {
    const watcher = tabs.witness;
    assert.ok(watcher, 'the first test opened the watcher this one goes on with');
    const earlier = await waitForList(watcher, ['(anonymous)', 'alice', 'carol']);

    tabs.dave = await documentTab(users.dave);
    await waitForList(watcher, ['(anonymous)', 'alice', 'carol', 'dave']);

    // A second tab of alice's is another subscriber: she is listed twice,
    // then once again when her first tab closes.
    tabs.alice2 = await documentTab(users.alice);
    const twice = await waitForList(watcher, ['(anonymous)', 'alice', 'alice', 'carol', 'dave']);
    await tabs.alice.close();
    const once = await waitForList(watcher, ['(anonymous)', 'alice', 'carol', 'dave']);
    const [, alice] = once; // sorted by name: (anonymous), alice, carol, dave
    assert.ok(!earlier.includes(alice) && twice.includes(alice), 'the tab that stays is her second one');

    await tabs.carol.close();
    await tabs.anonymous.close();
    await waitForList(watcher, ['alice', 'dave']);
    await tabs.dave.close();
    await tabs.alice2.close();
    await waitForList(watcher, []);

    // The hub agrees, asked afresh: a page loaded now lists nobody.
    const fresh = await open(watchers, 'who-is-online.html', 'live');
    await waitForList(fresh, []);
  });
});
