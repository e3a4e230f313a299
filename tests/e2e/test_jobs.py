"""Jobs over HTTP: run, idempotency, retries with backoff, dead letters,
cancel, listing, validation.  The noop kind (src/jobs/kinds.c) records one row
in noop_effects per job, in the transaction that marks the job done."""

import json
import threading
import time
from datetime import datetime

from conftest import error_shape, uuid_like, wait_for


def ms(iso):
    return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp() * 1000.0


def effects(server, job_id=None):
    if job_id is None:
        return int(server.sql1("SELECT count(*) FROM noop_effects"))
    return int(server.sql1(f"SELECT count(*) FROM noop_effects WHERE job_id = '{job_id}'"))


# ------------------------------------------------------------------ the happy path

def test_noop_job_runs_once(server):
    j = server.create_job({"sleepMs": 5})
    assert uuid_like(j["id"])
    assert j["status"] == "queued" and j["attempts"] == 0 and j["kind"] == "noop"
    assert j["tenant"] == "default"
    assert j["maxAttempts"] == 3  # ESTEIRA_JOB_KINDS of the test server
    assert j["payload"] == {"sleepMs": 5}
    done = server.wait_job(j["id"], "done")
    assert done["attempts"] == 1
    assert done["errorType"] is None and done["errorMessage"] is None
    assert [h["status"] for h in done["history"]] == ["queued", "processing", "done"]
    assert effects(server, j["id"]) == 1
    assert effects(server) == 1
    # the store agrees with the API
    assert server.sql("SELECT status, attempts FROM jobs") == [["done", "1"]]


def test_job_fails_then_succeeds(server):
    j = server.create_job({"failTimes": 2})
    done = server.wait_job(j["id"], "done", timeout=20)
    assert done["attempts"] == 3
    errors = [h for h in done["history"] if h["status"] == "error"]
    assert [h["attempt"] for h in errors] == [1, 2]
    assert all(h["errorType"] == "noop_failure" for h in errors), errors
    assert "attempt 1" in errors[0]["errorMessage"]
    # the two failed attempts left no effect; the third left exactly one
    assert effects(server, j["id"]) == 1


def test_permanent_failure_is_not_retried(server):
    j = server.create_job({"fail": True, "permanent": True})
    dead = server.wait_job(j["id"], "dead")
    assert dead["attempts"] == 1
    assert dead["errorType"] == "noop_failure"
    assert effects(server, j["id"]) == 0


# ------------------------------------------------------------------ idempotency

def test_idempotency_key_returns_same_job(server):
    hdr = {"Idempotency-Key": "order-42"}
    r1 = server.post("/v1/jobs", json={"kind": "noop", "payload": {"n": 1}}, headers=hdr)
    assert r1.status_code == 201, r1.text
    assert "Idempotent-Replayed" not in r1.headers
    r2 = server.post("/v1/jobs", json={"kind": "noop", "payload": {"n": 1}}, headers=hdr)
    assert r2.status_code == 200, r2.text
    assert r2.headers.get("Idempotent-Replayed") == "true"
    assert r2.json()["id"] == r1.json()["id"]
    # even with another body: the key names the resource
    r3 = server.post("/v1/jobs", json={"kind": "noop", "payload": {"n": 2}}, headers=hdr)
    assert r3.status_code == 200 and r3.json()["id"] == r1.json()["id"]
    assert r3.json()["payload"] == {"n": 1}
    server.wait_job(r1.json()["id"], "done")
    # a replay after the job ran still names it, now done
    r4 = server.post("/v1/jobs", json={"kind": "noop"}, headers=hdr)
    assert r4.status_code == 200 and r4.json()["status"] == "done"
    assert len(server.all_jobs()) == 1
    assert server.sql1("SELECT count(*) FROM jobs") == "1"
    assert effects(server) == 1
    # another key is another job
    r5 = server.post("/v1/jobs", json={"kind": "noop"}, headers={"Idempotency-Key": "order-43"})
    assert r5.status_code == 201 and r5.json()["id"] != r1.json()["id"]


def test_idempotency_key_concurrent_requests(server):
    hdr = {"Idempotency-Key": "race-1", "Content-Type": "application/json"}
    results = []
    lock = threading.Lock()
    go = threading.Event()

    def submit():
        go.wait()
        r = server.request("POST", "/v1/jobs", data='{"kind":"noop"}', headers=hdr)
        with lock:
            results.append((r.status_code, r.json().get("id")))

    threads = [threading.Thread(target=submit) for _ in range(12)]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(30)
    assert len(results) == 12
    assert {code for code, _ in results} <= {200, 201}, results
    assert [code for code, _ in results].count(201) == 1, results
    assert len({i for _, i in results}) == 1, results
    assert server.sql1("SELECT count(*) FROM jobs") == "1"
    server.wait_job(results[0][1], "done")
    assert effects(server) == 1


