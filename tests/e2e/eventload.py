"""A load of events for end-to-end tests: threads POST /v1/events, each event
with its own eventId, and every failure (503, refused or cut connections while
a process is killed or a backend is away) is sent again with the same id
until it is answered 202.  At the end, exactly the ids in `accepted` must be
stored, each once."""
import uuid

from load import RetryingLoad

TYPES = ["view", "purchase", "add_to_cart", "remove_from_cart", "login", "logout", "search"]


class EventSender(RetryingLoad):
    pause = 0.05

    def __init__(self, url, n, threads=8, path="/v1/events"):
        super().__init__(url, n, threads)
        self.path = path
        self.accepted = set()
        self.by_type = {}

    def make(self, i):
        return {"eventId": str(uuid.uuid4()), "userId": f"user-{i % 97}",
                "eventType": TYPES[i % len(TYPES)], "sessionId": f"s-{i % 13}",
                "eventData": {"i": i}}

    def attempt(self, session, ev):
        r = session.post(self.url + self.path, json=ev, timeout=30)
        if r.status_code == 202:
            assert r.json()["id"] == ev["eventId"]
            return True
        if r.status_code != 503:
            self.errors.append((ev["eventId"], r.status_code, r.text[:200]))
        return False

    def accepted_item(self, ev):
        self.accepted.add(ev["eventId"])
        self.by_type[ev["eventType"]] = self.by_type.get(ev["eventType"], 0) + 1

    @property
    def count(self):
        with self.lock:
            return len(self.accepted)
