"""`esteira events send`: one event from flags, or a file of NDJSON in chunks,
against a real server (and, for what a real one will not do on demand - a
503 - against a scripted one).

What a script relies on: exit 0 only when every event was accepted, 1 when
some were rejected or the server refused or could not be reached, 2 for a
usage error naming the flag; stdout is one JSON document (the server's answer
for one event; for a file {sent, accepted, rejected:[{line, errors}]} with
1-based file lines); a chunk answered 503 goes again with the same eventIds.
"""

import http.server
import json
import threading
import time
import uuid

import pytest

from conftest import free_port, run_cli, uuid_like, wait_for

EVENTS_ENV = {"ESTEIRA_EVENTS_FLUSH_MS": "200"}


@pytest.fixture
def events_server(start_server):
    return start_server(env=EVENTS_ENV)


def event(user, kind="view", **more):
    ev = {"userId": user, "eventType": kind, "sessionId": "sess-" + user}
    ev.update(more)
    return json.dumps(ev)


def stats(server):
    r = server.get("/v1/events/stats")
    assert r.status_code == 200, r.text
    return r.json()


def stored_total(server, want, timeout=20):
    """Waits until the stored total is want; returns it."""
    return wait_for(lambda: stats(server)["total"] == want and want, timeout=timeout,
                    what=f"{want} events stored (now {stats(server)['total']})")


def cli(server, *args, input=None, env=None):
    """`esteira ARGS` against server (server.cli, with something on stdin)."""
    e = {"ESTEIRA_URL": server.url, "ESTEIRA_LOG_LEVEL": "warn"}
    e.update(env or {})
    return run_cli(list(args), env=e, input=input, timeout=120)


def summary(r):
    assert r.stdout.strip(), f"nothing on stdout; stderr:\n{r.stderr}"
    return json.loads(r.stdout)


def rejected_lines(s):
    return [x["line"] for x in s["rejected"]]


# ------------------------------------------------------------------ usage (no server)
@pytest.mark.parametrize("args, names", [
    ([], "send"),
    (["publish"], "publish"),
    (["send"], "--user"),
    (["send", "--user", "u", "--session", "s"], "--type"),
    (["send", "--user", "u", "--type", "view"], "--session"),
    (["send", "--user"], "--user"),
    (["send", "--user=", "--type", "view", "--session", "s"], "--user"),
    (["send", "--user", "u", "--type", "view", "--session", "s", "--data", "{nope"], "--data"),
    (["send", "--user", "u", "--type", "view", "--session", "s", "--bogus"], "--bogus"),
    (["send", "--file", "x.ndjson", "--user", "u"], "--user"),
    (["send", "--file"], "--file"),
    (["send", "--file", "x.ndjson", "--chunk", "0"], "--chunk"),
    (["send", "--file", "x.ndjson", "--chunk", "ten"], "--chunk"),
    (["send", "--file", "x.ndjson", "--retries", "-1"], "--retries"),
    (["send", "--user", "u", "--type", "view", "--session", "s", "--chunk", "5"], "--chunk"),
])
def test_usage_errors_exit_2_naming_the_flag(args, names):
    env = {"ESTEIRA_URL": f"http://127.0.0.1:{free_port()}"}
    r = run_cli(["events", *args], env=env)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert names in r.stderr.splitlines()[0], r.stderr
    assert "usage: esteira events send" in r.stderr
    assert r.stdout == ""


def test_unreadable_file_exit_2(tmp_path):
    env = {"ESTEIRA_URL": f"http://127.0.0.1:{free_port()}"}
    missing = tmp_path / "none.ndjson"
    r = run_cli(["events", "send", "--file", str(missing)], env=env)
    assert r.returncode == 2 and str(missing) in r.stderr and "No such file" in r.stderr, r
    r = run_cli(["events", "send", "--file", str(tmp_path)], env=env)
    assert r.returncode == 2 and "directory" in r.stderr, r


def test_help_lists_events():
    r = run_cli(["help"])
    assert r.returncode == 0
    assert "events send --user U --type T --session S" in r.stdout
    assert "events send --file FILE|-" in r.stdout


