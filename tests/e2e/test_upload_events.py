"""GET /v1/uploads/{id}/events: Server-Sent Events of an upload's progress.

The stream is opened while the file is still arriving (the upload is listed
as `receiving` from its first byte), so every batch of the upload happens
while it is open: a status event, progress events with growing counts, one
completed event with the final counts, and the end of the stream."""

import threading
import time

import requests

from conftest import wait_for

HEADER = "name,governmentId,email,debtAmount,debtDueDate,debtId\n"


def row(i):
    return (f"Name {i},{10000000000 + i},p{i}@example.com,10.00,2024-01-31,"
            f"00000000-0000-4000-8000-{i:012d}\n")


def sse_events(resp):
    """Yields (event, data) of a text/event-stream response, and ("", ": …")
    for each comment, as they arrive."""
    event, data = None, []
    for line in resp.iter_lines(chunk_size=1, decode_unicode=True):
        if line is None:
            continue
        if line.startswith(":"):
            yield "", line
        elif line == "":
            if event is not None or data:
                yield event or "message", "\n".join(data)
            event, data = None, []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


def open_events(s, uid, timeout=30, token=None):
    headers = {"Authorization": "Bearer " + token} if token else {}
    return requests.get(f"{s.url}/v1/uploads/{uid}/events", stream=True, timeout=timeout,
                        headers=headers)


