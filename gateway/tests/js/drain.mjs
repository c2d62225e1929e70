// Warren drain test in a real (headless) Chromium: the page moves to another
// gateway when its own is SIGTERMed, without the login page, and loses or
// repeats nothing. Driven by gateway/tests/browser_drain.rs, which owns the
// gateways and the other client; the two talk in JSON lines.
//
//   node drain.mjs --url http://127.0.0.1:PORT --room ROOM [--transport ws|sse]
//
// With `--transport sse` the balancer in front refuses WebSockets: the page
// must fall back to the event stream by itself, and stay on it.
//
// script (stdout)                          test (stdin)
//   {"ready":true,"instance","user"}
//                                            {"before":TEXT}   sent and acked by the sender
//   {"seen_before":ID}                       (the test SIGTERMs the page's gateway)
//   {"left":STATE,"typed":TEXT}              the page left `connected`; TEXT typed
//                                            {"sent":[TEXT...]} sent and acked during the gap
//   {"reconnected":INSTANCE,"typed_id":ID}
//                                            {"fence":TEXT}    sent after the typed message's ack
//   drain e2e: ok
//
// Between "left" and "sent" the page's `GET /session` is held (playwright
// route), so the sender's messages are certainly sent while the page has no
// socket: they must come back through the re-join's `since` replay. The fence
// comes after everything else in the room (ids are in order), so once the page
// shows it, any duplicate would already be on screen.
// Any other line on stdout is a log line. Exits 0 after "drain e2e: ok", or
// prints "drain e2e: FAILED: why" and exits 1.

import { check, expectLine, fail, launchBrowser, login, main, say, token } from './harness.mjs';

const GLOBAL_TIMEOUT_MS = 60_000;
const STEP_TIMEOUT_MS = 15_000;

/** What the page did since it was ready (see watch()), for failure messages. */
let seen = null;

const log = (text) => console.log(`# ${text}`);

// === the page ===

/** How many `.msg` on screen have exactly this text. */
function countOnScreen(page, text) {
  return page.$$eval('#messages .msg .text', (els, t) => els.filter((e) => e.textContent === t).length, text);
}

async function waitShown(page, text, label) {
  await page.waitForFunction((t) => [...document.querySelectorAll('#messages .msg .text')]
    .some((e) => e.textContent === t), text)
    .catch(() => fail(`${label}: ${JSON.stringify(text)} never shown`));
}

async function joinRoom(page, room) {
  await page.fill('#room-input', room);
  await page.click('#join-btn');
  await page.waitForFunction((r) => document.querySelector('#room-name')?.textContent === r, room)
    .catch(() => fail(`the page did not switch to room ${room}`));
}

/**
 * What the page does, in ms since the page was created: navigations of the
 * main frame, `/session` requests, new sockets or event streams, and
 * `reconnect` notices on any socket (event streams' notices are counted by
 * the page). `reset()` clears the lists (the login's share) but keeps watching.
 */
function watch(page) {
  const seen = { navigations: [], sessions: [], sockets: [], notices: [], t0: Date.now() };
  /** Forgets what happened so far (the login); sockets and notices count from here. */
  seen.reset = () => {
    seen.navigations = [];
    seen.sessions = [];
    seen.sockets = [];
    seen.notices = [];
  };
  const at = () => Date.now() - seen.t0;
  page.on('framenavigated', (frame) => {
    if (frame === page.mainFrame()) seen.navigations.push(frame.url());
  });
  page.on('request', (req) => {
    const path = new URL(req.url()).pathname;
    if (path === '/session') seen.sessions.push(at());
    if (path === '/sse' && req.method() === 'GET') seen.sockets.push({ opened: at(), stream: true });
  });
  page.on('websocket', (ws) => {
    const entry = { opened: at(), closed: null };
    seen.sockets.push(entry);
    ws.on('close', () => { entry.closed = at(); });
    ws.on('framereceived', ({ payload }) => {
      try {
        const f = JSON.parse(String(payload));
        if (f.type === 'reconnect') seen.notices.push({ at: at(), after_ms: f.after_ms });
      } catch { /* not JSON: ignore */ }
    });
  });
  return seen;
}

/** Holds every `/session` request until `open()` is called. */
async function holdSessions(page) {
  let open;
  const gate = new Promise((resolve) => { open = resolve; });
  let held = 0;
  let onHeld = () => {};
  const matcher = (url) => url.pathname === '/session';
  const handler = async (route) => {
    held++;
    onHeld();
    await gate;
    await route.continue().catch(() => {});
  };
  await page.route(matcher, handler);
  return {
    /** Resolves once a request is held. */
    requested: () => (held > 0 ? Promise.resolve() : new Promise((resolve) => { onHeld = resolve; })),
    open: async () => {
      open();
      await page.unroute(matcher, handler).catch(() => {});
    },
  };
}

