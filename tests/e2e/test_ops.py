"""Operations endpoints, request hygiene and the command line's settings."""

import os
import re
import socket

import requests

from conftest import ROOT, error_shape, run_cli, uuid_like


def routes_of_source():
    """(method, OpenAPI path) of every entry in src/http/routes.c."""
    with open(os.path.join(ROOT, "src", "http", "routes.c")) as f:
        src = f.read()
    table = src[src.index("routes[] = {"):]
    found = re.findall(r'\{\s*"([A-Z]+)",\s*"(/[^"]*)"', table)
    assert len(found) >= 10, found  # the table was read, not an empty match
    # "{key*}" is a rest parameter; OpenAPI names it "{key}"
    return {(m, re.sub(r"\{(\w+)\*\}", r"{\1}", p)) for m, p in found}


def settings_of_source():
    """Every setting name of the table in src/core/conf.c, as ESTEIRA_NAME."""
    with open(os.path.join(ROOT, "src", "core", "conf.c")) as f:
        src = f.read()
    names = re.findall(r'^\s*\{"([a-z_0-9]+)",\s*ES_CONF_', src, re.M)
    assert len(names) >= 20, names
    return ["ESTEIRA_" + n.upper() for n in names]


# ------------------------------------------------------------------ health

def test_healthz(server):
    r = server.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


