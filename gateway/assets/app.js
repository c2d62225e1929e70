/*
 * Warren chat client: the script behind chat.html.
 *
 * Speaks the client protocol of docs/protocol.md over one WebSocket at /ws,
 * or, where a WebSocket cannot be opened (twice in a row, without ever
 * opening), over the event stream at /sse with its frames POSTed back
 * (`?transport=sse` or `?transport=ws` forces one; the top bar shows which):
 * checks the session, joins the remembered rooms (replaying from the last id
 * seen after a reconnect), renders messages de-duplicated and sorted by id,
 * keeps sends pending until their ack and resends them with the same cid
 * after a reconnect. Shows who is in the current room, and how many: the
 * members that `joined` lists (or, in a room too big for `joined` to list,
 * that one `members` request returns), kept up to date by `presence_diff`
 * frames. Reconnects with full-jitter exponential backoff, or after the
 * delay a draining gateway asks for. User text only ever reaches the page
 * through textContent.
 *
 * Plain ES2020, no modules, no dependencies; loaded with `defer`.
 */
(() => {
  'use strict';

  const DEFAULT_ROOM = 'lobby';
  const ROOM_RE = /^[a-z0-9_-]{1,64}$/;
  const MAX_TEXT = 4000;
  const PING_EVERY_MS = 20000;   // an application ping, answered by a pong frame
  const DEAD_AFTER_MS = 45000;   // no frame at all for this long: the socket is dead
  const BACKOFF_BASE_MS = 500;
  const BACKOFF_CAP_MS = 20000;
  const RETRY_SEND_MS = 2000;    // resend after a retryable error on a live socket
  const STATUS_MS = 5000;
  const MAX_KEEP = 2000;         // messages kept per room
  const RETRYABLE = new Set(['unavailable', 'timeout']);
  const JOIN_RETRY_MS = 1000;    // a join refused as `unavailable` is sent again after this (or retry_after_ms)
  const MEMBERS_RETRY_MS = 1000; // a refused `members` request is asked again after this (or retry_after_ms)
  const LOGIN = 'login';         // checkSession(): no valid session
  const WS_FAILS_BEFORE_SSE = 2; // WebSockets that never opened, in a row, before falling back
  const TRANSPORT_KEY = 'warren.transport';
  const FORCED = new URLSearchParams(location.search).get('transport'); // 'ws' | 'sse' | null

  const $ = (id) => document.getElementById(id);

  const st = {
    user: '',
    instance: '',
    conn: 'connecting',     // connected | connecting | reconnecting | offline
    socket: null,           // the open transport: { kind, send(text), close() }
    transport: FORCED === 'sse' || FORCED === 'ws' ? FORCED
      : (sessionStorage.getItem(TRANSPORT_KEY) === 'sse' ? 'sse' : 'ws'),
    wsFailures: 0,          // WebSockets in a row that failed before opening
    notices: 0,             // `reconnect` notices received (the drain tests read it)
    connecting: false,      // a session check is in flight
    attempt: 0,             // failed attempts since the last welcome
    reconnectAt: 0,
    timers: { reconnect: 0, countdown: 0, dead: 0, ping: 0, status: 0 },
    rooms: new Map(),       // name -> { name, items, ids, lastId, readId, unread, joined, members, count, listed, asked }
    order: [],              // room names in the order shown
    current: DEFAULT_ROOM,
    outbox: new Map(),      // cid -> item (a send not acked yet)
  };

  // === storage: remembered rooms, read markers, the unsent draft ===

  const roomsKey = () => `warren.rooms.${st.user}`;
  const readKey = () => `warren.read.${st.user}`;
  const DRAFT_KEY = 'warren.draft';

  function load(store, key, fallback) {
    try { return JSON.parse(store.getItem(key)) ?? fallback; } catch (_) { return fallback; }
  }

  function save(store, key, value) {
    try { store.setItem(key, JSON.stringify(value)); } catch (_) { /* private mode or full */ }
  }

  function loadRooms() {
    let names = load(localStorage, roomsKey(), []);
    if (!Array.isArray(names)) names = [];
    names = names.filter((n) => typeof n === 'string' && ROOM_RE.test(n));
    if (!names.includes(DEFAULT_ROOM)) names.unshift(DEFAULT_ROOM);
    const read = load(localStorage, readKey(), {});
    names.forEach((n) => { room(n).readId = Number(read[n]) || 0; });
  }

  function saveRooms() {
    save(localStorage, roomsKey(), st.order);
    const read = {};
    st.order.forEach((n) => { read[n] = room(n).readId; });
    save(localStorage, readKey(), read);
  }

  /** The current room is on screen: everything in it counts as read. */
  function markRead(r) {
    if (r.name !== st.current || r.readId >= r.lastId) return;
    r.readId = r.lastId;
    saveRooms();
  }

  // === model ===

  function room(name) {
    let r = st.rooms.get(name);
    if (!r) {
      r = {
        name, items: [], ids: new Set(), lastId: 0, readId: 0, unread: 0, joined: false,
        members: new Set(), // who is in the room, when `listed`
        count: 0,           // how many: members.size when listed, else as `joined` said, moved by diffs
        listed: false,      // members is the whole list (false after a truncated `joined`, until `members`)
        asked: false,       // a `members` request is out for this join
      };
      st.rooms.set(name, r);
      st.order.push(name);
    }
    return r;
  }

  /** Index where an item belongs: by id ascending, items without an id (unsent) last. */
  function slot(r, item) {
    if (item.id == null) return r.items.length;
    let i = r.items.length;
    while (i > 0 && (r.items[i - 1].id == null || r.items[i - 1].id > item.id)) i--;
    return i;
  }

  function place(r, item) {
    const at = slot(r, item);
    r.items.splice(at, 0, item);
    if (r.items.length > MAX_KEEP && r.items[0] !== item) r.items.shift().el.remove();
    if (r.name === st.current) {
      const next = r.items[at + 1];
      const list = $('messages');
      const stick = atBottom(list);
      list.insertBefore(item.el, next ? next.el : null);
      if (stick || item.mine) list.scrollTop = list.scrollHeight;
    }
  }

  function unplace(r, item) {
    const at = r.items.indexOf(item);
    if (at >= 0) r.items.splice(at, 1);
    item.el.remove();
  }

  function newItem(fields) {
    const item = Object.assign({ id: null, ts: 0, cid: null, status: 'ok', mine: false }, fields);
    item.el = document.createElement('li');
    paint(item);
    return item;
  }

  // === rendering (textContent only) ===

  function paint(item) {
    const el = item.el;
    el.className = `msg ${item.status === 'ok' ? '' : item.status}${item.mine ? ' mine' : ''}`.trim();
    if (item.id != null) el.dataset.id = String(item.id); else delete el.dataset.id;
    const time = item.ts ? new Date(item.ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) : '';
    const state = { pending: 'sending…', failed: 'not sent' }[item.status] || '';
    el.replaceChildren(h('span', 'user', item.user), h('span', 'time', time),
      h('span', 'state', state), h('span', 'text', item.text));
  }

  /** A new element with a class and text (as textContent, never HTML). */
  function h(tag, cls, text) {
    const e = document.createElement(tag);
    e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  }

  function atBottom(el) { return el.scrollHeight - el.scrollTop - el.clientHeight < 40; }

  function renderRoom() {
    const r = room(st.current);
    r.unread = 0;
    markRead(r);
    $('room-name').textContent = r.name;
    const list = $('messages');
    list.replaceChildren(...r.items.map((i) => i.el));
    list.scrollTop = list.scrollHeight;
    renderRoomList();
    renderMembers();
  }

  /**
   * The current room's members, sorted, the user's own name marked, and
   * their count. A room too big for `joined` to list shows its count and
   * asks for the list, once.
   */
  function renderMembers() {
    const r = room(st.current);
    const names = r.listed ? [...r.members].sort() : [];
    const items = names.map((n) => h('li', n === st.user ? 'member me' : 'member', n));
    if (!r.listed && r.count > 0) items.push(h('li', 'member pending', 'loading the list…'));
    $('members').replaceChildren(...items);
    $('member-count').textContent = r.count ? String(r.count) : '';
    askMembers(r);
  }

  /** Asks for the whole list of the current room if `joined` did not carry it. */
  function askMembers(r) {
    if (r.name !== st.current || r.listed || r.asked || !r.joined) return;
    r.asked = true;
    transmit({ type: 'members', room: r.name });
  }

  function renderRoomList() {
    const lis = st.order.map((name) => {
      const r = room(name);
      const li = h('li', name === st.current ? 'active' : '');
      const open = h('button', 'open');
      open.type = 'button';
      open.append(h('span', 'name', `#${name}`));
      if (r.unread > 0) open.append(h('span', 'unread', String(r.unread)));
      open.addEventListener('click', () => switchRoom(name));
      li.append(open);
      if (name !== DEFAULT_ROOM) {
        const leave = h('button', 'leave', '×');
        leave.type = 'button';
        leave.title = `Leave #${name}`;
        leave.addEventListener('click', () => leaveRoom(name));
        li.append(leave);
      }
      return li;
    });
    $('rooms').replaceChildren(...lis);
  }

  function setConn(conn, label) {
    st.conn = conn;
    const el = $('conn-state');
    el.dataset.state = conn;
    el.textContent = label || conn;
  }

  function setIdentity(user, instance) {
    st.user = user;
    st.instance = instance;
    $('me').textContent = user;
    $('instance').textContent = instance;
  }

  function showStatus(text) {
    $('status').textContent = text;
    clearTimeout(st.timers.status);
    st.timers.status = setTimeout(() => { $('status').textContent = ''; }, STATUS_MS);
  }

  // === socket ===

  /** Sends a frame if the socket is open; anything that matters is resent after a reconnect. */
  function transmit(frame) {
    if (st.socket) st.socket.send(JSON.stringify(frame));
  }

  function openSocket() {
    st.socket = st.transport === 'sse' ? openStream() : openWebSocket();
    $('transport').textContent = st.transport === 'sse' ? 'SSE' : 'WebSocket';
    armDeadTimer();
    // Browsers answer the server's WebSocket pings without telling scripts,
    // and event streams' heartbeats are comments scripts never see, so a
    // quiet room would look dead: ping at the application level too.
    clearInterval(st.timers.ping);
    st.timers.ping = setInterval(() => transmit({ type: 'ping' }), PING_EVERY_MS);
  }

  function openWebSocket() {
    const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws';
    const ws = new WebSocket(url);
    let opened = false;
    const conn = {
      kind: 'ws',
      send: (text) => { if (ws.readyState === WebSocket.OPEN) ws.send(text); },
      close: () => {
        ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
        try { ws.close(); } catch (_) { /* already closing */ }
      },
    };
    ws.onopen = () => { opened = true; st.wsFailures = 0; };
    ws.onmessage = (ev) => { if (conn === st.socket) { armDeadTimer(); onFrame(ev.data); } };
    ws.onclose = ws.onerror = () => {
      if (conn !== st.socket) return;
      if (!opened) webSocketFailed();
      lost();
    };
    return conn;
  }

  /**
   * A WebSocket that never opened, though the session check before it went
   * through: something between us and the server breaks WebSockets. After
   * a few in a row, this tab uses the event stream instead.
   */
  function webSocketFailed() {
    st.wsFailures++;
    if (FORCED || st.wsFailures < WS_FAILS_BEFORE_SSE) return;
    st.transport = 'sse';
    save(sessionStorage, TRANSPORT_KEY, 'sse');
    st.attempt = 0; // the fallback is tried at once
  }

  /**
   * The event stream: frames arrive as events; the page's frames go out as
   * POSTs naming the stream, one after the other so that they keep their
   * order. A POST answered 429 goes again after `Retry-After`; one answered
   * 404 (the stream exists nowhere) or 401, or that fails, means the stream
   * is gone; the server's `close` event too.
   */
  function openStream() {
    const es = new EventSource('/sse');
    let token = null;
    let chain = Promise.resolve();
    const conn = {
      kind: 'sse',
      send: (text) => {
        if (!token) return;
        const url = `/sse?stream=${encodeURIComponent(token)}`;
        const post = () => fetch(url, {
          method: 'POST', credentials: 'same-origin', headers: { 'Content-Type': 'application/json' }, body: text,
        }).then((res) => {
          // Too many POSTs: wait as told and post it again, in its place.
          if (res.status !== 429) return res;
          const wait = Math.min(Number(res.headers.get('Retry-After')) || 1, 30);
          return new Promise((resolve) => { setTimeout(resolve, wait * 1000); }).then(post);
        });
        chain = chain.then(post).then((res) => {
          if ((res.status === 404 || res.status === 401 || res.status === 503) && conn === st.socket) lost();
        }, () => { if (conn === st.socket) lost(); });
      },
      close: () => {
        es.onmessage = es.onerror = null;
        es.removeEventListener('close', onClose);
        es.close();
      },
    };
    const onClose = () => { if (conn === st.socket) lost(); };
    es.addEventListener('close', onClose);
    es.onmessage = (ev) => {
      if (conn !== st.socket) return;
      armDeadTimer();
      if (!token) {
        try { token = JSON.parse(ev.data).stream || null; } catch (_) { /* onFrame ignores it too */ }
      }
      onFrame(ev.data);
    };
    // EventSource would retry by itself; the page reconnects its own way
    // (a session check first, backoff, the join's replay).
    es.onerror = () => { if (conn === st.socket) lost(); };
    return conn;
  }

  function armDeadTimer() {
    clearTimeout(st.timers.dead);
    st.timers.dead = setTimeout(() => lost(), DEAD_AFTER_MS);
  }

  /** The socket is gone (or must go): drop it and schedule a reconnect. */
  function lost(afterMs) {
    const conn = st.socket;
    st.socket = null;
    clearTimeout(st.timers.dead);
    clearInterval(st.timers.ping);
    if (conn) conn.close();
    st.rooms.forEach((r) => { r.joined = false; });
    scheduleReconnect(afterMs);
  }

  function scheduleReconnect(afterMs) {
    clearTimeout(st.timers.reconnect);
    let delay = afterMs;
    if (delay == null) {
      delay = Math.random() * Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** st.attempt);
      st.attempt++;
    }
    st.reconnectAt = Date.now() + delay;
    st.timers.reconnect = setTimeout(connect, delay);
    showCountdown();
  }

  function showCountdown() {
    clearTimeout(st.timers.countdown);
    const left = Math.max(0, Math.ceil((st.reconnectAt - Date.now()) / 1000));
    if (navigator.onLine === false) setConn('offline', `offline, retrying in ${left} s`);
    else setConn('reconnecting', `reconnecting in ${left} s`);
    if (left > 0) st.timers.countdown = setTimeout(showCountdown, 250);
  }

  /** Check the session, then open a socket; 401 goes to the login page. */
  async function connect() {
    if (st.connecting || st.socket) return;
    st.connecting = true;
    clearTimeout(st.timers.reconnect);
    clearTimeout(st.timers.countdown);
    setConn('connecting');
    try {
      const s = await checkSession();
      if (s === LOGIN) { location.href = '/'; return; } // the server shows the login page
      if (!s) { scheduleReconnect(); return; }
      if (st.user && s.user !== st.user) { location.reload(); return; } // another login in this browser
      const first = !st.user;
      setIdentity(s.user, s.instance);
      if (first) start();
      openSocket();
    } finally {
      st.connecting = false;
    }
  }

  /** GET /session: `{user, instance}`, LOGIN on 401, null on any other failure. */
  async function checkSession() {
    try {
      const res = await fetch('/session', { credentials: 'same-origin', cache: 'no-store' });
      if (res.status === 401) return LOGIN;
      if (!res.ok) return null;
      const s = await res.json();
      return s && typeof s.user === 'string' ? s : null;
    } catch (_) {
      return null; // network error or a body that is not JSON
    }
  }

  // === frames ===

  function onFrame(data) {
    let f;
    try { f = JSON.parse(data); } catch (_) { return; }
    if (!f || typeof f !== 'object') return;
    switch (f.type) {
      case 'welcome': return onWelcome(f);
      case 'joined': return onJoined(f);
      case 'members': return onMembers(f);
      case 'presence_diff': return onPresenceDiff(f);
      case 'message': return onMessage(f);
      case 'ack': return onAck(f);
      case 'error': return onError(f);
      case 'reconnect': st.notices++; return lost(Math.max(0, Number(f.after_ms) || 0));
      default: return undefined; // 'left', 'pong' and anything newer: nothing to do
    }
  }

  function onWelcome(f) {
    if (st.user && f.user !== st.user) { location.reload(); return; }
    st.attempt = 0;
    setIdentity(f.user, f.instance);
    setConn('connected');
    st.order.forEach((name) => sendJoin(room(name)));
  }

  function sendJoin(r) {
    const frame = { type: 'join', room: r.name };
    if (r.lastId > 0) frame.since = r.lastId;
    transmit(frame);
  }

  /** A room is (re)joined: now its unacked sends can go out again. */
  function onJoined(f) {
    const r = st.rooms.get(f.room);
    if (!r) return;
    r.joined = true;
    r.asked = false;
    if (Array.isArray(f.members)) {
      setMembers(r, f.members);
    } else { // a big room: only the count, until a `members` answer
      r.members = new Set();
      r.listed = false;
      r.count = Math.max(0, Number(f.count) || 0);
    }
    if (r.name === st.current) renderMembers();
    st.outbox.forEach((item) => { if (item.room === r.name) sendItem(item); });
  }

  /** The whole list of a room, as of this point in the stream. */
  function onMembers(f) {
    const r = st.rooms.get(f.room);
    if (!r || !Array.isArray(f.members)) return;
    setMembers(r, f.members);
    if (r.name === st.current) renderMembers();
  }

  function setMembers(r, names) {
    r.members = new Set(names.filter((m) => typeof m === 'string'));
    r.listed = true;
    r.count = r.members.size;
  }

  /**
   * What changed in a room over one batch: users whose first socket joined
   * it, users whose last socket left it. A join of a member or a leave of a
   * non-member (a change told again after the server lost Redis) is a no-op.
   */
  function onPresenceDiff(f) {
    const r = st.rooms.get(f.room);
    if (!r) return;
    const names = (list) => (Array.isArray(list) ? list.filter((m) => typeof m === 'string') : []);
    const joins = names(f.joins);
    const leaves = names(f.leaves);
    if (r.listed) {
      joins.forEach((m) => r.members.add(m));
      leaves.forEach((m) => r.members.delete(m));
      r.count = r.members.size;
    } else { // the `members` answer will include these; keep the count moving meanwhile
      r.count = Math.max(0, r.count + joins.length - leaves.length);
    }
    if (r.name === st.current) renderMembers();
  }

  function onMessage(f) {
    if (typeof f.room !== 'string' || typeof f.id !== 'number') return;
    const r = st.rooms.get(f.room);
    if (!r) return; // a room we left
    r.lastId = Math.max(r.lastId, f.id);
    if (r.ids.has(f.id)) return;
    r.ids.add(f.id);
    const own = f.cid && f.user === st.user ? st.outbox.get(f.cid) : null;
    if (own) { // our own send came back before its ack: it has an id now, still pending
      unplace(r, own);
      Object.assign(own, { id: f.id, ts: f.ts });
      paint(own);
      place(r, own);
    } else {
      place(r, newItem({ id: f.id, user: f.user, text: f.text, ts: f.ts, mine: f.user === st.user }));
    }
    if (r.name === st.current) markRead(r);
    else if (!own && f.id > r.readId) { r.unread++; renderRoomList(); }
  }

  function onAck(f) {
    const item = st.outbox.get(f.cid);
    if (!item || typeof f.id !== 'number') return;
    st.outbox.delete(f.cid);
    clearTimeout(item.retry);
    const r = room(item.room);
    if (item.id == null && r.ids.has(f.id)) { unplace(r, item); return; } // already shown
    const moved = item.id !== f.id;
    if (moved) unplace(r, item);
    Object.assign(item, { id: f.id, status: 'ok', ts: item.ts || Date.now() });
    r.ids.add(f.id);
    paint(item);
    if (moved) place(r, item);
  }

  function onError(f) {
    showStatus(f.message ? `${f.code}: ${f.message}` : String(f.code));
    if (!f.cid && f.room) return retryJoin(f);
    if (!f.cid) retryMembers(f);
    const item = f.cid ? st.outbox.get(f.cid) : null;
    if (!item) return;
    if (RETRYABLE.has(f.code)) { // stays pending: retry soon, and after any reconnect
      clearTimeout(item.retry);
      item.retry = setTimeout(() => sendItem(item), RETRY_SEND_MS * (0.5 + Math.random()));
      return;
    }
    st.outbox.delete(f.cid);
    item.status = 'failed';
    paint(item);
  }

  /**
   * A refused join names its room: a retryable refusal (no bridge took the
   * room yet) is asked again after the wait it names, while the socket is
   * the same and the room still not joined.
   */
  function retryJoin(f) {
    const r = st.rooms.get(f.room);
    if (!r || r.joined || f.code !== 'unavailable') return;
    const socket = st.socket;
    const wait = Math.max(JOIN_RETRY_MS, Number(f.retry_after_ms) || 0);
    setTimeout(() => { if (st.socket === socket && !r.joined) sendJoin(r); }, wait * (0.5 + Math.random()));
  }

  /** An error without a cid may refuse a `members` request: ask again later. */
  function retryMembers(f) {
    if (f.code !== 'rate_limited' && f.code !== 'unavailable') return;
    const r = room(st.current);
    if (!r.asked || r.listed) return;
    r.asked = false;
    const wait = Math.max(MEMBERS_RETRY_MS, Number(f.retry_after_ms) || 0);
    setTimeout(() => askMembers(r), wait);
  }

  // === user actions ===

  function newCid() {
    if (window.crypto && crypto.randomUUID) return `c-${crypto.randomUUID()}`;
    return `c-${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
  }

  function sendItem(item) {
    if (!st.outbox.has(item.cid) || !room(item.room).joined) return;
    transmit({ type: 'send', room: item.room, text: item.text, cid: item.cid });
  }

  function send() {
    if (!st.user) return;
    const box = $('send-text');
    const text = box.value;
    if (!text.trim()) return;
    if (text.length > MAX_TEXT) { showStatus(`Messages are at most ${MAX_TEXT} characters.`); return; }
    const item = newItem({ cid: newCid(), room: st.current, user: st.user, text, status: 'pending', mine: true });
    st.outbox.set(item.cid, item);
    place(room(st.current), item);
    sendItem(item); // if the socket is down it goes out after the re-join
    box.value = '';
    saveDraft();
  }

  function joinRoom() {
    if (!st.user) return;
    const input = $('room-input');
    const name = input.value.trim().toLowerCase().replace(/^#/, '');
    if (!ROOM_RE.test(name)) { showStatus('Room names are 1 to 64 of a-z, 0-9, "_" or "-".'); return; }
    input.value = '';
    const known = st.rooms.has(name);
    const r = room(name);
    if (!known) { saveRooms(); sendJoin(r); }
    switchRoom(name);
  }

  function leaveRoom(name) {
    if (name === DEFAULT_ROOM) return;
    transmit({ type: 'leave', room: name });
    st.rooms.delete(name);
    st.order = st.order.filter((n) => n !== name);
    st.outbox.forEach((item, cid) => { if (item.room === name) st.outbox.delete(cid); });
    saveRooms();
    if (st.current === name) st.current = DEFAULT_ROOM;
    renderRoom();
  }

  function switchRoom(name) {
    st.current = name;
    renderRoom();
    $('send-text').focus();
  }

  function saveDraft() { save(sessionStorage, DRAFT_KEY, $('send-text').value); }

  function bindUi() {
    const box = $('send-text');
    box.value = String(load(sessionStorage, DRAFT_KEY, ''));
    box.addEventListener('input', saveDraft);
    box.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
    });
    $('send-form').addEventListener('submit', (e) => { e.preventDefault(); send(); });
    $('join-form').addEventListener('submit', (e) => { e.preventDefault(); joinRoom(); });
    window.addEventListener('online', () => { if (st.conn === 'offline') connect(); });
    window.addEventListener('offline', () => { if (!st.socket) showCountdown(); });
  }

  /** Once the user is known: rooms from storage, first render. */
  function start() {
    loadRooms();
    renderRoom();
  }

  // Read-only hook for the end-to-end tests.
  window.warren = {
    state: () => st.conn,
    instance: () => st.instance,
    transport: () => (st.socket ? st.socket.kind : null),
    notices: () => st.notices,
    messages: (name) => {
      const r = st.rooms.get(name || st.current);
      return r ? r.items.filter((i) => i.id != null).map((i) => ({ id: i.id, user: i.user, text: i.text })) : [];
    },
    members: (name) => {
      const r = st.rooms.get(name || st.current);
      return r ? [...r.members].sort() : [];
    },
    memberCount: (name) => {
      const r = st.rooms.get(name || st.current);
      return r ? r.count : 0;
    },
  };

  bindUi();
  connect();
})();
