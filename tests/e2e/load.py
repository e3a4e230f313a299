"""A load that retries until accepted: n items sent from several threads,
each item tried again (after a short pause) after any refusal or broken
connection - a 503 while a backend restarts, a process killed - until it is
accepted or gives up after five minutes.  Subclasses say how to make an item
(make), how one try goes (attempt: True = accepted) and what an accepted
item leaves behind (accepted_item)."""
import threading
import time

import requests


class RetryingLoad:
    pause = 0.2  # seconds between two tries of one item

    def __init__(self, url, n, threads):
        self.url, self.n = url, n
        self.retries = 0
        self.lock = threading.Lock()
        self.next = 0
        self.errors = []
        self.workers = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def make(self, i):
        return i

    def attempt(self, session, item):
        raise NotImplementedError

    def accepted_item(self, item):
        pass

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
            item = self.make(i)
            deadline = time.monotonic() + 300
            while True:
                try:
                    if self.attempt(s, item):
                        break
                except requests.RequestException:
                    s = requests.Session()
                with self.lock:
                    self.retries += 1
                if time.monotonic() > deadline:
                    self.errors.append((i, "gave up"))
                    break
                time.sleep(self.pause)
            with self.lock:
                self.accepted_item(item)

    def join(self, timeout=600):
        for t in self.workers:
            t.join(timeout)
        return self
