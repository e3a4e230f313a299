"""Events on the embedded backends: POST /v1/events (and /events, and
/v1/events/batch) answer 202 once the local queue has the event; flushers
store them in user_interactions by size or age; every field problem is
named; ids make redelivery and resends harmless; failing rows are retried and
then dead-lettered, and a re-drive stores them; kill -9 loses no answered
event and stores none twice."""
import json
import signal
import time
import uuid

import pytest

from conftest import error_shape, uuid_like, wait_for
from eventload import EventSender

FAST = {"ESTEIRA_EVENTS_FLUSH_MS": "200ms"}


def ev(**kw):
    e = {"userId": "u1", "eventType": "view", "sessionId": "s1"}
    e.update(kw)
    return e


def stored(s):
    return int(s.sql1("SELECT count(*) FROM user_interactions") or 0)


def wait_stored(s, n, timeout=15):
    wait_for(lambda: stored(s) >= n, timeout=timeout, what=f"{n} events stored")
    return stored(s)


def test_one_event_is_accepted_then_stored(start_server):
    s = start_server(env=FAST)
    r = s.post("/v1/events", json=ev(eventData={"page": "/home", "n": [1, 2]},
                                     occurredAt="2026-11-20T10:00:00.250Z"))
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "accepted" and body["message"] == "Event sent to processing"
    assert uuid_like(body["id"])
    r2 = s.post("/events", json=ev(userId="u2", eventType="purchase"))  # the seed's path
    assert r2.status_code == 202, r2.text
    wait_stored(s, 2)
    items = s.get("/v1/events?userId=u1").json()["items"]
    assert len(items) == 1
    got = items[0]
    assert got["id"] == body["id"] and got["eventType"] == "view" and got["sessionId"] == "s1"
    assert got["eventData"] == {"page": "/home", "n": [1, 2]}
    assert got["occurredAt"] == "2026-11-20T10:00:00.250Z"
    assert got["receivedAt"] > got["occurredAt"] and got["processed"] is True


def test_every_problem_is_named(start_server):
    s = start_server(env={**FAST, "ESTEIRA_EVENTS_DATA_MAX": "64", "ESTEIRA_EVENTS_FIELD_MAX": "8"})
    r = s.post("/v1/events", json={"eventType": "teleport", "eventData": [1], "extra": True,
                                    "userId": 7, "eventId": "nope", "occurredAt": "yesterday"})
    body = error_shape(r, 400, "validation_failed")
    problems = {d["field"]: d["problem"] for d in body["error"]["details"]}
    assert problems["userId"] == "must be a string"
    assert problems["sessionId"] == "required"
    assert problems["eventType"].startswith("unknown event type (one of: view, purchase")
    assert problems["eventData"] == "must be an object"
    assert problems["extra"] == "unknown field"
    assert problems["eventId"] == "must be a UUID"
    assert "RFC 3339" in problems["occurredAt"]
    r = s.post("/v1/events", json=ev(eventData={"blob": "x" * 100}, userId="123456789"))
    problems = {d["field"]: d["problem"] for d in error_shape(r, 400)["error"]["details"]}
    assert problems == {"eventData": "larger than 64 bytes", "userId": "longer than 8 characters"}
    error_shape(s.post("/v1/events", data='{"userId": "u1",', headers={
        "Content-Type": "application/json"}), 400, "invalid_json")
    error_shape(s.post("/v1/events", data="userId=u1", headers={
        "Content-Type": "application/x-www-form-urlencoded"}), 415)
    error_shape(s.post("/v1/events", data=b"{" + b" " * (2 << 20) + b"}", headers={
        "Content-Type": "application/json"}), 413)
    time.sleep(0.5)
    assert stored(s) == 0  # nothing refused was queued


