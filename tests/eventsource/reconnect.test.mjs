// The npm `eventsource` package (a WHATWG-compliant EventSource for Node)
// against bare-sse. Between client and server sits a small TCP proxy, so the
// test can cut the connection the way a network would; the client must then
// reconnect by itself with Last-Event-ID, and every event published while it
// was away must arrive exactly once, in order.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';
import { EventSource } from 'eventsource';

const BIN = process.env.BARE_SSE_BIN ?? 'target/debug/bare-sse';

function startServer() {
  return new Promise((resolve, reject) => {
    const child = spawn(BIN, ['--listen', '127.0.0.1:0', '--retry-ms', '200'], { stdio: ['ignore', 'ignore', 'pipe'] });
    const timer = setTimeout(() => reject(new Error('server did not start')), 10_000);
    let seen = '';
    child.stderr.on('data', (chunk) => {
      seen += String(chunk);
      if (!seen.includes('\n')) return; // The start line may come in pieces.
      clearTimeout(timer);
      const match = /http:\/\/([\d.]+):(\d+)/.exec(seen);
      if (!match) return reject(new Error(`no address in ${seen}`));
      resolve({ child, port: Number(match[2]) });
    });
    child.once('error', reject);
  });
}

// A proxy that can drop every connection it carries.
function startProxy(targetPort) {
  const sockets = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(targetPort, '127.0.0.1');
    for (const s of [client, upstream]) { sockets.add(s); s.on('error', () => {}); s.on('close', () => sockets.delete(s)); }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    port: server.address().port,
    dropAll: () => { for (const s of sockets) s.destroy(); },
    close: () => { for (const s of sockets) s.destroy(); server.close(); },
  })));
}

async function publish(port, message) {
  const response = await fetch(`http://127.0.0.1:${port}/send-event`, {
    method: 'POST', body: JSON.stringify({ message }),
  });
  assert.equal(response.status, 200);
  return (await response.json()).id;
}

function waitFor(predicate, what, ms = 10_000) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const timer = setInterval(() => {
      if (predicate()) { clearInterval(timer); resolve(); }
      else if (Date.now() - started > ms) { clearInterval(timer); reject(new Error(`timed out waiting for ${what}`)); }
    }, 10);
  });
}

test('eventsource reconnects with Last-Event-ID and misses nothing', async () => {
  const { child, port } = await startServer();
  const proxy = await startProxy(port);
  const received = [];
  let opens = 0;
  const source = new EventSource(`http://127.0.0.1:${proxy.port}/events`);
  try {
    source.onopen = () => { opens += 1; };
    source.onmessage = (event) => received.push({ id: event.lastEventId, data: event.data });
    await waitFor(() => opens === 1, 'first open');

    for (let i = 0; i < 5; i++) await publish(port, `before ${i}`);
    await waitFor(() => received.length === 5, 'events before the drop');

    // Cut the connection, publish while the client is away, then let it
    // reconnect (retry is 200 ms).
    proxy.dropAll();
    const missed = [];
    for (let i = 0; i < 5; i++) missed.push(await publish(port, `while away ${i}\nsecond line`));
    await waitFor(() => opens === 2, 'the automatic reconnect');
    for (let i = 0; i < 5; i++) await publish(port, `after ${i}`);
    await waitFor(() => received.length === 15, 'all 15 events');

    const data = received.map((e) => e.data);
    assert.deepEqual(data, [
      ...[0, 1, 2, 3, 4].map((i) => `before ${i}`),
      ...[0, 1, 2, 3, 4].map((i) => `while away ${i}\nsecond line`),
      ...[0, 1, 2, 3, 4].map((i) => `after ${i}`),
    ]);
    assert.deepEqual(received.slice(5, 10).map((e) => e.id), missed, 'replayed with their original ids');
    const seqs = received.map((e) => Number(e.id.split('-')[1]));
    seqs.forEach((s, i) => i > 0 && assert.equal(s, seqs[i - 1] + 1, 'ids are consecutive'));
  } finally {
    source.close();
    proxy.close();
    child.kill();
  }
});
