// express-compat.mjs: proves Warren's sessions are interchangeable with the
// real npm express-session + connect-redis@9 (Redis key `sess:<id>`, cookie
// `jsessionid`). A Rust integration test runs it in one of two modes:
//
//   node express-compat.mjs make --redis redis://127.0.0.1:6379 --secret S --user alice
//     Express logs `alice` in and prints {"cookie":"<jsessionid value as sent
//     in Set-Cookie, still URL-encoded>"}.
//   node express-compat.mjs read --redis URL --secret S --cookie VALUE
//     Express reads the session behind `Cookie: jsessionid=VALUE` and prints
//     {"user":"alice"}, or {"user":null} if it does not accept the session.
//
// Both modes print one line of JSON, exit 0, and fail (exit 1, reason on
// stderr) only when something other than the session goes wrong.

import { once } from 'node:events';
import { parseArgs } from 'node:util';

import { RedisStore } from 'connect-redis';
import express from 'express';
import session from 'express-session';
import { createClient } from 'redis';

const USAGE =
  'usage: node express-compat.mjs make --redis URL --secret S --user NAME\n' +
  '       node express-compat.mjs read --redis URL --secret S --cookie VALUE';

function parse(argv) {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      redis: { type: 'string', default: 'redis://127.0.0.1:6379' },
      secret: { type: 'string' },
      user: { type: 'string' },
      cookie: { type: 'string' },
      prefix: { type: 'string', default: 'sess:' },
    },
  });
  const [mode] = positionals;
  const ok =
    positionals.length === 1 &&
    values.secret !== undefined &&
    ((mode === 'make' && values.user !== undefined) ||
      (mode === 'read' && values.cookie !== undefined));
  if (!ok) throw new Error(USAGE);
  return { mode, ...values };
}

// The app exactly as an Express deployment sharing Warren's Redis would set it up.
function app(client, opts) {
  const app = express();
  app.use(
    session({
      store: new RedisStore({ client, prefix: opts.prefix }),
      name: 'jsessionid',
      secret: opts.secret,
      resave: false,
      saveUninitialized: false,
      cookie: { httpOnly: true, sameSite: 'lax', maxAge: 86_400_000 },
    }),
  );
  app.get('/make', (req, res) => {
    req.session.user = opts.user;
    res.json({ ok: true });
  });
  app.get('/read', (req, res) => {
    res.json({ user: req.session.user ?? null });
  });
  return app;
}

// The jsessionid value from a response's Set-Cookie headers, untouched.
function jsessionid(res) {
  for (const line of res.headers.getSetCookie()) {
    const m = /^jsessionid=([^;]*)/.exec(line);
    if (m) return m[1];
  }
  throw new Error(`no jsessionid in Set-Cookie (status ${res.status})`);
}

async function run(opts) {
  const client = createClient({
    url: opts.redis,
    // Fail instead of retrying forever when Redis is not there.
    socket: { connectTimeout: 5_000, reconnectStrategy: false },
  });
  client.on('error', (err) => console.error(`redis: ${err.message}`));
  await client.connect();

  const server = app(client, opts).listen(0, '127.0.0.1');
  try {
    await once(server, 'listening');
    const base = `http://127.0.0.1:${server.address().port}`;
    if (opts.mode === 'make') {
      const res = await fetch(`${base}/make`);
      if (!res.ok) throw new Error(`GET /make: ${res.status}`);
      await res.arrayBuffer();
      return { cookie: jsessionid(res) };
    }
    const res = await fetch(`${base}/read`, {
      headers: { cookie: `jsessionid=${opts.cookie}` },
    });
    if (!res.ok) throw new Error(`GET /read: ${res.status}`);
    const body = await res.json();
    return { user: body.user ?? null };
  } finally {
    // Close keep-alive sockets too, so the process exits at once.
    server.closeAllConnections();
    server.close();
    await (typeof client.close === 'function' ? client.close() : client.quit());
  }
}

try {
  const out = await run(parse(process.argv.slice(2)));
  process.stdout.write(`${JSON.stringify(out)}\n`);
} catch (err) {
  console.error(`express-compat: ${err.message}`);
  process.exitCode = 1;
}
