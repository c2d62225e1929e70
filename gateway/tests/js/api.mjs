// Warren's server API as the page sees it, in a real (headless) Chromium: a
// backend posts into the page's room and the page shows the message; then the
// backend disconnects the user and ends their sessions, and the page ends on
// the login page instead of coming back in. Driven by
// gateway/tests/browser_api.rs, which owns the gateways and calls the API; the
// two talk in JSON lines.
//
//   node api.mjs --url http://127.0.0.1:PORT --room ROOM [--screenshot PATH]
//
// script (stdout)                          test (stdin)
//   {"ready":true,"instance","user"}
//                                            {"posted":TEXT,"id":ID,"by":USER}   through the API
//   {"shown":ID,"cookie":VALUE}              the page's session cookie now
//                                            (the test calls .../disconnect, end_sessions)
//                                            {"disconnected":true}
//   {"logged_out":{close,sessions,sockets,url,title,login_form,chat}}
//   api e2e: ok
//
// `logged_out` says what the page did after the call: the close code and
// reason its socket got, the statuses of its `GET /session` requests, how many
// sockets it opened, and where it ended (after QUIET_MS without a new socket).
// Any other line on stdout is a log line. Exits 0 after "api e2e: ok", or
// prints "api e2e: FAILED: why" and exits 1.

import { expectLine, fail, launchBrowser, login, main, say, sleep, token } from './harness.mjs';

const GLOBAL_TIMEOUT_MS = 60_000;
const STEP_TIMEOUT_MS = 15_000;
/** How long the login page must stay put, with no new socket, to count. */
const QUIET_MS = 2_000;

// === the page ===

/**
 * What the page does, in ms since `reset()`: sockets opened, close events
 * with their code and reason (an init script reports every socket's `close`
 * event, which playwright does not show), and `/session` answers.
 */
async function watch(context) {
  const seen = { t0: Date.now(), sockets: [], closes: [], sessions: [] };
  seen.reset = () => Object.assign(seen, { t0: Date.now(), sockets: [], closes: [], sessions: [] });
  const at = () => Date.now() - seen.t0;
  await context.exposeBinding('warrenTestClosed', (_source, code, reason) => {
    seen.closes.push({ at: at(), code, reason });
  });
  await context.addInitScript(() => {
    const Native = window.WebSocket;
    window.WebSocket = class extends Native {
      constructor(...args) {
        super(...args);
        this.addEventListener('close', (e) => window.warrenTestClosed(e.code, e.reason));
      }
    };
  });
  seen.attach = (page) => {
    page.on('websocket', () => seen.sockets.push(at()));
    page.on('response', (res) => {
      if (new URL(res.url()).pathname === '/session') seen.sessions.push(res.status());
    });
  };
  return seen;
}

/** Joins `room` and waits for its `joined`, which lists the page's user. */
async function joinRoom(page, room, user) {
  await page.fill('#room-input', room);
  await page.click('#join-btn');
  await page.waitForFunction((r) => document.querySelector('#room-name')?.textContent === r, room)
    .catch(() => fail(`the page did not switch to room ${room}`));
  await page.waitForFunction(([r, u]) => window.warren.members(r).includes(u), [room, user])
    .catch(() => fail(`the page never saw itself in ${room}'s members`));
}

/** The page's session cookie, as the browser holds it (it is HttpOnly). */
async function sessionCookie(context, base) {
  const cookie = (await context.cookies(base)).find((c) => c.name === 'jsessionid');
  return cookie ? cookie.value : null;
}

async function run(base, { room, screenshot }) {
  const browser = await launchBrowser();
  const context = await browser.newContext({ viewport: { width: 1100, height: 720 } });
  const seen = await watch(context);
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  seen.attach(page);
  const errors = [];
  page.on('pageerror', (err) => errors.push(err.message));

  const user = `api-page-${token()}`;
  await login(page, base, user);
  await joinRoom(page, room, user);
  say({ ready: true, instance: await page.evaluate(() => window.warren.instance()), user });

  // A backend posts into the room: the page shows it, as any message.
  const { posted, id, by } = await expectLine('posted');
  await page.waitForFunction(({ text, id: want, user: poster }) => [...document.querySelectorAll('#messages .msg')]
    .some((m) => m.querySelector('.text')?.textContent === text && m.querySelector('.user')?.textContent === poster
      && m.dataset.id === String(want)), { text: posted, id, user: by })
    .catch(() => fail(`the posted message ${JSON.stringify(posted)} (id ${id}, by ${by}) was never shown`));
  // No `GET /session` from here on while connected: this cookie is the live one.
  seen.reset();
  say({ shown: id, cookie: await sessionCookie(context, base) });

  // The backend disconnects the user, sessions ended: the socket closes, and
  // the page must end on the login page and stay there.
  await expectLine('disconnected');
  await page.waitForSelector('input[name="user"]')
    .catch(() => fail(`no login form after the disconnect (at ${page.url()}; closes ${JSON.stringify(seen.closes)})`));
  let quietSince = Date.now();
  let sockets = seen.sockets.length;
  while (Date.now() - quietSince < QUIET_MS) {
    await sleep(100);
    if (seen.sockets.length !== sockets) [sockets, quietSince] = [seen.sockets.length, Date.now()];
  }
  if (screenshot) await page.screenshot({ path: screenshot });
  say({
    logged_out: {
      close: seen.closes[0] || null,
      sessions: seen.sessions,
      sockets: seen.sockets.length,
      url: page.url(),
      title: await page.title(),
      login_form: await page.isVisible('input[name="user"]'),
      chat: await page.$('#me') !== null,
    },
  });
  if (errors.length) fail(`script errors on the page: ${errors.join('; ')}`);
}

main({
  name: 'api',
  options: ['url', 'room', 'screenshot'],
  required: ['url', 'room'],
  usage: '--url http://127.0.0.1:PORT --room ROOM',
  timeoutMs: GLOBAL_TIMEOUT_MS,
  lines: true,
  run,
});