def test_idempotency_key_validated(server):
    r = server.post("/v1/jobs", json={"kind": "noop"}, headers={"Idempotency-Key": "k" * 201})
    body = error_shape(r, 400, "validation_failed")
    assert [d["field"] for d in body["error"]["details"]] == ["Idempotency-Key"]


# ------------------------------------------------------------------ retries and dead letters

def check_backoff(history, base, cap):
    """Each error entry's delayMs lies in [d/2, d], d = min(cap, base*2^(n-1)),
    the delays grow until the cap, and the next attempt starts no sooner."""
    errors = [h for h in history if h["status"] == "error"]
    prev = None
    for h in errors:
        n = h["attempt"]
        d = min(cap, base * 2 ** (n - 1))
        assert d // 2 <= h["delayMs"] <= d, (n, h["delayMs"], d)
        # below the cap the ranges [d/2, d] and [d, 2d] adjoin: a delay never
        # shrinks until the cap is reached (at the cap, jitter may reorder them)
        if prev is not None and d == 2 * prev[1]:
            assert h["delayMs"] >= prev[0], (prev, h)
        prev = (h["delayMs"], d)
    # the attempt after each error waited at least its delay
    for i, h in enumerate(history):
        if h["status"] != "error":
            continue
        nxt = next(x for x in history[i + 1:] if x["status"] == "processing")
        assert nxt["attempt"] == h["attempt"] + 1
        assert ms(nxt["at"]) >= ms(h["at"]) + h["delayMs"] - 2, (h, nxt)
    return errors


def test_always_failing_job_goes_dead_with_backoff(start_server):
    s = start_server(env={"ESTEIRA_JOB_KINDS": "noop:base=100ms,cap=400ms,attempts=3"})
    j = s.create_job({"fail": True})
    assert j["maxAttempts"] == 3
    dead = s.wait_job(j["id"], "dead", timeout=20)
    assert dead["attempts"] == 3
    assert dead["errorType"] == "noop_failure"
    assert "attempt 3" in dead["errorMessage"]
    h = dead["history"]
    assert [x["status"] for x in h] == ["queued", "processing", "error", "processing", "error",
                                        "processing", "dead"], h
    errors = check_backoff(h, 100, 400)
    assert [e["attempt"] for e in errors] == [1, 2]
    assert "delayMs" not in h[-1]  # dead is final: no retry delay
    assert effects(s, j["id"]) == 0

    # the cap: five attempts of the same kind reach it (100, 200, 400, 400)
    j5 = s.create_job({"fail": True}, maxAttempts=5)
    dead5 = s.wait_job(j5["id"], "dead", timeout=20)
    assert dead5["attempts"] == 5
    errors = check_backoff(dead5["history"], 100, 400)
    assert [e["attempt"] for e in errors] == [1, 2, 3, 4]
    assert all(200 <= e["delayMs"] <= 400 for e in errors[2:]), errors

    # both are in the dead-letter list, and nothing else is
    r = s.get("/v1/dlq")
    assert r.status_code == 200
    assert {x["id"] for x in r.json()["items"]} == {j["id"], j5["id"]}
    assert all(x["status"] == "dead" for x in r.json()["items"])