def test_no_server_is_a_clear_error(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    r = run_cli(["events", "send", "--user", "u", "--type", "view", "--session", "s"],
                env={"ESTEIRA_URL": url})
    assert r.returncode == 1, r
    assert "cannot reach" in r.stderr and url in r.stderr, r.stderr
    assert r.stdout == ""

    f = tmp_path / "e.ndjson"
    f.write_text(event("a") + "\n" + event("b") + "\n")
    r = run_cli(["events", "send", "--file", str(f)], env={"ESTEIRA_URL": url})
    assert r.returncode == 1, r
    assert "cannot reach" in r.stderr and url in r.stderr, r.stderr
    s = summary(r)
    assert s["sent"] == 0 and s["accepted"] == 0 and s["stoppedAtLine"] == 1, s


# ------------------------------------------------------------------ one event
def test_one_event_from_flags_is_stored(events_server):
    user = "u-" + uuid.uuid4().hex[:8]
    r = events_server.cli("events", "send", "--user", user, "--type", "purchase", "--session",
                          "s-1", "--data", '{"sku":"A-1","qty":2}', "--at",
                          "2026-01-02T03:04:05Z")
    assert r.returncode == 0, (r.stdout, r.stderr)
    ans = json.loads(r.stdout)
    assert ans["status"] == "accepted" and ans["message"] == "Event sent to processing", ans
    assert uuid_like(ans["id"]), ans

    def stored():
        items = events_server.get(f"/v1/events?userId={user}").json()["items"]
        return items if items else None

    items = wait_for(stored, timeout=15, what="the event stored")
    assert len(items) == 1, items
    ev = items[0]
    assert ev["id"] == ans["id"]
    assert ev["eventType"] == "purchase" and ev["sessionId"] == "s-1"
    assert ev["eventData"] == {"sku": "A-1", "qty": 2}
    assert ev["occurredAt"].startswith("2026-01-02T03:04:05"), ev

    # a given id is the stored id; a time in milliseconds is taken too
    given = str(uuid.uuid4())
    r = events_server.cli("events", "send", "--user", user, "--type", "view", "--session", "s-1",
                          "--id", given, "--at", "1700000000000")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["id"] == given
    wait_for(lambda: any(e["id"] == given for e in stored() or []), timeout=15,
             what="the event with the given id stored")


def test_one_invalid_event_exit_1_with_the_servers_details(events_server):
    r = events_server.cli("events", "send", "--user", "u", "--type", "teleport", "--session", "s",
                          "--data", "[1,2]")
    assert r.returncode == 1, (r.stdout, r.stderr)
    body = json.loads(r.stdout)
    fields = {d["field"] for d in body["error"]["details"]}
    assert fields == {"eventType", "eventData"}, body
    assert "400" in r.stderr and "eventType" in r.stderr and "eventData" in r.stderr, r.stderr


# ------------------------------------------------------------------ files
def write_mixed(path, n=2500):
    """n lines: mostly valid events without eventId, with blank lines and
    several kinds of invalid ones at known places.  Returns (valid, bad lines)."""
    lines, bad, valid = [], [], 0
    for i in range(1, n + 1):
        if i % 211 == 0:
            lines.append("")  # skipped; still counts as a line of the file
        elif i % 97 == 0:
            lines.append(event(f"user{i}", kind="teleport"))
            bad.append(i)
        elif i % 89 == 0:
            lines.append("{this is not json")
            bad.append(i)
        elif i % 83 == 0:
            lines.append(json.dumps({"eventType": "view", "sessionId": "s"}))  # no userId
            bad.append(i)
        elif i == 1234:
            lines.append("[1, 2, 3]")  # JSON, not an object
            bad.append(i)
        else:
            lines.append(event(f"user{i}", kind=("view", "login", "search")[i % 3],
                               eventData={"i": i}))
            valid += 1
    path.write_text("\n".join(lines) + "\n")
    return valid, bad


def test_file_with_invalid_lines_exact_counts_and_lines(events_server, tmp_path):
    f = tmp_path / "events.ndjson"
    valid, bad = write_mixed(f)
    r = events_server.cli("events", "send", "--file", str(f), timeout=120)
    assert r.returncode == 1, (r.returncode, r.stderr)  # some were rejected
    s = summary(r)
    assert s["accepted"] == valid, s["accepted"]
    assert s["sent"] == valid + len(bad), s["sent"]
    assert rejected_lines(s) == bad
    by_line = {x["line"]: x["errors"] for x in s["rejected"]}
    assert any(e["field"] == "eventType" for e in by_line[97])
    assert by_line[89][0]["problem"].startswith("not JSON")
    assert any(e["field"] == "userId" for e in by_line[83])
    assert by_line[1234], by_line[1234]
    assert "sent" in r.stderr and "accepted" in r.stderr  # progress for humans
    stored_total(events_server, valid)
    # and one of them reads back as it was sent
    items = events_server.get("/v1/events?userId=user2500").json()["items"]
    assert len(items) == 1 and items[0]["eventData"] == {"i": 2500}, items


def test_a_chunk_with_no_valid_event_names_its_lines(events_server, tmp_path):
    # with --chunk 10, lines 11-20 form a batch of which nothing is valid:
    # the server answers 400 and names them by index within that batch
    f = tmp_path / "e.ndjson"
    lines = [event(f"ok{i}") if not 11 <= i <= 20 else event(f"bad{i}", kind="nope")
             for i in range(1, 31)]
    f.write_text("\n".join(lines) + "\n")
    r = events_server.cli("events", "send", "--file", str(f), "--chunk", "10", "--quiet")
    assert r.returncode == 1, r.stderr
    s = summary(r)
    assert s["sent"] == 30 and s["accepted"] == 20, s
    assert rejected_lines(s) == list(range(11, 21))
    assert all(x["errors"][0]["field"] == "eventType" for x in s["rejected"]), s
    assert "events:" not in r.stderr  # --quiet
    stored_total(events_server, 20)


def test_stdin_all_valid_exit_0(events_server):
    n = 1500
    text = "\n".join(event(f"in{i}", kind="add_to_cart") for i in range(n))  # no final newline
    r = cli(events_server, "events", "send", "--file", "-", "--chunk", "400", input=text)
    assert r.returncode == 0, (r.stdout, r.stderr)
    s = summary(r)
    assert s == {"sent": n, "accepted": n, "rejected": []}, s
    stored_total(events_server, n)
    assert stats(events_server)["byType"]["add_to_cart"] == n


def test_file_with_event_ids_twice_stores_each_once(events_server, tmp_path):
    f = tmp_path / "ids.ndjson"
    n = 700
    f.write_text("".join(event(f"id{i}", eventId=str(uuid.uuid4())) + "\n" for i in range(n)))
    for _ in range(2):
        r = events_server.cli("events", "send", "--file", str(f), "--chunk", "300", "--quiet")
        assert r.returncode == 0, r.stderr
        assert summary(r)["accepted"] == n
    # both runs flushed (2n events went through the flushers), n stored
    wait_for(lambda: stats(events_server)["batches"]["events"] >= 2 * n, timeout=20,
             what="both runs flushed")
    assert stats(events_server)["total"] == n


def test_a_smaller_server_limit_halves_the_chunks(start_server, tmp_path):
    s = start_server(env=dict(EVENTS_ENV, ESTEIRA_EVENTS_REQUEST_MAX="100"))
    f = tmp_path / "e.ndjson"
    n = 1000
    f.write_text("".join(event(f"h{i}") + "\n" for i in range(n)))
    r = s.cli("events", "send", "--file", str(f))
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert summary(r) == {"sent": n, "accepted": n, "rejected": []}
    assert "413" in r.stderr, r.stderr
    stored_total(s, n)


def test_send_to_a_server_with_auth(start_server):
    s = start_server(env=dict(EVENTS_ENV, ESTEIRA_AUTH="required"))
    r = s.cli("events", "send", "--user", "u", "--type", "view", "--session", "s")
    assert r.returncode == 1 and "401" in r.stderr, (r.returncode, r.stderr)
    k = s.cli("keys", "create", "--tenant", "t1", "--scopes", "ingest")
    assert k.returncode == 0, k.stderr
    token = k.stdout.strip()
    r = cli(s, "events", "send", "--file", "-", env={"ESTEIRA_TOKEN": token},
            input=event("a") + "\n" + event("b") + "\n")
    assert r.returncode == 0, r.stderr
    assert summary(r)["accepted"] == 2


# ------------------------------------------------------------------ 503, scripted
class Scripted(http.server.BaseHTTPRequestHandler):
    """Answers POSTs from a list of (status, headers, body); records requests."""

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n).decode()
        srv = self.server
        srv.requests.append({"path": self.path, "headers": dict(self.headers), "body": body,
                             "at": time.monotonic()})
        status, headers, answer = srv.script[min(len(srv.requests), len(srv.script)) - 1]
        if callable(answer):
            answer = answer(body)
        data = json.dumps(answer).encode()
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


