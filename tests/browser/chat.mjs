// End-to-end test of herald's chat page in Debian's chromium, driven by
// playwright-core (no browser download: /usr/bin/chromium).
//
// Run by tests/browser/run.sh, which starts two heralds and passes:
//   HERALD_URL        http://127.0.0.1:PORT/
//   HERALD_TLS_URL    https://127.0.0.1:PORT2/: a herald serving TLS only,
//                     with a self-signed certificate (chromium runs with
//                     --ignore-certificate-errors)
//   HERALD_CTL        command (run through bash) that takes `stop` or
//                     `start`: stops herald with SIGTERM / starts it again
//                     on the same port (both wait until done)
//   REPORT_DIR        where the screenshots go (reports/browser)
//   DOCS_SCREENSHOT   where to copy the combined screenshot (docs/chat-page.png)
//   CHROMIUM          the browser (default /usr/bin/chromium)
//
// Steps: two pages open `/` and show `Status: connected`; page A types a
// message and presses Enter, both pages show `Message from server: …`;
// page B types one and clicks Send, both show it; herald is stopped (both
// pages show they lost it) and started again on the same port; both pages
// reconnect on their own (status back to connected) and chat again. Then
// two pages open `/rooms/blue` (titled for their room) and chat with each
// other, while the lobby pages see none of it and they none of the lobby.
// Every page's WebSocket must use the scheme its page's came with: ws: here.
//
// Then over TLS, in the same browser: pages E and F open the TLS herald's
// `/` (the page's TLS details are checked) and open a `wss:` socket (the
// page derives it from `location`); they chat (Enter, Send); page G opens
// `/rooms/blue` there and sees none of it, and they none of G's message.
// No restart: the plain run proves that, and the transport does not change it.
// Every wait has a timeout; any mismatch fails with a message naming it.

import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { chromium } from 'playwright-core';

const URL = required('HERALD_URL');
const TLS_URL = required('HERALD_TLS_URL');
const CTL = required('HERALD_CTL');
const REPORT_DIR = required('REPORT_DIR');
const DOCS_SCREENSHOT = process.env.DOCS_SCREENSHOT || '';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const PREFIX = 'Message from server: ';

// Generous per-step limits: a loaded 2-core CI machine is slow, a passing
// run never waits this long.
const STEP_MS = 15_000;
// The page retries with backoff 0.5 s, 1 s, 2 s, … (at most 10 s).
const RECONNECT_MS = 30_000;
const WHOLE_RUN_MS = 240_000;

function required(name) {
  const v = process.env[name];
  if (!v) fail(`environment variable ${name} is not set (run tests/browser/run.sh)`);
  return v;
}

function log(msg) {
  console.log(`browser: ${msg}`);
}

function fail(msg) {
  console.error(`browser: FAIL: ${msg}`);
  process.exit(1);
}

const watchdog = setTimeout(
  () => fail(`the whole run took longer than ${WHOLE_RUN_MS / 1000} s`),
  WHOLE_RUN_MS,
);

function ctl(action) {
  log(`herald: ${action}`);
  try {
    execFileSync('bash', ['-c', `${CTL} ${action}`], { stdio: 'inherit', timeout: 60_000 });
  } catch (e) {
    throw new Error(`\`${CTL} ${action}\` failed: ${e.message}`);
  }
}

async function status(page) {
  return page.locator('#status').textContent();
}

async function messages(page) {
  return page.locator('#messages p').allTextContents();
}

/** Waits until the page's status is `want`; fails naming what it showed. */
async function expectStatus(page, name, want, timeout = STEP_MS) {
  try {
    await page.waitForFunction(
      (w) => document.getElementById('status')?.textContent === w,
      want,
      { timeout, polling: 50 },
    );
  } catch {
    throw new Error(`page ${name}: status should be "${want}" within ${timeout} ms, ` +
      `but shows "${await status(page)}"`);
  }
}

/** Waits until the page's status is anything but `connected`. */
async function expectNotConnected(page, name) {
  try {
    await page.waitForFunction(
      () => document.getElementById('status')?.textContent !== 'connected',
      null,
      { timeout: STEP_MS, polling: 50 },
    );
  } catch {
    throw new Error(`page ${name}: still shows "connected" ${STEP_MS} ms after herald stopped`);
  }
}

/** Waits until the page's message list is exactly `want`. */
async function expectMessages(page, name, want) {
  try {
    await page.waitForFunction(
      (w) => {
        const got = [...document.querySelectorAll('#messages p')].map((p) => p.textContent);
        return got.length === w.length && got.every((t, i) => t === w[i]);
      },
      want,
      { timeout: STEP_MS, polling: 50 },
    );
  } catch {
    throw new Error(`page ${name}: messages should be ${JSON.stringify(want)}, ` +
      `but are ${JSON.stringify(await messages(page))}`);
  }
}

async function typeAndPressEnter(page, text) {
  const input = page.locator('#messageInput');
  await input.click();
  await input.pressSequentially(text);
  await input.press('Enter');
  await expectEmptyInput(page, 'after Enter');
}

