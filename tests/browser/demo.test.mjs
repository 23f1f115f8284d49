// The demo page at `/`, tested in a real browser: Debian's headless Chromium,
// driven through the Chrome DevTools Protocol by playwright-core (which brings
// no browser of its own). The test starts the bare-sse binary itself, opens the
// page, publishes through the page's form and through curl, checks that the
// messages appear, then kills the server, starts a new one on the same port
// and checks that the page's EventSource reconnects by itself.
//
//   node --test tests/browser/            (after tests/browser/setup)
//
// Environment: BARE_SSE_BIN (default target/debug/bare-sse), CHROMIUM
// (default /usr/bin/chromium), DEMO_SCREENSHOT (default docs/demo.png).
//
// Every wait is bounded; the server and the browser are killed whatever
// happens; any failure fails the test run (non-zero exit).

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { chromium } from 'playwright-core';
import {
  CHROMIUM_ARGS, RECONNECT_MS, WAIT_MS, chromiumPath, deadline, root, restartServer, startServer, stopServer,
} from './server.mjs';

const screenshotPath = resolve(root, process.env.DEMO_SCREENSHOT || 'docs/demo.png');

/** Publishes `message` with curl, as the README shows, and returns the parsed answer. */
function curlPublish(url, message) {
  return new Promise((done, fail) => {
    execFile(
      'curl',
      ['-sS', '--max-time', '5', '-H', 'Content-Type: application/json', '-d', JSON.stringify({ message }), `${url}/send-event`],
      { timeout: WAIT_MS },
      (err, stdout, stderr) => {
        if (err) return fail(new Error(`curl failed: ${err.message}\n${stderr}`));
        try {
          done(JSON.parse(stdout));
        } catch {
          fail(new Error(`curl: the answer is not JSON: ${JSON.stringify(stdout)}`));
        }
      },
    );
  });
}

/** The most the whole suite may take, and each hook. */
const SUITE_MS = 120_000;
const HOOK_MS = 45_000;