def test_batches_json_and_ndjson(start_server):
    s = start_server(env={**FAST, "ESTEIRA_EVENTS_REQUEST_MAX": "10"})
    batch = [ev(userId="a"), ev(eventType="zzz"), ev(userId="b", eventType="login"), "text", ev()]
    r = s.post("/v1/events/batch", json=batch)
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == 3
    rej = r.json()["rejected"]
    assert [x["index"] for x in rej] == [1, 3]
    assert rej[0]["errors"][0]["field"] == "eventType"
    nd = "\n".join([json.dumps(ev(userId="c")), "", "{broken", json.dumps(ev(userId="d")), ""])
    r = s.post("/v1/events/batch", data=nd, headers={"Content-Type": "application/x-ndjson"})
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == 2 and r.json()["rejected"][0]["index"] == 1
    assert r.json()["rejected"][0]["errors"][0]["problem"].startswith("not JSON")
    wait_stored(s, 5)
    time.sleep(0.5)
    assert stored(s) == 5
    error_shape(s.post("/v1/events/batch", json=[]), 400)
    error_shape(s.post("/v1/events/batch", json=[ev()] * 11), 413, "payload_too_large")
    body = error_shape(s.post("/v1/events/batch", json=[ev(userId=None), {}]), 400)
    fields = [d["field"] for d in body["error"]["details"]]
    assert "[0].userId" in fields and "[1].sessionId" in fields
    error_shape(s.post("/v1/events/batch", json={"userId": "x"}), 400)


def test_flush_by_size_and_by_age(start_server):
    s = start_server(env={"ESTEIRA_EVENTS_BATCH_MAX": "20", "ESTEIRA_EVENTS_FLUSH_MS": "60s"})
    for i in range(60):
        assert s.post("/v1/events", json=ev(userId=f"u{i}")).status_code == 202
    # 60 events in 20-event flushes: stored long before the 60 s age
    wait_stored(s, 60, timeout=10)
    st = s.get("/v1/events/stats").json()
    assert st["total"] == 60 and st["batches"]["events"] == 60
    assert all(x["events"] >= 20 for x in s.log_lines() if x.get("msg") == "flush")
    s.stop()

    s = start_server(env={"ESTEIRA_EVENTS_BATCH_MAX": "1000", "ESTEIRA_EVENTS_FLUSH_MS": "1500ms"})
    t0 = time.monotonic()
    for i in range(5):
        assert s.post("/v1/events", json=ev(userId=f"u{i}")).status_code == 202
    time.sleep(0.5)
    assert stored(s) == 0  # fewer than the batch, younger than the age: still buffered
    wait_stored(s, 5, timeout=10)
    assert time.monotonic() - t0 >= 1.4
    flush = [x for x in s.log_lines() if x.get("msg") == "flush"]
    assert flush[-1]["events"] == 5 and flush[-1]["oldestAgeMs"] >= 1400
    st = s.get("/v1/events/stats").json()
    assert st["flushLag"]["maxMs"] >= 1400 and st["batches"]["flushes"] == 1


def test_same_id_is_stored_once(start_server):
    s = start_server(env=FAST)
    eid = str(uuid.uuid4())
    for _ in range(3):
        r = s.post("/v1/events", json=ev(eventId=eid.upper()))
        assert r.status_code == 202 and r.json()["id"] == eid
    wait_stored(s, 1)
    time.sleep(1)
    assert stored(s) == 1
    st = s.get("/v1/events/stats").json()
    assert st["total"] == 1 and st["batches"]["events"] == 3 and st["batches"]["inserted"] == 1
    assert "esteira_events_duplicate_total 2" in s.get("/metrics").text