async function typeAndClickSend(page, text) {
  const input = page.locator('#messageInput');
  await input.fill(text);
  await page.getByRole('button', { name: 'Send' }).click();
  await expectEmptyInput(page, 'after Send');
}

async function expectEmptyInput(page, when) {
  try {
    await page.waitForFunction(
      () => document.getElementById('messageInput').value === '',
      null,
      { timeout: STEP_MS, polling: 50 },
    );
  } catch {
    throw new Error(`the input still holds "${await page.locator('#messageInput').inputValue()}" ${when}`);
  }
}

/** Both pages side by side in one PNG, rendered by the browser itself. */
async function combinedScreenshot(context, shots, out) {
  const page = await context.newPage();
  const cells = shots
    .map(({ label, file }) => {
      const b64 = readFileSync(file).toString('base64');
      return `<figure><figcaption>${label}</figcaption><img src="data:image/png;base64,${b64}"></figure>`;
    })
    .join('');
  await page.setViewportSize({ width: 1320, height: 560 });
  await page.setContent(
    `<!DOCTYPE html><html><head><style>
      body { margin: 0; padding: 12px; background: #d8dce2; font: 14px sans-serif; }
      h2 { margin: 0 0 10px; font-size: 15px; color: #222; }
      .row { display: flex; gap: 16px; }
      figure { margin: 0; }
      figcaption { padding: 4px 0 6px; font-weight: bold; color: #333; }
      img { display: block; border: 1px solid #888; background: #fff; }
    </style></head><body><h2>herald's chat page in headless Chromium: two pages, after a herald restart</h2>
    <div class="row">${cells}</div></body></html>`,
  );
  await page.locator('img').last().evaluate((img) => img.decode());
  await page.screenshot({ path: out, fullPage: true });
  await page.close();
}

async function main() {
  mkdirSync(REPORT_DIR, { recursive: true });
  const profile = mkdtempSync(join(tmpdir(), 'herald-chromium-'));
  let context;
  try {
    log(`launching ${CHROMIUM} (profile ${profile})`);
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        // The TLS herald's certificate is self-signed.
        '--ignore-certificate-errors',
      ],
      viewport: { width: 640, height: 480 },
      timeout: 60_000,
    });
    context.setDefaultTimeout(STEP_MS);
    const browserErrors = [];
    // Every WebSocket URL each page opened, as the browser saw it.
    const sockets = new Map();
    // Each page's answer to its GET.
    const responses = new Map();
    const open = async (name, path = '', wantTitle = 'WebSocket Chat', base = URL) => {
      const page = await context.newPage();
      page.on('pageerror', (e) => browserErrors.push(`page ${name}: ${e.message}`));
      sockets.set(page, []);
      page.on('websocket', (ws) => sockets.get(page).push(ws.url()));
      const resp = await page.goto(base + path, { waitUntil: 'load' });
      if (!resp || resp.status() !== 200) {
        throw new Error(`page ${name}: GET ${base}${path} answered ${resp ? resp.status() + " " + (await resp.text()) : "nothing"}`);
      }
      const title = await page.title();
      if (title !== wantTitle) throw new Error(`page ${name}: title is "${title}"`);
      responses.set(page, resp);
      return page;
    };
    /** The page's sockets all went to `base`'s host at `path`, as ws: or wss: like the page. */
    const expectSockets = (page, name, path, base = URL) => {
      const want = base.replace(/^http/, 'ws') + path;
      const got = sockets.get(page);
      if (got.length === 0 || got.some((u) => u !== want)) {
        throw new Error(`page ${name}: its WebSockets should all be ${want}, but were ${JSON.stringify(got)}`);
      }
    };
    const a = await open('A');
    const b = await open('B');
    const pages = [['A', a], ['B', b]];

    for (const [n, p] of pages) await expectStatus(p, n, 'connected');
    log('both pages connected');

    const expected = [];
    const m1 = 'hello from A (Enter)';
    await typeAndPressEnter(a, m1);
    expected.push(PREFIX + m1);
    for (const [n, p] of pages) await expectMessages(p, n, expected);
    log('A typed + Enter: both pages show it');

    const m2 = 'hi from B (Send button)';
    await typeAndClickSend(b, m2);
    expected.push(PREFIX + m2);
    for (const [n, p] of pages) await expectMessages(p, n, expected);
    log('B typed + Send: both pages show it');

    // herald goes away: both pages notice.
    ctl('stop');
    for (const [n, p] of pages) await expectNotConnected(p, n);
    log(`pages while herald is down: A "${await status(a)}", B "${await status(b)}"`);

    // herald comes back on the same port: both pages reconnect by themselves.
    ctl('start');
    const t0 = Date.now();
    for (const [n, p] of pages) await expectStatus(p, n, 'connected', RECONNECT_MS);
    log(`both pages reconnected within ${Date.now() - t0} ms of the restart`);

    const m3 = 'A again, after the restart';
    await typeAndPressEnter(a, m3);
    expected.push(PREFIX + m3);
    for (const [n, p] of pages) await expectMessages(p, n, expected);
    const m4 = 'B again, after the restart';
    await typeAndClickSend(b, m4);
    expected.push(PREFIX + m4);
    for (const [n, p] of pages) await expectMessages(p, n, expected);
    log('both pages chat again after the restart');

    // Rooms: two pages in room "blue" chat; the lobby sees none of it.
    const c = await open('C', 'rooms/blue', 'WebSocket Chat: blue');
    const d = await open('D', 'rooms/blue', 'WebSocket Chat: blue');
    const room = [['C', c], ['D', d]];
    for (const [n, p] of room) await expectStatus(p, n, 'connected');
    const blue = [];
    const m5 = 'C in room blue';
    await typeAndPressEnter(c, m5);
    blue.push(PREFIX + m5);
    for (const [n, p] of room) await expectMessages(p, n, blue);
    const m6 = 'A in the lobby';
    await typeAndPressEnter(a, m6);
    expected.push(PREFIX + m6);
    for (const [n, p] of pages) await expectMessages(p, n, expected);
    for (const [n, p] of room) await expectMessages(p, n, blue);
    log('room blue: C and D chat; the lobby pages see none of it, and they none of the lobby');
    for (const [n, p] of pages) expectSockets(p, n, '');
    for (const [n, p] of room) expectSockets(p, n, 'rooms/blue');
    log(`every page's WebSocket is ws: (${sockets.get(a)[0]}, ${sockets.get(c)[0]})`);

    await tlsRun(open, expectSockets, responses);

    if (browserErrors.length) throw new Error(`script errors in the page: ${browserErrors.join('; ')}`);

    const shots = [];
    for (const [n, p] of pages) {
      const file = join(REPORT_DIR, `page-${n.toLowerCase()}.png`);
      await p.screenshot({ path: file });
      shots.push({ label: `Page ${n} (sends with ${n === 'A' ? 'Enter' : 'the Send button'})`, file });
    }
    const combined = join(REPORT_DIR, 'chat-pages.png');
    await combinedScreenshot(context, shots, combined);
    log(`screenshots: ${shots.map((s) => s.file).join(', ')}, ${combined}`);
    if (DOCS_SCREENSHOT) {
      mkdirSync(dirname(DOCS_SCREENSHOT), { recursive: true });
      copyFileSync(combined, DOCS_SCREENSHOT);
      log(`copied to ${DOCS_SCREENSHOT}`);
    }
  } finally {
    if (context) await context.close().catch(() => {});
    rmSync(profile, { recursive: true, force: true });
  }
}

