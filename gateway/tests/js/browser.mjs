// Warren end-to-end test in a real (headless) Chromium, driven by playwright-core.
//
//   node browser.mjs --url http://127.0.0.1:PORT [--screenshot PATH]
//
// The URL is the load balancer in front of several gateways. The test logs in
// through the form (after checking a bad name is refused with 400), checks a
// reload keeps the session, puts two users on different gateways, checks each
// sees the other in the room's member list and the list's count (the gateways
// list at most one member in `joined`, so the page must ask for the list with
// `members` and follow `presence_diff` frames), and checks messages cross between
// them as literal text and get acked. Uses the system Chromium ($CHROMIUM or
// /usr/bin/chromium); nothing is downloaded.
// Prints "browser e2e: ok" and exits 0, or prints why and exits 1.

import { check, fail, launchBrowser, main, token } from './harness.mjs';

const GLOBAL_TIMEOUT_MS = 90_000;
const STEP_TIMEOUT_MS = 10_000;
const MAX_RELOADS = 30;

/** A page in its own browser context (own cookies and storage), with JS errors collected. */
async function newUser(browser, label) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 720 } });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  page.errors = [];
  page.on('pageerror', (err) => page.errors.push(err.message));
  page.on('console', (msg) => {
    if (msg.type() === 'error') console.error(`[${label} console] ${msg.text()}`);
  });
  return page;
}

function assertNoPageErrors(page, label) {
  check(page.errors.length === 0, `${label}: script errors on the page: ${page.errors.join('; ')}`);
}

/** Submits the login form with `name`; returns the response to the POST. */
async function submitLogin(page, name, { noValidate = false } = {}) {
  await page.fill('input[name="user"]', name);
  if (noValidate) await page.evaluate(() => { document.querySelector('form').noValidate = true; });
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.request().method() === 'POST' && new URL(r.url()).pathname === '/login'),
    page.click('button[type="submit"]'),
  ]);
  await page.waitForLoadState('domcontentloaded');
  return response;
}

async function waitConnected(page, label) {
  try {
    await page.waitForFunction(() => document.querySelector('#conn-state')?.textContent === 'connected');
  } catch {
    const state = await page.textContent('#conn-state').catch(() => '?');
    fail(`${label}: #conn-state never became "connected" (it is "${state}")`);
  }
}

/** Waits for the chat page of `user` to be connected; returns the gateway instance it is on. */
async function expectChat(page, user, label) {
  await page.waitForSelector('#me')
    .catch(() => fail(`${label}: no chat page (at ${page.url()})`));
  await page.waitForFunction((u) => document.querySelector('#me')?.textContent === u, user)
    .catch(async () => fail(`${label}: #me is "${await page.textContent('#me')}", not "${user}"`));
  await waitConnected(page, label);
  const instance = (await page.textContent('#instance')).trim();
  check(instance !== '', `${label}: #instance is empty`);
  return instance;
}

/** Step 1 and 2: the login page, a refused name, then a real login. */
async function login(page, base, user, label, { tryBadName = false } = {}) {
  const first = await page.goto(base);
  check(first && first.status() === 200, `${label}: GET / answered ${first && first.status()}`);
  const isLogin = await page.$('#login-error, input[name="user"]');
  check(isLogin, `${label}: GET / without a session did not show the login page`);
  if (tryBadName) {
    const bad = await submitLogin(page, 'bad name!', { noValidate: true });
    check(bad.status() === 400, `${label}: a bad name got HTTP ${bad.status()}, not 400`);
    const error = ((await page.textContent('#login-error').catch(() => '')) || '').trim();
    check(error !== '', `${label}: a bad name showed no text in #login-error`);
  }
  const ok = await submitLogin(page, user);
  check([200, 303].includes(ok.status()), `${label}: login answered ${ok.status()}`);
  return expectChat(page, user, label);
}

/** Reloads `page` until its gateway differs from `other`; returns the new instance. */
async function moveAwayFrom(page, user, other, label) {
  let instance = await expectChat(page, user, label);
  for (let i = 0; i < MAX_RELOADS && instance === other; i++) {
    await page.reload();
    instance = await expectChat(page, user, label);
  }
  check(instance !== other, `${label}: still on ${other} after ${MAX_RELOADS} reloads`);
  return instance;
}