def test_dlq_retry_and_delete(start_server):
    s = start_server()
    dead = s.create_job({"fail": True})
    ok = s.create_job()
    s.wait_job(dead["id"], "dead", timeout=20)
    s.wait_job(ok["id"], "done")
    other_dead = s.create_job({"fail": True, "permanent": True})
    s.wait_job(other_dead["id"], "dead")

    # a job that is not dead is not in the DLQ's hands
    error_shape(s.post(f"/v1/dlq/{ok['id']}/retry"), 409, "conflict")
    error_shape(s.delete(f"/v1/dlq/{ok['id']}"), 409, "conflict")
    error_shape(s.post("/v1/dlq/01900000-0000-7000-8000-000000000000/retry"), 404)
    error_shape(s.delete("/v1/dlq/not-a-uuid"), 404)

    # re-drive with the API alone running (no workers): the job is queued, as a fact
    s.stop()
    api = start_server(cmd="serve", port=s.port, data_dir=s.data_dir)
    r = api.post(f"/v1/dlq/{dead['id']}/retry")
    assert r.status_code == 202, r.text
    j = r.json()
    assert j["status"] == "queued" and j["attempts"] == 0
    assert j["errorType"] is None
    assert j["history"][-1]["status"] == "queued"
    assert j["history"][-1].get("errorType") == "retried"
    assert dead["id"] not in {x["id"] for x in api.get("/v1/dlq").json()["items"]}
    api.stop()

    # the workers run it again with a fresh budget of attempts: it dies again after 3
    s.start()
    again = s.wait_job(dead["id"], "dead", timeout=20)
    assert again["attempts"] == 3
    statuses = [h["status"] for h in again["history"]]
    assert statuses.count("dead") == 2 and statuses.count("processing") == 6, statuses

    # DELETE removes a dead job and its history
    r = s.delete(f"/v1/dlq/{other_dead['id']}")
    assert r.status_code == 204, r.text
    error_shape(s.get(f"/v1/jobs/{other_dead['id']}"), 404)
    assert other_dead["id"] not in {x["id"] for x in s.get("/v1/dlq").json()["items"]}
    assert s.sql1(f"SELECT count(*) FROM jobs WHERE id = '{other_dead['id']}'") == "0"
    assert s.sql1(f"SELECT count(*) FROM job_events WHERE job_id = '{other_dead['id']}'") == "0"
    error_shape(s.delete(f"/v1/dlq/{other_dead['id']}"), 404)
    # the other jobs are untouched
    assert s.job(ok["id"])["status"] == "done"
    assert s.job(dead["id"])["status"] == "dead"


def test_serve_and_work_in_separate_processes(start_server):
    # the API and the workers as two processes on one embedded store and queue
    api = start_server(cmd="serve")
    ids = [api.create_job({"sleepMs": 5})["id"] for _ in range(20)]
    time.sleep(0.3)
    assert all(api.job(i)["status"] == "queued" for i in ids), "serve runs no jobs"
    worker = start_server(cmd="work", data_dir=api.data_dir, env={"ESTEIRA_WORKERS": "2"})
    for i in ids:
        assert api.wait_job(i, "done")["attempts"] == 1
    assert effects(api) == 20
    assert worker.alive()
    assert worker.stop() == 0
    assert api.stop() == 0


# ------------------------------------------------------------------ cancel

def test_cancel_queued_job(server):
    j = server.create_job(delayMs=60000)
    assert j["status"] == "queued" and j["runAfter"] is not None
    r = server.post(f"/v1/jobs/{j['id']}/cancel")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "canceled"
    assert r.json()["history"][-1]["status"] == "canceled"
    # cancelling twice is a conflict
    error_shape(server.post(f"/v1/jobs/{j['id']}/cancel"), 409, "conflict")
    time.sleep(0.3)
    assert server.job(j["id"])["status"] == "canceled"
    assert effects(server, j["id"]) == 0

    # a canceled job can be retried: it runs now, not after its old delay
    r = server.post(f"/v1/jobs/{j['id']}/retry")
    assert r.status_code == 202, r.text
    done = server.wait_job(j["id"], "done", timeout=10)
    assert done["attempts"] == 1
    assert effects(server, j["id"]) == 1


def test_cancel_done_job_is_conflict(server):
    j = server.create_job()
    server.wait_job(j["id"], "done")
    body = error_shape(server.post(f"/v1/jobs/{j['id']}/cancel"), 409, "conflict")
    assert "cancel" in body["error"]["message"]
    assert server.job(j["id"])["status"] == "done"
    # retry of a done job is a conflict too
    error_shape(server.post(f"/v1/jobs/{j['id']}/retry"), 409, "conflict")
    error_shape(server.post("/v1/jobs/01900000-0000-7000-8000-000000000000/cancel"), 404)


# ------------------------------------------------------------------ listing