def test_query_filters_cursor_and_stats(start_server):
    s = start_server(env=FAST)
    batch = []
    for i in range(30):
        batch.append(ev(userId=f"u{i % 3}", eventType=["view", "login", "search"][i % 3],
                        occurredAt=1_700_000_000_000 + i * 1000))
    assert s.post("/v1/events/batch", json=batch).json()["accepted"] == 30
    wait_stored(s, 30)
    seen, cursor = [], None
    while True:
        q = "/v1/events?limit=7" + (f"&cursor={cursor}" if cursor else "")
        page = s.get(q).json()
        seen += page["items"]
        cursor = page["nextCursor"]
        if not cursor:
            break
    assert len(seen) == 30 and len({x["id"] for x in seen}) == 30
    times = [x["occurredAt"] for x in seen]
    assert times == sorted(times, reverse=True)
    u1 = s.get("/v1/events?userId=u1&eventType=login").json()["items"]
    assert len(u1) == 10 and {x["userId"] for x in u1} == {"u1"}
    window = s.get("/v1/events?from=1700000005000&to=2023-11-14T22:13:30Z").json()["items"]
    assert len(window) == 5  # [5 s, 10 s)
    error_shape(s.get("/v1/events?cursor=garbage"), 400)
    error_shape(s.get("/v1/events?from=soon"), 400)
    st = s.get("/v1/events/stats").json()
    assert st["total"] == 30 and st["byType"] == {"login": 10, "search": 10, "view": 10}
    assert "pending" in st and st["batches"]["flushes"] >= 1


POISON_SQLITE = ("CREATE TRIGGER poison BEFORE INSERT ON user_interactions "
                 "WHEN NEW.user_id = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned row'); END")


def test_failing_rows_are_retried_then_dead_and_redriven(start_server):
    s = start_server(env={**FAST, "ESTEIRA_JOB_KINDS": "events:attempts=3,base=100ms,cap=300ms"})
    s.sql(POISON_SQLITE)
    r = s.post("/v1/events/batch", json=[ev(userId="good1"), ev(userId="poison"),
                                         ev(userId="good2")])
    assert r.json()["accepted"] == 3
    # the good rows of the same message are stored at once
    wait_stored(s, 2)
    dead = wait_for(lambda: s.get("/v1/dlq?kind=events").json()["items"], timeout=20,
                    what="the poisoned event dead-lettered")
    assert len(dead) == 1
    job = dead[0]
    assert job["status"] == "dead" and job["attempts"] == 3 and job["errorType"] == "store"
    assert job["payload"]["count"] == 1 and "poison" in job["payload"]["rows"]
    log = s.log_text()
    assert "go back for attempt 2 of 3" in log and "go back for attempt 3 of 3" in log
    assert stored(s) == 2
    s.sql("DROP TRIGGER poison")
    assert s.post(f"/v1/dlq/{job['id']}/retry").status_code in (200, 202)
    s.wait_job(job["id"])
    assert stored(s) == 3
    st = s.get("/v1/events/stats").json()
    assert st["total"] == 3 and st["byType"] == {"view": 3}


def test_kill9_loses_no_answered_event(start_server):
    s = start_server(env={**FAST, "ESTEIRA_EVENTS_BATCH_MAX": "100"})
    sender = EventSender(s.url, 3000, threads=8).start()
    wait_for(lambda: sender.count >= 1000, timeout=60, what="1000 events accepted")
    s.kill()  # SIGKILL: buffered, unflushed and in-flight events of every kind
    s.start()
    sender.join()
    assert not sender.errors, sender.errors[:5]
    wait_stored(s, len(sender.accepted), timeout=30)
    time.sleep(1)
    ids = {row[0] for row in s.sql("SELECT id FROM user_interactions")}
    assert ids == sender.accepted
    assert stored(s) == 3000 and int(s.sql1("SELECT sum(n) FROM event_counts")) == 3000


def test_sigterm_stores_what_was_buffered(start_server):
    s = start_server(env={"ESTEIRA_EVENTS_FLUSH_MS": "1h", "ESTEIRA_EVENTS_BATCH_MAX": "100000"})
    ids = [s.post("/v1/events", json=ev(userId=f"u{i}")).json()["id"] for i in range(25)]
    time.sleep(0.3)
    assert stored(s) == 0
    s.stop(sig=signal.SIGTERM)
    assert {row[0] for row in s.sql("SELECT id FROM user_interactions")} == set(ids)