def test_readyz_all_checks_ok(server):
    r = server.get("/readyz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ready"
    assert body["checks"] == {"store": "ok", "broker": "ok", "cache": "ok", "blob": "ok"}


# ------------------------------------------------------------------ request ids

def test_request_id_on_every_response(server):
    seen = set()
    responses = [
        server.get("/healthz"),
        server.get("/readyz"),
        server.get("/metrics"),
        server.get("/openapi.json"),
        server.get("/v1/jobs"),
        server.get("/nope"),
        server.delete("/healthz"),
        server.post("/v1/jobs", data="{", headers={"Content-Type": "application/json"}),
        server.post("/v1/jobs", json={"kind": "noop"}),
    ]
    for r in responses:
        rid = r.headers.get("X-Request-Id")
        assert rid, (r.request.method, r.url, r.status_code, dict(r.headers))
        seen.add(rid)
    assert len(seen) == len(responses), "request ids must differ between requests"
    assert all(uuid_like(x) for x in seen), seen


def test_client_request_id_echoed_when_valid(server):
    r = server.get("/healthz", headers={"X-Request-Id": "abc-123_X.y"})
    assert r.headers["X-Request-Id"] == "abc-123_X.y"
    # an error body names the same id
    r = server.get("/no/such/thing", headers={"X-Request-Id": "trace-me-42"})
    assert r.headers["X-Request-Id"] == "trace-me-42"
    assert error_shape(r, 404)["requestId"] == "trace-me-42"
    # not a valid id (spaces, too long): replaced by one of the server's own
    for bad in ("has space", "x" * 65, "semi;colon"):
        r = server.get("/healthz", headers={"X-Request-Id": bad})
        assert r.headers["X-Request-Id"] != bad
        assert uuid_like(r.headers["X-Request-Id"]), r.headers["X-Request-Id"]


# ------------------------------------------------------------------ metrics

def parse_metrics(text):
    """{name: {labels-string: value}} of Prometheus text."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[^"}]|"(?:[^"\\]|\\.)*")*\})?\s+(\S+)', line)
        assert m, f"not a Prometheus sample line: {line!r}"
        out.setdefault(m.group(1), {})[m.group(2) or ""] = float(m.group(3))
    return out


def test_metrics_after_jobs(server):
    ids = [server.create_job({"sleepMs": 1})["id"] for _ in range(3)]
    for i in ids:
        server.wait_job(i, "done")
    r = server.get("/metrics")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    m = parse_metrics(r.text)
    reqs = m["esteira_http_requests_total"]
    posts = [v for k, v in reqs.items() if 'route="/v1/jobs"' in k and 'method="POST"' in k
             and 'status="201"' in k]
    assert posts == [3.0], reqs
    assert m["esteira_jobs"]['{kind="noop",status="done"}'] == 3.0, m["esteira_jobs"]
    q = m["esteira_queue_messages"]
    assert '{queue="jobs.noop",state="ready"}' in q, q
    assert '{queue="jobs.noop",state="unacked"}' in q, q
    # every job is done: nothing waits in the queue
    assert q['{queue="jobs.noop",state="ready"}'] == 0.0, q
    # the TYPE lines are there for the families
    assert "# TYPE esteira_http_requests_total counter" in r.text
    assert "# TYPE esteira_jobs gauge" in r.text


# ------------------------------------------------------------------ openapi

def test_openapi_lists_every_route(server):
    r = server.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    listed = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    expected = routes_of_source()
    assert listed == expected, {"missing": expected - listed, "extra": listed - expected}
    # protected operations say so; public ones do not
    assert doc["paths"]["/v1/jobs"]["post"]["security"] == [{"bearer": []}]
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    params = doc["paths"]["/v1/jobs/{id}"]["get"]["parameters"]
    assert params == [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]


# ------------------------------------------------------------------ errors

def test_404_and_405_error_shape(server):
    body = error_shape(server.get("/v1/nothing-here"), 404, "not_found")
    assert "details" not in body["error"] or body["error"]["details"]
    r = server.delete("/healthz")
    error_shape(r, 405, "method_not_allowed")
    assert r.headers.get("Allow") == "GET", r.headers
    r = server.put("/v1/jobs")
    error_shape(r, 405)
    assert set(x.strip() for x in r.headers["Allow"].split(",")) == {"GET", "POST"}
    # an unknown job id is a 404 of the same shape
    error_shape(server.get("/v1/jobs/01900000-0000-7000-8000-000000000000"), 404, "not_found")


def test_413_body_over_max_body(start_server):
    s = start_server(env={"ESTEIRA_MAX_BODY": "4KB"})
    pad = "x" * 5000
    body = '{"kind":"noop","payload":{"pad":"%s"}}' % pad
    r = s.post("/v1/jobs", data=body, headers={"Content-Type": "application/json"})
    error_shape(r, 413, "payload_too_large")
    # the same without a Content-Length (chunked): refused while reading
    r = s.post("/v1/jobs", data=iter([body[:3000].encode(), body[3000:].encode()]),
               headers={"Content-Type": "application/json"})
    error_shape(r, 413, "payload_too_large")
    # under the bound the same request is fine
    small = '{"kind":"noop","payload":{"pad":"%s"}}' % ("x" * 3000)
    r = s.post("/v1/jobs", data=small, headers={"Content-Type": "application/json"})
    assert r.status_code == 201, r.text
    assert s.sql1("SELECT count(*) FROM jobs") == "1"


def test_invalid_json_names_position(server):
    r = server.post("/v1/jobs", data='{"kind": "noop",\n "payload": {"a": }}',
                    headers={"Content-Type": "application/json"})
    body = error_shape(r, 400, "invalid_json")
    msg = body["error"]["message"]
    assert re.search(r"line 2\b", msg) and re.search(r"column \d+", msg), msg
    # nothing was created
    assert server.get("/v1/jobs").json()["items"] == []


def test_duplicate_keys_refused(server):
    r = server.post("/v1/jobs", data='{"kind":"noop","kind":"noop"}',
                    headers={"Content-Type": "application/json"})
    error_shape(r, 400, "invalid_json")


def test_415_non_json_content_type(server):
    for ct in ("text/plain", "application/x-www-form-urlencoded", "text/csv"):
        r = server.post("/v1/jobs", data='{"kind":"noop"}', headers={"Content-Type": ct})
        error_shape(r, 415, "unsupported_media_type")
    r = server.post("/v1/jobs", data='{"kind":"noop"}')  # no Content-Type at all
    error_shape(r, 415)
    # a JSON type with parameters, and a +json type, are JSON
    r = server.post("/v1/jobs", data='{"kind":"noop"}',
                    headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 201, r.text
    r = server.post("/v1/jobs", data='{"kind":"noop"}',
                    headers={"Content-Type": "application/vnd.esteira+json"})
    assert r.status_code == 201, r.text


def nested(depth):
    """A job body whose whole JSON nesting is exactly depth levels."""
    inner = "1"
    for _ in range(depth - 1):
        inner = '{"a":%s}' % inner
    return '{"kind":"noop","payload":%s}' % inner


def test_json_depth_limit(start_server):
    s = start_server(env={"ESTEIRA_JSON_MAX_DEPTH": "8"})
    hdr = {"Content-Type": "application/json"}
    r = s.post("/v1/jobs", data=nested(8), headers=hdr)
    assert r.status_code == 201, r.text
    r = s.post("/v1/jobs", data=nested(9), headers=hdr)
    body = error_shape(r, 400, "invalid_json")
    assert "8" in body["error"]["message"], body
    # the default bound (32) holds a thousand brackets off as well
    r = s.post("/v1/jobs", data="[" * 1000 + "]" * 1000, headers=hdr)
    error_shape(r, 400, "invalid_json")


def test_default_json_depth_is_32(server):
    hdr = {"Content-Type": "application/json"}
    assert server.post("/v1/jobs", data=nested(32), headers=hdr).status_code == 201
    error_shape(server.post("/v1/jobs", data=nested(33), headers=hdr), 400, "invalid_json")


def test_malformed_request_line_does_not_kill_server(server):
    # raw garbage on the socket: the server answers 400 or closes, and lives on
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as c:
        c.sendall(b"\x00\x01GARBAGE / HTTP/9.9\r\n\r\n")
        try:
            c.recv(4096)
        except OSError:
            pass
    assert server.get("/healthz").status_code == 200


# ------------------------------------------------------------------ settings

def test_config_masks_secrets(tmp_path):
    r = run_cli(["config"], env={
        "ESTEIRA_DATABASE_URL": "postgres://u:hunter2@h/db",
        "ESTEIRA_BROKER_URL": "amqp://guest:rabbitpw@127.0.0.1:5672/%2F",
        "ESTEIRA_SECRET": "signing-secret-value",
        "ESTEIRA_TOKEN": "es_0123456789abcdef_tokensecret",
        "ESTEIRA_DATA_DIR": str(tmp_path),
    }, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    for secret in ("hunter2", "rabbitpw", "signing-secret-value", "tokensecret"):
        assert secret not in out, f"{secret} printed by esteira config:\n{out}"
    lines = dict(l.split("=", 1) for l in r.stdout.splitlines() if "=" in l)
    # masked, not dropped: the rest of the URL stays readable
    assert lines["ESTEIRA_DATABASE_URL"] == "postgres://u:***@h/db", lines
    assert lines["ESTEIRA_DATA_DIR"] == str(tmp_path)
    assert set(settings_of_source()) <= set(lines), set(settings_of_source()) - set(lines)


def test_invalid_setting_fails_at_start(tmp_path):
    r = run_cli(["up"], env={"ESTEIRA_PORT": "abc", "ESTEIRA_DATA_DIR": str(tmp_path / "d")},
                cwd=str(tmp_path), timeout=20)
    assert r.returncode != 0
    assert "ESTEIRA_PORT" in r.stderr, r.stderr
    assert "abc" in r.stderr, r.stderr
    # it failed before touching anything
    assert not (tmp_path / "d").exists()
    r = run_cli(["up"], env={"ESTEIRA_JOB_KINDS": "noop:attempts=zero",
                             "ESTEIRA_DATA_DIR": str(tmp_path / "d2")}, cwd=str(tmp_path), timeout=20)
    assert r.returncode != 0
    assert "attempts" in r.stderr, r.stderr


def test_help_lists_every_setting():
    r = run_cli(["--help"])
    assert r.returncode == 0
    for name in settings_of_source():
        assert name in r.stdout, f"{name} missing from esteira --help"
        flag = "--" + name[len("ESTEIRA_"):].lower().replace("_", "-")
        assert flag in r.stdout, f"{flag} missing from esteira --help"
    for cmd in ("up", "serve", "work", "migrate", "config", "keys", "dlq"):
        assert re.search(r"^\s+%s\b" % cmd, r.stdout, re.M), cmd
    assert run_cli(["help"]).stdout == r.stdout


def test_unknown_command_fails():
    r = run_cli(["frobnicate"])
    assert r.returncode == 2
    assert "frobnicate" in r.stderr


def test_flags_override_environment(tmp_path):
    # flags > environment > .env > defaults
    (tmp_path / ".env").write_text("ESTEIRA_PORT=7001\nESTEIRA_WORKERS=7\nESTEIRA_PREFETCH=9\n")
    r = run_cli(["--port=7003", "config"], env={"ESTEIRA_PORT": "7002", "ESTEIRA_WORKERS": "6"},
                cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "ESTEIRA_PORT=7003" in lines, r.stdout
    assert "ESTEIRA_WORKERS=6" in lines, r.stdout
    assert "ESTEIRA_PREFETCH=9" in lines, r.stdout


def test_server_refuses_second_bind(server, start_server):
    # a second server on the same port fails instead of silently not serving
    s2 = start_server(wait=False, port=server.port)
    s2.spawn()
    rc = s2.proc.wait(20)
    assert rc != 0
    assert requests.get(server.url + "/healthz", timeout=5).status_code == 200
