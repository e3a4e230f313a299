"""Crashes and stops: kill -9 loses nothing that was answered 2xx and
duplicates no effect; SIGTERM stops within its timeout and loses nothing."""

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from conftest import wait_for

N_JOBS = 300


def counts(s):
    rows = s.sql("SELECT status, count(*) FROM jobs GROUP BY status")
    return {st: int(n) for st, n in rows}


def effects_report(s):
    total = int(s.sql1("SELECT count(*) FROM noop_effects"))
    distinct = int(s.sql1("SELECT count(DISTINCT job_id) FROM noop_effects"))
    orphans = int(s.sql1("SELECT count(*) FROM noop_effects e LEFT JOIN jobs j ON j.id = e.job_id"
                         " WHERE j.id IS NULL"))
    return total, distinct, orphans


def submit_many(s, n, payload, threads=4):
    def one(i):
        r = s.post("/v1/jobs", json={"kind": "noop", "payload": payload},
                   headers={"Idempotency-Key": f"crash-{i}"})
        assert r.status_code == 201, r.text
        return r.json()["id"]

    with ThreadPoolExecutor(threads) as ex:
        return list(ex.map(one, range(n)))


def test_kill9_loses_and_duplicates_nothing(start_server):
    s = start_server(env={"ESTEIRA_WORKERS": "2", "ESTEIRA_PREFETCH": "16"})
    ids = submit_many(s, N_JOBS, {"sleepMs": 20})
    assert len(set(ids)) == N_JOBS

    # kill -9 while about half of them are done
    wait_for(lambda: int(s.sql1("SELECT count(*) FROM noop_effects")) >= N_JOBS // 2,
             timeout=60, interval=0.005, what="half of the jobs done")
    s.kill()
    assert s.proc.returncode == -signal.SIGKILL
    at_kill = counts(s)
    effects_at_kill = int(s.sql1("SELECT count(*) FROM noop_effects"))
    print(f"\nat kill -9: jobs by status {at_kill}, effects {effects_at_kill}")
    assert 0 < at_kill.get("done", 0) < N_JOBS, "the kill must land mid-run"
    assert sum(at_kill.values()) == N_JOBS, "every answered job is in the store"
    # the effect and `done` are written in one transaction
    assert effects_at_kill == at_kill.get("done", 0)

    s.start()
    wait_for(lambda: counts(s).get("done", 0) == N_JOBS, timeout=120, interval=0.2,
             what=f"all {N_JOBS} jobs done after the restart")

    jobs = s.all_jobs()
    assert sorted(j["id"] for j in jobs) == sorted(ids), "exactly the answered jobs, no more"
    assert all(j["status"] == "done" for j in jobs)
    assert all(j["attempts"] >= 1 for j in jobs)
    total, distinct, orphans = effects_report(s)
    rerun = sum(1 for j in jobs if j["attempts"] > 1)
    print(f"after restart: {len(jobs)} jobs done, {total} effects ({distinct} distinct jobs,"
          f" {orphans} orphans), {rerun} jobs ran more than once")
    assert (total, distinct, orphans) == (N_JOBS, N_JOBS, 0)
    # each job's effect is its own
    assert int(s.sql1("SELECT count(*) FROM jobs j JOIN noop_effects e ON e.job_id = j.id")) == N_JOBS
    # nothing is left on the queue
    m = s.get("/metrics").text
    assert 'esteira_queue_messages{queue="jobs.noop",state="ready"} 0' in m
    assert 'esteira_queue_messages{queue="jobs.noop",state="unacked"} 0' in m