@pytest.fixture
def scripted():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    srv.requests, srv.script = [], []
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


BUSY = (503, {"Retry-After": "1"},
        {"error": {"code": "unavailable", "message": "the events could not be made durable now"}})


def accept_all(body):
    return {"accepted": len([l for l in body.split("\n") if l.strip()]), "rejected": []}


def test_503_resends_the_same_chunk_with_the_same_ids(scripted, tmp_path):
    scripted.script = [BUSY, BUSY, (202, {}, accept_all)]
    given = str(uuid.uuid4())
    f = tmp_path / "e.ndjson"
    f.write_text(event("a") + "\n" + "not json at all\n" + event("b", eventId=given) + "\n" +
                 "{}\n" + "  " + event("c", eventData={"k": [1, 2]}) + "\r\n")
    url = f"http://127.0.0.1:{scripted.server_address[1]}"
    r = run_cli(["events", "send", "--file", str(f)],
                env={"ESTEIRA_URL": url, "ESTEIRA_TOKEN": "tok-123"})
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert summary(r) == {"sent": 5, "accepted": 5, "rejected": []}
    reqs = scripted.requests
    assert len(reqs) == 3, reqs
    # Retry-After: 1 was honoured, each time
    assert reqs[1]["at"] - reqs[0]["at"] >= 0.95 and reqs[2]["at"] - reqs[1]["at"] >= 0.95
    assert "503" in r.stderr and "again" in r.stderr, r.stderr
    # the very same bytes each time: the ids the CLI added do not change
    assert reqs[0]["body"] == reqs[1]["body"] == reqs[2]["body"]
    for q in reqs:
        assert q["path"] == "/v1/events/batch"
        assert q["headers"]["Content-Type"] == "application/x-ndjson"
        assert q["headers"]["Authorization"] == "Bearer tok-123"
    lines = reqs[0]["body"].split("\n")
    assert lines[-1] == "" and len(lines) == 6, lines
    a, bad, b, empty, c = (lines[i] for i in range(5))
    assert bad == "not json at all"  # passed through for the server to judge
    assert json.loads(b) == json.loads(event("b", eventId=given))  # its own id kept
    for text, want in ((a, json.loads(event("a"))), (empty, {}),
                       (c, json.loads(event("c", eventData={"k": [1, 2]})))):
        got = json.loads(text)
        eid = got.pop("eventId")
        assert uuid_like(eid) and eid[14] == "7", eid  # a UUIDv7
        assert got == want
    assert c.startswith("  {") and c.endswith("\r")  # the rest of the line as it was


