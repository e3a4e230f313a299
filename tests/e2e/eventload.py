"""A load of events for end-to-end tests: threads POST /v1/events, each event
with its own eventId, and every failure (503, refused or cut connections while
a process is killed or a backend is away) is sent again with the same id
until it is answered 202.  At the end, exactly the ids in `accepted` must be
stored, each once."""
import threading
import time
import uuid

import requests

TYPES = ["view", "purchase", "add_to_cart", "remove_from_cart", "login", "logout", "search"]


class EventSender:
    def __init__(self, url, n, threads=8, path="/v1/events"):
        self.url, self.n, self.path = url, n, path
        self.accepted = set()
        self.by_type = {}
        self.retries = 0
        self.lock = threading.Lock()
        self.next = 0
        self.errors = []
        self.workers = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self):
        for t in self.workers:
            t.start()
        return self

    def _take(self):
        with self.lock:
            if self.next >= self.n:
                return None
            self.next += 1
            return self.next - 1

    def _run(self):
        s = requests.Session()
        while (i := self._take()) is not None:
            ev = {"eventId": str(uuid.uuid4()), "userId": f"user-{i % 97}",
                  "eventType": TYPES[i % len(TYPES)], "sessionId": f"s-{i % 13}",
                  "eventData": {"i": i}}
            deadline = time.monotonic() + 300
            while True:
                try:
                    r = s.post(self.url + self.path, json=ev, timeout=30)
                    if r.status_code == 202:
                        assert r.json()["id"] == ev["eventId"]
                        break
                    if r.status_code not in (503,):
                        self.errors.append((i, r.status_code, r.text[:200]))
                except requests.RequestException:
                    s = requests.Session()
                with self.lock:
                    self.retries += 1
                if time.monotonic() > deadline:
                    self.errors.append((i, "gave up", ""))
                    break
                time.sleep(0.05)
            with self.lock:
                self.accepted.add(ev["eventId"])
                self.by_type[ev["eventType"]] = self.by_type.get(ev["eventType"], 0) + 1

    @property
    def count(self):
        with self.lock:
            return len(self.accepted)

    def join(self, timeout=600):
        for t in self.workers:
            t.join(timeout)
        return self