async function sendMessage(page, text) {
  await page.fill('#send-text', text);
  await page.press('#send-text', 'Enter');
}

/** Waits until `page` shows a message from `user` whose text is exactly `text`. */
async function expectMessage(page, user, text, label) {
  await page.waitForFunction(([u, t]) => [...document.querySelectorAll('#messages .msg')].some(
    (m) => m.querySelector('.text')?.textContent === t && m.querySelector('.user')?.textContent === u,
  ), [user, text]).catch(() => fail(`${label}: did not show ${user}'s message ${JSON.stringify(text)} in 10 s`));
  const injected = await page.$$eval('#messages b, #messages script', (els) => els.length);
  check(injected === 0, `${label}: message text was rendered as HTML (found <b>/<script> in #messages)`);
}

/** Waits until the sender's own message is acked: has a data-id and no .pending class. */
async function expectAcked(page, text, label) {
  await page.waitForFunction((t) => [...document.querySelectorAll('#messages .msg')].some(
    (m) => m.querySelector('.text')?.textContent === t && !m.classList.contains('pending') && m.dataset.id,
  ), text).catch(() => fail(`${label}: own message ${JSON.stringify(text)} not acked in 10 s`));
}

/** Waits until `page`'s member list shows every one of `users` (an `li` each, the name as its text). */
async function expectMembers(page, users, label) {
  await page.waitForFunction((us) => {
    const shown = [...document.querySelectorAll('#members li')].map((li) => li.textContent);
    return us.every((u) => shown.includes(u));
  }, users).catch(async () => {
    const shown = await page.$$eval('#members li', (lis) => lis.map((li) => li.textContent));
    fail(`${label}: #members shows ${JSON.stringify(shown)}, not all of ${JSON.stringify(users)}`);
  });
}

/** Waits until `page` shows the whole member list: as many names as its count says. */
async function expectMemberCount(page, label) {
  await page.waitForFunction(() => {
    const count = Number(document.querySelector('#member-count')?.textContent);
    const names = document.querySelectorAll('#members li.member:not(.pending)').length;
    return count >= 2 && names === count;
  }).catch(async () => {
    const count = await page.textContent('#member-count');
    const shown = await page.$$eval('#members li', (lis) => lis.map((li) => li.textContent));
    fail(`${label}: #member-count says ${JSON.stringify(count)} but #members shows ${JSON.stringify(shown)}`);
  });
}

async function run(base, { screenshot }) {
  const browser = await launchBrowser();
  const tag = token();
  const alice = `alice-${tag}`;
  const bob = `bob-${tag}`;

  const a = await newUser(browser, 'alice');
  let aliceOn = await login(a, base, alice, 'alice', { tryBadName: true });
  console.log(`alice logged in on ${aliceOn}`);

  await a.reload();
  aliceOn = await expectChat(a, alice, 'alice after reload');
  console.log(`alice still logged in after a reload, now on ${aliceOn}`);

  const b = await newUser(browser, 'bob');
  await login(b, base, bob, 'bob');
  const bobOn = await moveAwayFrom(b, bob, aliceOn, 'bob');
  console.log(`bob on ${bobOn}, alice on ${aliceOn}`);
  await expectMembers(a, [alice, bob], 'alice');
  await expectMembers(b, [alice, bob], 'bob');
  await expectMemberCount(a, 'alice');
  await expectMemberCount(b, 'bob');

  const fromBob = `<b>not bold</b> <script>x</script> ${token()}`;
  await sendMessage(b, fromBob);
  await expectMessage(a, bob, fromBob, 'alice');
  await expectAcked(b, fromBob, 'bob');

  const fromAlice = `hello bob & <i>co</i> ${token()}`;
  await sendMessage(a, fromAlice);
  await expectMessage(b, alice, fromAlice, 'bob');
  await expectAcked(a, fromAlice, 'alice');

  check((await a.inputValue('#send-text')) === '', 'alice: #send-text not cleared after sending');
  assertNoPageErrors(a, 'alice');
  assertNoPageErrors(b, 'bob');
  if (screenshot) await a.screenshot({ path: screenshot });
}

main({
  name: 'browser',
  options: ['url', 'screenshot'],
  usage: '--url http://127.0.0.1:PORT [--screenshot PATH]',
  timeoutMs: GLOBAL_TIMEOUT_MS,
  run,
});