async function run(base, { room, transport = 'ws' }) {
  check(['ws', 'sse'].includes(transport), `--transport ${transport}: ws or sse`);
  const browser = await launchBrowser();
  const context = await browser.newContext({ viewport: { width: 1100, height: 720 } });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  const errors = [];
  page.on('pageerror', (err) => errors.push(err.message));

  // Watch from the start: the first socket's frames (the notice) count too.
  seen = watch(page);
  const user = `drain-${token()}`;
  await login(page, base, user);
  await joinRoom(page, room);
  const first = await page.evaluate(() => window.warren.instance());
  check(first, 'the page shows no instance');
  const over = await page.evaluate(() => window.warren.transport());
  check(over === transport, `the page is on ${over}, expected ${transport}`);
  check(await page.textContent('#transport') === (transport === 'sse' ? 'SSE' : 'WebSocket'),
    'the page does not show its transport');
  seen.reset();
  say({ ready: true, instance: first, user });

  // A message before the drain, so that the re-join carries a real `since`.
  const { before } = await expectLine('before');
  await waitShown(page, before, 'before the drain');
  const beforeId = (await page.evaluate((r) => window.warren.messages(r), room))
    .find((m) => m.text === before)?.id;
  check(typeof beforeId === 'number', 'the message before the drain has no id on the page');
  const gate = await holdSessions(page);
  say({ seen_before: beforeId });

  // The test SIGTERMs the gateway; the page gets its notice and lets go.
  await page.waitForFunction(() => window.warren.state() !== 'connected')
    .catch(() => fail(`the page stayed connected to ${first} after its SIGTERM`));
  const left = await page.evaluate(() => window.warren.state());
  const typed = `typed in the gap ${token()}`;
  await page.fill('#send-text', typed);
  await page.press('#send-text', 'Enter');
  check(await countOnScreen(page, typed) === 1, 'the typed message is not shown (pending) once');
  // The page's next step is GET /session: once it is held, the page is
  // certainly between sockets until the gate opens.
  await Promise.race([
    gate.requested(),
    new Promise((_, reject) => setTimeout(() => reject(new Error('the page never asked GET /session')),
      STEP_TIMEOUT_MS)),
  ]);
  say({ left, typed });

  const { sent } = await expectLine('sent');
  check(Array.isArray(sent) && sent.length > 0, 'the test sent nothing during the gap');
  check(await page.evaluate(() => window.warren.state()) !== 'connected',
    'the page was connected again before its session check was let through');
  await gate.open();

  await page.waitForFunction((old) => window.warren.state() === 'connected' && window.warren.instance() !== old,
    first).catch(async () => {
    const [state, instance] = await page.evaluate(() => [window.warren.state(), window.warren.instance()]);
    fail(`not connected to another instance (state ${state}, instance ${instance}, was ${first})`);
  });
  const now = await page.evaluate(() => window.warren.instance());
  log(`moved from ${first} to ${now}; notices ${JSON.stringify(seen.notices)}`);

  for (const text of sent) await waitShown(page, text, 'after the reconnect');
  await page.waitForFunction((t) => [...document.querySelectorAll('#messages .msg')].some(
    (m) => m.querySelector('.text')?.textContent === t && !m.classList.contains('pending') && m.dataset.id,
  ), typed).catch(() => fail('the message typed in the gap was never acked'));
  const typedId = (await page.evaluate((r) => window.warren.messages(r), room)).find((m) => m.text === typed)?.id;
  say({ reconnected: now, typed_id: typedId });

  const { fence } = await expectLine('fence');
  await waitShown(page, fence, 'the fence');

  for (const text of [before, ...sent, typed, fence]) {
    const n = await countOnScreen(page, text);
    check(n === 1, `${JSON.stringify(text)} is shown ${n} times, not once`);
  }
  const ids = (await page.evaluate((r) => window.warren.messages(r), room)).map((m) => m.id);
  check(ids.every((id, i) => i === 0 || id > ids[i - 1]), `ids on the page are not increasing: ${ids}`);
  check(await page.$$eval('#messages .msg.pending, #messages .msg.failed', (e) => e.length) === 0,
    'a message is still pending or failed');

  check(seen.navigations.length === 0, `the page navigated: ${seen.navigations.join(', ')}`);
  check(await page.$('input[name="user"]') === null, 'the login form is on the page');
  check(await page.textContent('#me') === user, 'the page lost its user');
  const notices = transport === 'sse' ? await page.evaluate(() => window.warren.notices()) : seen.notices.length;
  check(notices === 1, `expected one reconnect notice, got ${notices} (${JSON.stringify(seen.notices)})`);
  check(await page.evaluate(() => window.warren.transport()) === transport, `the page left ${transport}`);
  check(seen.sockets.length === 1, `expected exactly one new socket, got ${seen.sockets.length}`);
  check(seen.sessions.length >= 1 && seen.sessions[0] < seen.sockets[0].opened,
    `the new socket did not follow a GET /session (sessions at ${seen.sessions}, socket at ${seen.sockets[0].opened})`);
  check(errors.length === 0, `script errors on the page: ${errors.join('; ')}`);
}

main({
  name: 'drain',
  options: ['url', 'room', 'transport'],
  required: ['url', 'room'],
  usage: '--url http://127.0.0.1:PORT --room ROOM [--transport ws|sse]',
  timeoutMs: GLOBAL_TIMEOUT_MS,
  lines: true,
  run,
  // A navigation usually explains the rest (a destroyed context, a login form).
  explain: () => (seen && seen.navigations.length ? ` (the page navigated: ${seen.navigations.join(', ')})` : ''),
});
