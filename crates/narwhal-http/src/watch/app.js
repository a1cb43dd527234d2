// The poll-watcher app. Reports go to IndexedDB first, then to the server in batches
// with retry and backoff; the queue survives reloads, crashes and restarts.
'use strict';
(function () {
  const API = '/api/v1/turnout';
  const BATCH = 100;
  const MAX_BACKOFF_MS = 30000;
  const $ = (id) => document.getElementById(id);

  // ---- IndexedDB: the durable queue of reports --------------------------------
  // Store "reports", key `k` (report id, plus ":undo" for an undo):
  // {k, report_id, voter_code, person_id, name, undo, voted_at, state, message}
  // where state is "pending", "synced" or "rejected".
  let dbp = null;
  function db() {
    if (!dbp) {
      dbp = new Promise((resolve, reject) => {
        const r = indexedDB.open('narwhal-watch', 1);
        r.onupgradeneeded = () => r.result.createObjectStore('reports', { keyPath: 'k' });
        r.onsuccess = () => resolve(r.result);
        r.onerror = () => reject(r.error);
      });
    }
    return dbp;
  }
  async function tx(mode, fn) {
    const d = await db();
    return new Promise((resolve, reject) => {
      const t = d.transaction('reports', mode, { durability: 'strict' });
      let out;
      t.oncomplete = () => resolve(out);
      t.onerror = () => reject(t.error);
      t.onabort = () => reject(t.error);
      const req = fn(t.objectStore('reports'));
      if (req) req.onsuccess = () => { out = req.result; };
    });
  }
  const allReports = () => tx('readonly', (s) => s.getAll());
  const putReports = (rows) => tx('readwrite', (s) => { rows.forEach((r) => s.put(r)); });

  function newId() {
    if (self.crypto && crypto.randomUUID) return crypto.randomUUID();
    const b = new Uint8Array(16);
    crypto.getRandomValues(b);
    return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  }

  // ---- State ------------------------------------------------------------------
  let voters = [];        // the remaining list as last fetched
  let reports = [];       // every report on this device
  let backoff = 0;        // ms; 0 when the last sync worked
  let timer = null;
  let syncing = false;

  function save(key, v) { try { localStorage.setItem(key, JSON.stringify(v)); } catch (e) { /* full */ } }
  function load(key) { try { return JSON.parse(localStorage.getItem(key) || 'null'); } catch (e) { return null; } }

  // ---- Rendering ----------------------------------------------------------------
  function el(tag, props, ...kids) {
    const e = document.createElement(tag);
    Object.assign(e, props || {});
    kids.forEach((k) => e.append(k));
    return e;
  }
  const fullName = (v) => [v.first_name, v.last_name].filter(Boolean).join(' ') || '(no name)';
  function activeMarks() {
    // A mark is active unless an undo for the same report id exists.
    const undone = new Set(reports.filter((r) => r.undo).map((r) => r.report_id));
    return reports.filter((r) => !r.undo && !undone.has(r.report_id));
  }
  function render() {
    const pending = reports.filter((r) => r.state === 'pending').length;
    $('pending').textContent = pending + ' not synced';
    $('pending').className = pending ? 'pending' : '';
    const marks = activeMarks();
    const markedIds = new Set(marks.map((r) => r.person_id));
    const q = $('q').value.trim().toLowerCase();
    const qDigits = q.replace(/[\s-]/g, '');
    const shown = voters.filter((v) => !markedIds.has(v.person_id)).filter((v) =>
      !q || fullName(v).toLowerCase().includes(q) || (qDigits && v.voter_code.includes(qDigits)));
    $('remaining-count').textContent = '(' + voters.filter((v) => !markedIds.has(v.person_id)).length + ')';
    $('voters').replaceChildren(...shown.slice(0, 200).map((v) =>
      el('li', { id: 'voter-' + v.person_id },
        el('span', {}, fullName(v), el('small', {}, v.voter_code + (v.address ? ' · ' + v.address : ''))),
        el('button', { id: 'mark-' + v.person_id, type: 'button', textContent: 'Voted', onclick: () => mark(v) }))));
    $('marked').replaceChildren(...marks.slice().reverse().map((r) =>
      el('li', { id: 'marked-' + r.person_id },
        el('span', {}, r.name, el('small', {}, r.voter_code + ' · ' + (r.state === 'pending' ? 'not synced yet' : r.state === 'synced' ? 'synced' : 'rejected: ' + (r.message || '')))),
        el('button', { id: 'undo-' + r.person_id, type: 'button', className: 'undo', textContent: 'Undo', onclick: () => undo(r) }))));
    const bad = reports.filter((r) => r.state === 'rejected');
    $('problems').textContent = bad.length ? bad.length + ' report(s) were refused; see "rejected" above.' : '';
  }
  function setNet(text) { $('net').textContent = text; }

  // ---- Actions ------------------------------------------------------------------
  async function mark(v) {
    const id = newId();
    const r = { k: id, report_id: id, voter_code: v.voter_code, person_id: v.person_id, name: fullName(v),
      undo: false, voted_at: Date.now(), state: 'pending' };
    await putReports([r]);
    reports.push(r);
    render();
    syncSoon(0);
  }
  async function undo(m) {
    if (!voters.some((v) => v.person_id === m.person_id)) {
      voters.push({ person_id: m.person_id, voter_code: m.voter_code, first_name: m.name, last_name: null });
    }
    const r = Object.assign({}, m, { k: m.report_id + ':undo', undo: true, voted_at: Date.now(), state: 'pending', message: undefined });
    await putReports([r]);
    reports.push(r);
    render();
    syncSoon(0);
  }

  // ---- Sync -----------------------------------------------------------------------
  function syncSoon(ms) {
    if (timer) clearTimeout(timer);
    timer = setTimeout(sync, ms);
  }
  async function sync() {
    timer = null;
    if (syncing) return;
    const batch = reports.filter((r) => r.state === 'pending').slice(0, BATCH);
    if (!batch.length) { backoff = 0; return; }
    syncing = true;
    try {
      const res = await fetch(API + '/reports', {
        method: 'POST', credentials: 'same-origin',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ channel: 'app', reports: batch.map((r) => ({
          report_id: r.report_id, voter_code: r.voter_code, voted_at: r.voted_at, undo: r.undo })) }),
      });
      if (res.status === 401 || res.status === 403) {
        setNet('logged out: log in again to send ' + batch.length + ' saved report(s)');
        showLogin();
        return;
      }
      if (!res.ok) throw new Error('server answered ' + res.status);
      const body = await res.json();
      const byKey = new Map(batch.map((r) => [r.report_id + (r.undo ? ':undo' : ''), r]));
      const done = [];
      body.results.forEach((x, i) => {
        const r = batch[i] || byKey.get(x.report_id);
        if (!r) return;
        r.state = x.outcome === 'rejected' ? 'rejected' : 'synced';
        r.message = x.message;
        done.push(r);
      });
      await putReports(done);
      backoff = 0;
      setNet('online');
      render();
      if (reports.some((r) => r.state === 'pending')) syncSoon(0);
    } catch (e) {
      backoff = Math.min(MAX_BACKOFF_MS, backoff ? backoff * 2 : 1000);
      const wait = backoff / 2 + Math.random() * backoff / 2;
      setNet('offline: retrying in ' + Math.round(wait / 1000) + ' s');
      syncSoon(wait);
    } finally {
      syncing = false;
    }
  }

  // ---- Login and loading --------------------------------------------------------------
  function showLogin() { $('login').hidden = false; $('app').hidden = true; }
  function showApp() { $('login').hidden = true; $('app').hidden = false; }

  async function api(path, opts) {
    const res = await fetch(API + path, Object.assign({ credentials: 'same-origin' }, opts || {}));
    let body = null;
    try { body = await res.json(); } catch (e) { /* not JSON */ }
    return { status: res.status, body };
  }

  async function login(body) {
    $('login-error').textContent = '';
    try {
      const r = await api('/sessions', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      if (r.status !== 201) {
        $('login-error').textContent = (r.body && r.body.error && r.body.error.message) || 'Login failed (' + r.status + ').';
        showLogin();
        return false;
      }
      return true;
    } catch (e) {
      $('login-error').textContent = 'No connection: try again when you have signal.';
      showLogin();
      return false;
    }
  }

  async function loadList() {
    const all = [];
    let after = null;
    for (;;) {
      const r = await api('/list?limit=5000' + (after ? '&after=' + after : ''));
      if (r.status !== 200) return r.status;
      all.push(...r.body.voters);
      after = r.body.next_after;
      if (!after) break;
    }
    voters = all;
    save('nw.voters', voters);
    return 200;
  }

  async function start() {
    reports = await allReports();
    voters = load('nw.voters') || [];
    render();
    const m = location.hash.match(/[#&]t=([^&]+)/);
    if (m) {
      history.replaceState(null, '', location.pathname);
      await login({ token: decodeURIComponent(m[1]) });
    }
    try {
      const me = await api('/me');
      if (me.status === 200) {
        save('nw.me', me.body);
        $('readiness').textContent = me.body.message;
        showApp();
        await loadList();
        setNet('online');
      } else if (me.status === 401 || me.status === 403) {
        if (me.body && me.body.error) $('login-error').textContent = me.body.error.code === 'login_expired' ? me.body.error.message : '';
        showLogin();
      } else {
        throw new Error('server answered ' + me.status);
      }
    } catch (e) {
      // Offline: work from what this device kept.
      const me = load('nw.me');
      if (me) { $('readiness').textContent = me.message; showApp(); } else { showLogin(); }
      try { await loadList(); } catch (e2) { /* the worker had no copy either */ }
      setNet('offline');
    }
    render();
    syncSoon(0);
  }

  $('login-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    if (await login({ username: $('username').value, pin: $('pin').value })) start();
  });
  $('q').addEventListener('input', render);
  window.addEventListener('online', () => { backoff = 0; syncSoon(0); });
  document.addEventListener('visibilitychange', () => { if (!document.hidden) syncSoon(0); });

  if ('serviceWorker' in navigator) {
    navigator.serviceWorker.register('/watch/sw.js', { scope: '/watch/' }).catch(() => {});
    const ready = () => { $('sw').textContent = 'works offline'; };
    if (navigator.serviceWorker.controller) ready();
    navigator.serviceWorker.addEventListener('controllerchange', () => {
      ready();
      // Fetch the list again through the worker so that it keeps a copy.
      loadList().then(render).catch(() => {});
    });
  }
  start();
})();