def test_503_retries_are_bounded(scripted, tmp_path):
    scripted.script = [(503, {"Retry-After": "0"}, BUSY[2])]
    f = tmp_path / "e.ndjson"
    f.write_text(event("a") + "\n" + event("b") + "\n")
    url = f"http://127.0.0.1:{scripted.server_address[1]}"
    r = run_cli(["events", "send", "--file", str(f), "--retries", "2"], env={"ESTEIRA_URL": url})
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert len(scripted.requests) == 3  # the first and two more
    assert "503" in r.stderr and "the events could not be made durable now" in r.stderr
    s = summary(r)
    assert s["sent"] == 0 and s["accepted"] == 0 and s["stoppedAtLine"] == 1, s

    # one event from flags is retried the same way, with one id throughout
    scripted.requests.clear()
    scripted.script = [(503, {}, BUSY[2]),
                       (202, {}, lambda body: {"id": json.loads(body)["eventId"],
                                               "status": "accepted",
                                               "message": "Event sent to processing"})]
    r = run_cli(["events", "send", "--user", "u", "--type", "view", "--session", "s"],
                env={"ESTEIRA_URL": url})
    assert r.returncode == 0, r.stderr
    bodies = [json.loads(q["body"]) for q in scripted.requests]
    assert len(bodies) == 2 and bodies[0] == bodies[1], bodies
    assert json.loads(r.stdout)["id"] == bodies[0]["eventId"]
