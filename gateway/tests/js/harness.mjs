// What the headless-browser scripts (browser.mjs, api.mjs, drain.mjs) share:
// the system Chromium, their options, their verdict, and the JSON lines they
// exchange with the Rust test that drives them (gateway/tests/support/
// node_script.rs is that side).
//
// A script calls `main({ name, options, ..., run })`; `run(base, opts)`
// launches the browser with `launchBrowser()` and throws (`fail`, `check`) to
// fail; api.mjs and drain.mjs log their page in with `login()`. The process
// then ends with "NAME e2e: ok" on stdout and exit 0, or "NAME e2e: FAILED:
// why" and exit 1. A script driven in JSON lines says FAILED on stdout in one
// line, where its driver reads; the others say it on stderr, whole.

import { parseArgs } from 'node:util';
import { randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
/** How long closing the browser may take before the process exits anyway. */
const CLOSE_TIMEOUT_MS = 5_000;

/** The browser `launchBrowser()` started, closed when the script ends. */
let browser = null;

// === the script ===

export function fail(reason) {
  throw new Error(reason);
}

export function check(cond, reason) {
  if (!cond) fail(reason);
}

/** Eight hex digits, to make names unique. */
export const token = () => randomBytes(4).toString('hex');
export const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

/**
 * Runs a script and ends the process with its verdict.
 *
 * - `name`: the script's file name without `.mjs`; its lines start "NAME e2e".
 * - `options`: the names of its `--name VALUE` options; `required` those it
 *   cannot do without, `usage` how to call it when one is missing.
 * - `timeoutMs`: how long the whole script may take.
 * - `lines`: whether a driver reads its stdout line by line (see the top).
 * - `run(base, opts)`: the test, given `--url` with one trailing slash.
 * - `explain()`: more for a FAILED line, read when the script fails.
 */
export async function main({ name, options, required = ['url'], usage, timeoutMs, lines = false, run,
  explain = () => '' }) {
  const report = lines ? console.log : console.error;
  const { values: opts } = parseArgs({
    options: Object.fromEntries(options.map((option) => [option, { type: 'string' }])),
  });
  if (!required.every((option) => opts[option])) {
    report(`${name} e2e: FAILED: usage: node ${name}.mjs ${usage}`);
    process.exit(1);
  }
  const base = opts.url.replace(/\/+$/, '') + '/';
  const timer = setTimeout(async () => {
    report(`${name} e2e: FAILED: no result within ${timeoutMs / 1000} s`);
    await closeBrowser();
    process.exit(1);
  }, timeoutMs);
  let code = 0;
  try {
    await run(base, opts);
    console.log(`${name} e2e: ok`);
  } catch (err) {
    const why = lines ? err.message.split('\n')[0] : err.message;
    report(`${name} e2e: FAILED: ${why}${explain()}`);
    code = 1;
  } finally {
    clearTimeout(timer);
    await closeBrowser();
  }
  process.exit(code);
}

// === the browser ===

/** The system Chromium ($CHROMIUM or /usr/bin/chromium), headless; nothing is downloaded. */
export async function launchBrowser() {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: CHROMIUM_ARGS,
  });
  return browser;
}

async function closeBrowser() {
  if (!browser) return;
  const b = browser;
  browser = null;
  await Promise.race([b.close().catch(() => {}), sleep(CLOSE_TIMEOUT_MS)]);
}

/**
 * Logs `user` in through the form at `base` and waits for the chat page,
 * connected (the JSON-lines scripts' way in; browser.mjs checks more).
 */
export async function login(page, base, user) {
  const first = await page.goto(base);
  check(first && first.status() === 200, `GET / answered ${first && first.status()}`);
  await page.fill('input[name="user"]', user);
  const [posted] = await Promise.all([
    page.waitForResponse((r) => r.request().method() === 'POST' && new URL(r.url()).pathname === '/login'),
    page.click('button[type="submit"]'),
  ]);
  check([200, 303].includes(posted.status()), `POST /login answered ${posted.status()}`);
  await page.waitForLoadState('domcontentloaded');
  await page.waitForFunction((u) => document.querySelector('#me')?.textContent === u, user)
    .catch(() => fail(`no chat page for ${user} after the login (at ${page.url()})`));
  await page.waitForFunction(() => window.warren && window.warren.state() === 'connected')
    .catch(() => fail('the page never became connected after the login'));
}

// === JSON lines with the Rust test ===

/** Writes one JSON object as a line of stdout. */
export const say = (obj) => console.log(JSON.stringify(obj));

/** Objects read from stdin that nobody waited for yet, and who waits for what. */
const inbox = [];
const waiters = [];
/** `{ closed }` once `expectLine()` first reads stdin (browser.mjs never does). */
let stdin = null;

/** Starts reading stdin, one JSON object a line (other lines are ignored). */
function readStdin() {
  stdin = { closed: false };
  createInterface({ input: process.stdin })
    .on('line', (line) => {
      let msg;
      try { msg = JSON.parse(line); } catch { return; }
      const w = waiters.findIndex((x) => x.key in msg);
      if (w >= 0) waiters.splice(w, 1)[0].resolve(msg);
      else inbox.push(msg);
    })
    .on('close', () => {
      stdin.closed = true;
      waiters.splice(0).forEach((w) => w.reject(new Error(`stdin closed while waiting for "${w.key}"`)));
    });
}

/** The next stdin object that has `key`. */
export function expectLine(key) {
  if (!stdin) readStdin();
  const i = inbox.findIndex((m) => key in m);
  if (i >= 0) return Promise.resolve(inbox.splice(i, 1)[0]);
  if (stdin.closed) return Promise.reject(new Error(`stdin closed while waiting for "${key}"`));
  return new Promise((resolve, reject) => waiters.push({ key, resolve, reject }));
}