describe('the demo page in headless Chromium', { timeout: SUITE_MS }, () => {
  let server;
  let browser;
  let page;
  const pageErrors = [];

  /** The texts of the messages shown, newest first. */
  const shownMessages = () => page.$$eval('#messages li pre', (items) => items.map((p) => p.textContent));

  /** Waits until a message with exactly `text` is shown in the list. */
  async function waitForMessage(text) {
    try {
      await page.waitForFunction(
        (want) => [...document.querySelectorAll('#messages li pre')].some((p) => p.textContent === want),
        text,
        { timeout: WAIT_MS },
      );
    } catch (err) {
      throw new Error(
        `message ${JSON.stringify(text)} did not appear within ${WAIT_MS} ms; shown: ${JSON.stringify(await shownMessages())}` +
          ` (${err.message.split('\n')[0]})`,
      );
    }
  }

  /** Waits until the state badge reads one of `names`, and returns what it reads. */
  async function waitForState(names, ms = WAIT_MS) {
    try {
      const handle = await page.waitForFunction(
        (want) => {
          const text = document.getElementById('state').textContent;
          return want.includes(text) && text;
        },
        names,
        { timeout: ms },
      );
      return await handle.jsonValue();
    } catch (err) {
      const now = await page.textContent('#state').catch(() => '?');
      throw new Error(`#state did not read ${names.join(' or ')} within ${ms} ms; it reads ${JSON.stringify(now)}` +
        ` (${err.message.split('\n')[0]})`);
    }
  }

  before(async () => {
    assert.ok(existsSync(chromiumPath), `no Chromium at ${chromiumPath}: run tests/browser/setup, or set CHROMIUM`);
    server = await startServer();
    browser = await chromium.launch({
      executablePath: chromiumPath,
      headless: true,
      args: CHROMIUM_ARGS,
      timeout: 30_000,
    });
    const context = await browser.newContext({
      viewport: { width: 760, height: 480 },
      locale: 'en-US',
      timezoneId: 'UTC',
    });
    page = await context.newPage();
    page.setDefaultTimeout(WAIT_MS);
    page.on('pageerror', (err) => pageErrors.push(String(err)));
    await tick();
  }, { timeout: HOOK_MS });

  // A fixed clock for the arrival times the page shows, moved on a few seconds
  // before each publish, so that the screenshot is the same every run. Only
  // Date is fixed: timers, and EventSource's own retry, run as usual.
  let clockSeconds = 0;
  async function tick() {
    await page.clock.setFixedTime(new Date(Date.UTC(2026, 0, 1, 12, 0, clockSeconds)));
    clockSeconds += 7;
  }

  after(async () => {
    // Always: close the browser (or kill it if closing hangs), kill the server.
    try {
      if (browser) {
        const limit = deadline(WAIT_MS, 'the browser to close');
        await Promise.race([browser.close(), limit.promise]).catch((err) => {
          console.error(`${err.message}; killing it`);
          browser.process()?.kill('SIGKILL');
        });
        limit.clear();
      }
    } finally {
      await stopServer(server);
    }
  }, { timeout: HOOK_MS });

  // Should this process end some other way (a timeout, a signal from the
  // runner), the server goes with it; playwright-core does the same for Chromium.
  process.on('exit', () => {
    if (server && !server.exited) server.child.kill('SIGKILL');
  });

  test('the page loads and its EventSource opens', async () => {
    const response = await page.goto(`${server.url}/`, { timeout: WAIT_MS });
    assert.equal(response.status(), 200);
    assert.match(response.headers()['content-type'], /^text\/html/);
    assert.equal(await page.title(), 'bare-sse demo');
    await waitForState(['open']);
    // Record every state the badge shows from now on, so a short-lived one is not missed.
    await page.evaluate(() => {
      const badge = document.getElementById('state');
      window.stateLog = [badge.textContent];
      new MutationObserver(() => window.stateLog.push(badge.textContent))
        .observe(badge, { childList: true, characterData: true, subtree: true });
    });
    assert.deepEqual(await shownMessages(), []);
  });

  test('a message sent with the form appears, and #result says it was sent', async () => {
    await tick();
    await page.fill('#message', 'hello from the form');
    await page.click('#send');
    await waitForMessage('hello from the form');
    await page.waitForFunction(() => /^sent to \d+ subscriber\(s\)$/.test(document.getElementById('result').textContent));
    assert.equal(await page.textContent('#result'), 'sent to 1 subscriber(s)');
    assert.equal(await page.inputValue('#message'), '', 'the box is cleared after a successful send');
  });

  test('a message published with curl appears', async () => {
    await tick();
    const answer = await curlPublish(server.url, 'hello from curl');
    assert.equal(answer.subscribers, 1);
    await waitForMessage('hello from curl');
    // Newest first.
    assert.deepEqual((await shownMessages()).slice(0, 2), ['hello from curl', 'hello from the form']);
  });

  test('a multi-line message appears intact, its line breaks kept', async () => {
    const text = 'a message\non three lines:\n  indented, <b>not bold</b> & "quoted"';
    await tick();
    assert.equal((await curlPublish(server.url, text)).subscribers, 1);
    await waitForMessage(text);
    const shown = page.locator('#messages li pre', { hasText: 'on three lines' });
    // innerText follows the CSS: the line breaks are rendered, not folded into spaces ...
    assert.equal(await shown.innerText(), text);
    // ... so the <pre> is three lines tall.
    const height = await shown.evaluate((pre) => pre.getBoundingClientRect().height / parseFloat(getComputedStyle(pre).lineHeight));
    assert.ok(Math.round(height) === 3, `the message is ${height} lines tall, not 3`);
    // Text, not markup.
    assert.equal(await page.locator('#messages b').count(), 0, 'the message was inserted as HTML');
  });

  test('a multi-line message sent from the form with Ctrl+Enter appears intact', async () => {
    const text = 'typed in the box\nsent with Ctrl+Enter';
    await tick();
    await page.fill('#message', text);
    await page.press('#message', 'Control+Enter');
    await waitForMessage(text);
    await page.waitForFunction(() => document.getElementById('message').value === '');
    assert.equal(await page.textContent('#result'), 'sent to 1 subscriber(s)');
  });

  test('EventSource reconnects by itself after the server drops the connection', async () => {
    const port = server.port;
    await page.evaluate(() => { window.stateLog = [document.getElementById('state').textContent]; });
    await stopServer(server);
    const down = await waitForState(['reconnecting', 'connecting']);
    assert.equal(down, 'reconnecting', 'after having been open, the page says reconnecting');

    server = await restartServer(port);
    assert.equal(server.port, port);
    await waitForState(['open'], RECONNECT_MS);
    const log = await page.evaluate(() => window.stateLog);
    assert.ok(!log.includes('closed'), `the EventSource gave up: states ${JSON.stringify(log)}`);
    assert.equal(log.at(-1), 'open', `states ${JSON.stringify(log)}`);

    await tick();
    const answer = await curlPublish(server.url, 'hello from the new server');
    assert.equal(answer.subscribers, 1, 'the page is subscribed to the new server');
    await waitForMessage('hello from the new server');
  });

  test('screenshot of the page', async () => {
    mkdirSync(dirname(screenshotPath), { recursive: true });
    await page.locator('#message').blur();
    await page.screenshot({ path: screenshotPath, fullPage: true });
    assert.ok(existsSync(screenshotPath));
  });

  test('CR and CRLF line ends published with curl arrive as line breaks', async () => {
    assert.equal((await curlPublish(server.url, 'cr\rcrlf\r\nlf\nend')).subscribers, 1);
    await waitForMessage('cr\ncrlf\nlf\nend');
  });

  test('the page threw no script errors', () => {
    assert.deepEqual(pageErrors, []);
  });
});