def create_key(s, tenant, scopes):
    r = s.cli("keys", "create", "--tenant", tenant, "--scopes", scopes)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_events_follow_an_upload_from_receiving_to_completed(start_server):
    import json

    # many small batches, one at a time: loading takes long enough to be seen
    s = start_server(env={"ESTEIRA_BATCH_ROWS": "20", "ESTEIRA_BATCHES_PER_JOB": "1",
                          "ESTEIRA_WORKERS": "1"})
    n, per = 20000, 20
    release = threading.Event()
    result = {}

    def body():
        yield (HEADER + "".join(row(i) for i in range(1, 101))).encode()
        release.wait(30)  # the rest once the stream is open
        for start in range(101, n + 1, 1000):
            yield "".join(row(i) for i in range(start, min(start + 1000, n + 1))).encode()

    def send():
        r = requests.post(s.url + "/v1/uploads?dataset=debts", data=body(),
                          headers={"Content-Type": "text/csv"}, timeout=60)
        result["status"], result["body"] = r.status_code, r.text

    t = threading.Thread(target=send, daemon=True)
    t.start()
    try:
        uid = wait_for(lambda: next((u["id"] for u in s.get("/v1/uploads").json()["items"]
                                     if u["status"] == "receiving"), None),
                       timeout=10, what="the upload listed as receiving")
        r = open_events(s, uid)
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"].startswith("text/event-stream")
        assert r.headers.get("Cache-Control") == "no-cache"
        events = sse_events(r)
        kind, data = next(events)
        assert kind == "status", (kind, data)
        first = json.loads(data)
        assert first["id"] == uid and first["status"] == "receiving"
        release.set()

        progress, times, final = [], [], None
        t0 = time.monotonic()
        for kind, data in events:
            assert time.monotonic() - t0 < 60, "the stream did not end"
            if kind == "":
                continue
            st = json.loads(data)
            assert st["id"] == uid
            if kind == "progress":
                progress.append(st)
                times.append(time.monotonic())
            else:
                final = (kind, st)
                break
        # the server ends the stream after the final event
        assert list(events) == []
        r.close()
    finally:
        release.set()
        t.join(60)
    assert result.get("status") == 202, result

    assert final is not None and final[0] == "completed", final
    done = final[1]
    assert done["status"] == "done"
    assert done["rows"] == {"total": n, "inserted": n, "duplicate": 0, "rejected": 0}
    assert done["batches"] == {"total": n // per, "done": n // per, "failed": 0}
    assert done == s.get(f"/v1/uploads/{uid}").json()
    # progress while the batches loaded: the counts grow, never shrink
    inserted = [p["rows"]["inserted"] for p in progress]
    assert len([i for i in inserted if 0 < i < n]) >= 2, inserted
    assert inserted == sorted(inserted), inserted
    assert all(p["status"] != "done" for p in progress)
    # coalesced: far fewer events than batches, about ten a second at most
    assert len(progress) < n // per / 4, len(progress)
    assert len(times) - 1 <= (times[-1] - times[0]) * 10 + 3, (len(times), times[-1] - times[0])


def test_events_of_a_finished_upload_are_its_status_then_the_end(start_server):
    import json

    s = start_server()
    body = HEADER + "".join(row(i) for i in range(1, 11))
    up = requests.post(s.url + "/v1/uploads?dataset=debts", data=body,
                       headers={"Content-Type": "text/csv"}, timeout=30).json()
    wait_for(lambda: s.get(f"/v1/uploads/{up['id']}").json()["status"] == "done", timeout=30)
    r = open_events(s, up["id"], timeout=10)
    got = [(k, json.loads(d)) for k, d in sse_events(r) if k]
    assert [k for k, _ in got] == ["status", "completed"], got
    assert got[1][1]["rows"]["inserted"] == 10


def test_events_of_an_unknown_or_another_tenants_upload_are_404(server):
    import json

    r = server.get("/v1/uploads/01900000-0000-7000-8000-000000000000/events")
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "not_found"
    assert r.headers["Content-Type"].startswith("application/json")

    acme = create_key(server, "acme", "ingest,read")
    other = create_key(server, "other", "read")
    up = requests.post(server.url + "/v1/uploads?dataset=debts", data=HEADER + row(1),
                       headers={"Content-Type": "text/csv", "Authorization": "Bearer " + acme},
                       timeout=30)
    assert up.status_code == 202, up.text
    uid = up.json()["id"]
    r = server.get(f"/v1/uploads/{uid}/events", token=other)
    assert r.status_code == 404, r.text
    r = open_events(server, uid, token=acme)
    assert r.status_code == 200, r.text
    kind, data = next(sse_events(r))
    assert kind == "status" and json.loads(data)["tenant"] == "acme"
    r.close()


def test_open_streams_do_not_stall_other_requests_and_are_bounded(start_server):
    # no workers: the upload stays queued, so its streams never end by themselves
    s = start_server(env={"ESTEIRA_WORKERS": "0", "ESTEIRA_MAX_EVENT_STREAMS": "20",
                          "ESTEIRA_HTTP_THREADS": "2", "ESTEIRA_SHUTDOWN_TIMEOUT_MS": "20000"})
    up = requests.post(s.url + "/v1/uploads?dataset=debts", data=HEADER + row(1),
                       headers={"Content-Type": "text/csv"}, timeout=30)
    assert up.status_code == 202, up.text
    uid = up.json()["id"]
    streams = []
    for _ in range(20):
        r = open_events(s, uid)
        assert r.status_code == 200, r.text
        streams.append((r, sse_events(r)))
    for r, ev in streams:
        kind, data = next(ev)
        assert kind == "status" and '"queued"' in data, (kind, data)
    # the 21st is refused, and says when to come back
    r = requests.get(f"{s.url}/v1/uploads/{uid}/events", timeout=10)
    assert r.status_code == 503, r.text
    assert r.headers.get("Retry-After")
    # every HTTP thread has parked streams, and the server still answers at once
    for _ in range(20):
        t0 = time.monotonic()
        assert s.get("/healthz", timeout=5).status_code == 200
        assert time.monotonic() - t0 < 0.5
    assert s.get(f"/v1/uploads/{uid}").status_code == 200

    # a client that leaves frees its place (soon, not at the next keep-alive)
    streams.pop()[0].close()

    def reopen():
        x = open_events(s, uid, timeout=10)
        if x.status_code == 200:
            return x
        x.close()
        return None

    r = wait_for(reopen, timeout=5, interval=0.2, what="the place of a closed stream")
    ev = sse_events(r)
    assert next(ev)[0] == "status"
    streams.append((r, ev))

    # stopping the server ends the open streams, without waiting for the
    # shutdown timeout: each ends cleanly after what it had sent
    t0 = time.monotonic()
    assert s.stop() == 0
    assert time.monotonic() - t0 < 10
    for r, ev in streams:
        assert [k for k, _ in ev if k] == []
