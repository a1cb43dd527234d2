// The poll-watcher app's service worker: keeps the app shell and the polling place's
// remaining list so that the app opens and searches with no network.
'use strict';
const CACHE = 'narwhal-watch-v1';
const SHELL = [
  '/watch/',
  '/watch/app.js',
  '/watch/app.css',
  '/watch/manifest.webmanifest',
  '/watch/icon.svg',
];
const LIST = '/api/v1/turnout/list';

self.addEventListener('install', (e) => {
  e.waitUntil(caches.open(CACHE).then((c) => c.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (e) => {
  e.waitUntil(
    caches.keys()
      .then((keys) => Promise.all(keys.filter((k) => k !== CACHE).map((k) => caches.delete(k))))
      .then(() => self.clients.claim())
  );
});

// Network first, so a watcher always sees the newest list and app when online; the
// cached copy when the network fails. Only successful answers are kept.
async function networkFirst(req, key) {
  const cache = await caches.open(CACHE);
  try {
    const res = await fetch(req);
    if (res.ok) await cache.put(key, res.clone());
    return res;
  } catch (err) {
    const hit = await cache.match(key, { ignoreSearch: key === LIST });
    if (hit) return hit;
    throw err;
  }
}

self.addEventListener('fetch', (e) => {
  const req = e.request;
  if (req.method !== 'GET') return;
  const url = new URL(req.url);
  if (url.origin !== self.location.origin) return;
  if (url.pathname === LIST) {
    e.respondWith(networkFirst(req, LIST));
  } else if (url.pathname === '/watch' || url.pathname.startsWith('/watch/')) {
    const key = url.pathname === '/watch' ? '/watch/' : url.pathname;
    e.respondWith(networkFirst(req, key));
  }
});