def test_sigterm_graceful_stop(start_server):
    timeout_ms = 4000
    # prefetch 1: a worker busy with a long job holds no other message back
    s = start_server(env={"ESTEIRA_WORKERS": "4", "ESTEIRA_PREFETCH": "1",
                          "ESTEIRA_SHUTDOWN_TIMEOUT_MS": str(timeout_ms)})
    short = submit_many(s, 40, {"sleepMs": 100})
    long_ = [s.create_job({"sleepMs": 60000})["id"] for _ in range(2)]
    # both long jobs are running
    wait_for(lambda: int(s.sql1("SELECT count(*) FROM jobs WHERE status = 'processing'"
                                " AND payload LIKE '%60000%'")) == 2,
             timeout=30, what="the long jobs running")

    # a client keeps submitting while the server stops: whatever got 201 must
    # survive; a request that got no answer is sent again after the restart
    # with the same Idempotency-Key, as a client would
    accepted, unanswered, refused, stop = {}, [], [], threading.Event()

    def keep_submitting():
        i = 0
        while not stop.is_set():
            key = f"during-stop-{i}"
            try:
                r = s.post("/v1/jobs", json={"kind": "noop", "payload": {"sleepMs": 1}},
                           headers={"Idempotency-Key": key}, timeout=5)
                if r.status_code == 201:
                    accepted[key] = r.json()["id"]
                else:
                    refused.append((key, r.status_code))
            except requests.ConnectionError as e:
                # refused (the listener is gone) or cut off mid-request
                unanswered.append((key, str(e)))
                if "Connection refused" in str(e):
                    break
            i += 1

    t = threading.Thread(target=keep_submitting)
    t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    rc = s.stop(signal.SIGTERM, timeout=timeout_ms / 1000 + 10)
    took = time.monotonic() - t0
    stop.set()
    t.join(10)
    print(f"\nSIGTERM: exit {rc} after {took:.2f} s; {len(accepted)} jobs accepted meanwhile,"
          f" {len(unanswered)} requests unanswered, {len(refused)} refused")
    assert rc == 0
    assert took < timeout_ms / 1000 + 2, took
    assert any(l.get("msg") == "stopped" for l in s.log_lines(current=True))
    # the long jobs were handed back, not failed: their attempt does not count
    for i in long_:
        st, att = s.sql(f"SELECT status, attempts FROM jobs WHERE id = '{i}'")[0]
        assert (st, att) == ("queued", "0"), (i, st, att)

    assert all(code == 503 for _, code in refused), refused
    s.start()
    answered_late = {}
    for key, _ in unanswered + refused:
        r = s.post("/v1/jobs", json={"kind": "noop", "payload": {"sleepMs": 1}},
                   headers={"Idempotency-Key": key})
        assert r.status_code in (200, 201), r.text
        answered_late[key] = r.json()["id"]
    cut_off = [k for k, _ in unanswered if k in answered_late and
               s.job(answered_late[k])["createdAt"] < s.log_lines(current=True)[0]["ts"]]
    if cut_off:
        print(f"{len(cut_off)} requests were carried out but their answer was lost in the stop")
    everything = short + list(accepted.values()) + list(answered_late.values())
    assert len(set(everything)) == len(everything), "one job per Idempotency-Key"
    wait_for(lambda: int(s.sql1("SELECT count(*) FROM jobs WHERE status = 'done'"))
             >= len(everything), timeout=60, what="every accepted job done")
    for i in everything:
        assert s.job(i)["status"] == "done"
    total, distinct, _ = effects_report(s)
    assert total == distinct == len(everything)
    assert int(s.sql1("SELECT count(*) FROM jobs")) == len(everything) + len(long_)
    for i in long_:
        j = s.job(i)
        assert j["status"] == "processing" and j["attempts"] == 1, j
    s.stop()


def test_worker_killed_repeatedly_ends_dead(start_server):
    # attempts=2: the worker dies twice; the third delivery finds the attempts
    # spent and dead-letters the job instead of feeding it another worker
    s = start_server(env={"ESTEIRA_WORKERS": "1",
                          "ESTEIRA_JOB_KINDS": "noop:base=100ms,cap=1s,attempts=2"})
    j = s.create_job({"sleepMs": 2500})
    for n in (1, 2):
        wait_for(lambda: s.sql(f"SELECT status, attempts FROM jobs WHERE id = '{j['id']}'")[0]
                 == ["processing", str(n)], timeout=20, interval=0.01,
                 what=f"attempt {n} running")
        s.kill()
        s.start()
    dead = s.wait_job(j["id"], "dead", timeout=20)
    assert dead["errorType"] == "attempts_exhausted", dead
    assert dead["attempts"] == 3
    assert "2 times" in dead["errorMessage"], dead
    assert int(s.sql1("SELECT count(*) FROM noop_effects")) == 0
    assert j["id"] in {x["id"] for x in s.get("/v1/dlq").json()["items"]}

    # re-driven, it runs to the end this time, once
    r = s.post(f"/v1/dlq/{j['id']}/retry")
    assert r.status_code == 202, r.text
    done = s.wait_job(j["id"], "done", timeout=20)
    assert done["attempts"] == 1
    assert int(s.sql1("SELECT count(*) FROM noop_effects")) == 1
