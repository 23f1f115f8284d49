// What the browser tests share: starting and stopping this build's bare-sse
// binary, and how Chromium is started. Every wait is bounded.
//
// Environment: BARE_SSE_BIN (default target/debug/bare-sse), CHROMIUM
// (default /usr/bin/chromium).

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const bin = resolve(root, process.env.BARE_SSE_BIN || 'target/debug/bare-sse');
export const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';

/** How long one wait in the page (a state, a message) may take. */
export const WAIT_MS = 10_000;
/** How long reconnecting may take: Chromium retries an EventSource every 3 s. */
export const RECONNECT_MS = 20_000;

// Chromium as the machine's doc says to start it: no sandbox (we are root), no
// GPU, and nothing that reaches out to the (closed) network. Playwright adds
// a fresh, temporary --user-data-dir of its own and removes it on close.
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-quic',
];

/** A promise that rejects with `what` after `ms`, and the timer to clear. */
export function deadline(ms, what) {
  let timer;
  const promise = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return { promise, clear: () => clearTimeout(timer) };
}

/**
 * Starts bare-sse on 127.0.0.1:`port` (0: any free port) and resolves once its
 * first stderr line, `bare-sse <version> listening on http://127.0.0.1:PORT`,
 * has told the address.
 */
export async function startServer(port = 0, args = []) {
  assert.ok(existsSync(bin), `no bare-sse binary at ${bin}: run cargo build, or set BARE_SSE_BIN`);
  const child = spawn(bin, ['--listen', `127.0.0.1:${port}`, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const server = { child, url: null, port: null, log: '', exited: null };
  child.exited = new Promise((done) => child.on('exit', (code, signal) => done({ code, signal })));
  child.exited.then((how) => { server.exited = how; });
  // Keep reading both pipes for the whole run, so the server never blocks on them.
  child.stdout.setEncoding('utf8').on('data', (s) => { server.log += s; });
  child.stderr.setEncoding('utf8');
  const limit = deadline(WAIT_MS, 'bare-sse to print its address');
  try {
    await Promise.race([
      limit.promise,
      new Promise((done, fail) => {
        child.on('error', fail);
        child.exited.then(({ code, signal }) =>
          fail(new Error(`bare-sse exited (code ${code}, signal ${signal}) before listening:\n${server.log}`)));
        child.stderr.on('data', (s) => {
          server.log += s;
          const first = server.log.split('\n');
          if (first.length < 2 || server.url) return; // the first line is not complete yet
          const found = /^bare-sse \S+ listening on (http:\/\/127\.0\.0\.1:(\d+))(?: \(.*\))?$/.exec(first[0]);
          if (!found) return fail(new Error(`unexpected first line from bare-sse: ${JSON.stringify(first[0])}`));
          server.url = found[1];
          server.port = Number(found[2]);
          done();
        });
      }),
    ]);
  } catch (err) {
    await stopServer(server);
    throw new Error(`${err.message}\nbare-sse ${bin} printed:\n${server.log}`);
  } finally {
    limit.clear();
  }
  return server;
}

/** Kills the server (SIGKILL: its connections drop, no goodbye) and waits for it to exit. */
export async function stopServer(server) {
  if (!server || server.exited) return;
  server.child.kill('SIGKILL');
  const limit = deadline(WAIT_MS, 'bare-sse to exit after SIGKILL');
  try {
    await Promise.race([server.child.exited, limit.promise]);
  } finally {
    limit.clear();
  }
}

/** Starts a server on `port`, retrying for a few seconds if the port is still busy. */
export async function restartServer(port) {
  const until = Date.now() + WAIT_MS;
  for (;;) {
    try {
      return await startServer(port);
    } catch (err) {
      if (Date.now() > until || !/in use/i.test(String(err))) throw err;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