/** The TLS herald: pages E and F chat over wss:, page G in room blue sees none of it. */
async function tlsRun(open, expectSockets, responses) {
  const e = await open('E', '', 'WebSocket Chat', TLS_URL);
  const f = await open('F', '', 'WebSocket Chat', TLS_URL);
  const g = await open('G', 'rooms/blue', 'WebSocket Chat: blue', TLS_URL);
  const lobby = [['E', e], ['F', f]];
  for (const [n, p] of [...lobby, ['G', g]]) await expectStatus(p, n, 'connected');
  // The page's own view: it came over https: and its socket is wss:.
  const seen = await e.evaluate(() => [location.protocol, socket.url]);
  if (seen[0] !== 'https:' || !seen[1].startsWith('wss://')) {
    throw new Error(`page E: location.protocol is ${seen[0]}, its socket's URL ${seen[1]}`);
  }
  const details = await responses.get(e).securityDetails();
  if (!details || !/^TLS 1\.[23]$/.test(details.protocol || '')) {
    throw new Error(`page E: no TLS details for ${TLS_URL}: ${JSON.stringify(details)}`);
  }
  log(`TLS pages connected: E over ${details.protocol} (certificate for ${details.subjectName}), socket ${seen[1]}`);

  const expected = [];
  const m1 = 'E over TLS (Enter)';
  await typeAndPressEnter(e, m1);
  expected.push(PREFIX + m1);
  for (const [n, p] of lobby) await expectMessages(p, n, expected);
  const m2 = 'F over TLS (Send button)';
  await typeAndClickSend(f, m2);
  expected.push(PREFIX + m2);
  for (const [n, p] of lobby) await expectMessages(p, n, expected);
  log('TLS: E typed + Enter, F typed + Send: both pages show both');

  const m3 = 'G in room blue, over TLS';
  await typeAndPressEnter(g, m3);
  await expectMessages(g, 'G', [PREFIX + m3]);
  for (const [n, p] of lobby) await expectMessages(p, n, expected);
  log('TLS: G in room blue sees only its own message; E and F none of it');

  for (const [n, p] of lobby) expectSockets(p, n, '', TLS_URL);
  expectSockets(g, 'G', 'rooms/blue', TLS_URL);
  const file = join(REPORT_DIR, 'page-tls.png');
  await f.screenshot({ path: file });
  log(`TLS: every page's WebSocket is wss:; screenshot ${file}`);
}

main().then(
  () => {
    clearTimeout(watchdog);
    log('PASS');
  },
  (e) => {
    clearTimeout(watchdog);
    fail(e && e.message ? e.message : String(e));
  },
);