def test_list_filters_and_pagination(server):
    done = [server.create_job()["id"] for _ in range(7)]
    queued = [server.create_job(delayMs=60000)["id"] for _ in range(6)]
    canceled = [server.create_job(delayMs=60000)["id"] for _ in range(4)]
    for i in canceled:
        assert server.post(f"/v1/jobs/{i}/cancel").status_code == 200
    for i in done:
        server.wait_job(i, "done")
    every = set(done + queued + canceled)

    # newest first, every job exactly once, whatever the page size
    for limit in (1, 3, 5, 17, 500):
        seen, cursor, pages = [], None, 0
        while True:
            q = f"/v1/jobs?limit={limit}" + (f"&cursor={cursor}" if cursor else "")
            page = server.get(q).json()
            assert len(page["items"]) <= limit
            seen += [x["id"] for x in page["items"]]
            pages += 1
            cursor = page["nextCursor"]
            if not cursor:
                break
            assert pages < 100
        assert len(seen) == len(every) and set(seen) == every, limit
        assert seen == sorted(seen, reverse=True), "newest (largest UUIDv7) first"
        assert pages == -(-len(every) // limit), (limit, pages)

    def ids(query):
        return [x["id"] for x in server.all_jobs(query)]

    assert set(ids("status=done")) == set(done)
    assert set(ids("status=queued")) == set(queued)
    assert set(ids("status=canceled")) == set(canceled)
    assert ids("status=dead") == []
    assert set(ids("kind=noop")) == every
    assert ids("kind=report") == []
    assert set(ids("kind=noop&status=queued")) == set(queued)
    # pages of a filtered list hold only matching jobs
    page = server.get("/v1/jobs?status=queued&limit=4").json()
    assert len(page["items"]) == 4 and all(x["status"] == "queued" for x in page["items"])
    rest = server.get(f"/v1/jobs?status=queued&limit=4&cursor={page['nextCursor']}").json()
    assert len(rest["items"]) == 2 and rest["nextCursor"] is None

    body = error_shape(server.get("/v1/jobs?status=sleeping"), 400, "validation_failed")
    assert body["error"]["details"][0]["field"] == "status"
    body = error_shape(server.get("/v1/jobs?cursor=bogus"), 400, "validation_failed")
    assert body["error"]["details"][0]["field"] == "cursor"
    for bad in ("0", "501", "ten", "-1"):
        body = error_shape(server.get(f"/v1/jobs?limit={bad}"), 400, "validation_failed")
        assert body["error"]["details"][0]["field"] == "limit"


# ------------------------------------------------------------------ validation

def test_validation_lists_fields(server):
    r = server.post("/v1/jobs", json={"kind": "warp_drive"})
    body = error_shape(r, 400, "validation_failed")
    assert body["error"]["details"] == [{"field": "kind", "problem": "unknown job kind"}]

    r = server.post("/v1/jobs", json={"payload": {}})
    body = error_shape(r, 400, "validation_failed")
    assert [d["field"] for d in body["error"]["details"]] == ["kind"]

    for bad in (0, 101, -3, "3", 2.5, None, True):
        r = server.post("/v1/jobs", json={"kind": "noop", "maxAttempts": bad})
        body = error_shape(r, 400, "validation_failed")
        assert [d["field"] for d in body["error"]["details"]] == ["maxAttempts"], (bad, body)

    # every problem at once, each named
    r = server.post("/v1/jobs", json={"kind": "nope", "payload": [1], "maxAttempts": 0,
                                      "delayMs": -1})
    body = error_shape(r, 400, "validation_failed")
    fields = sorted(d["field"] for d in body["error"]["details"])
    assert fields == ["delayMs", "kind", "maxAttempts", "payload"], body
    assert all(d["problem"] for d in body["error"]["details"])

    r = server.post("/v1/jobs", json=[{"kind": "noop"}])
    body = error_shape(r, 400, "validation_failed")
    assert body["error"]["details"][0]["field"] == ""

    # limits that are fine
    r = server.post("/v1/jobs", json={"kind": "noop", "maxAttempts": 100, "delayMs": 0})
    assert r.status_code == 201, r.text
    assert r.json()["maxAttempts"] == 100
    # nothing invalid was stored
    assert server.sql1("SELECT count(*) FROM jobs") == "1"


def test_cli_jobs_and_status(server):
    r = server.cli("jobs", "create", "noop", '{"sleepMs": 1}')
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    server.wait_job(j["id"], "done")
    r = server.cli("status", j["id"])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "done"
    r = server.cli("jobs", "list", "status=done")
    assert r.returncode == 0
    assert [x["id"] for x in json.loads(r.stdout)["items"]] == [j["id"]]
    # an error answer fails the command and says why
    r = server.cli("jobs", "cancel", j["id"])
    assert r.returncode == 1
    assert "409" in r.stderr
    r = server.cli("jobs", "create", "noop", "[1]")
    assert r.returncode == 2
    # a dead job, purged from the CLI
    d = server.create_job({"fail": True, "permanent": True})
    server.wait_job(d["id"], "dead")
    r = server.cli("dlq", "list")
    assert r.returncode == 0 and d["id"] in r.stdout
    r = server.cli("dlq", "purge")
    assert r.returncode == 0, r.stderr
    assert "purged 1" in r.stdout
    wait_for(lambda: server.get("/v1/dlq").json()["items"] == [], what="empty DLQ")
