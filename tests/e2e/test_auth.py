"""API keys, scopes and tenants (include/esteira/auth.h)."""

import hashlib
import json
import re

import requests

from conftest import error_shape, wait_for


def create_key(s, tenant, scopes, name=None):
    """`esteira keys create` on the server's store; returns (token, key id)."""
    args = ["keys", "create", "--tenant", tenant, "--scopes", scopes]
    if name:
        args += ["--name", name]
    r = s.cli(*args)
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    m = re.fullmatch(r"es_([0-9a-f]{16})_([A-Za-z0-9_-]{20,})", token)
    assert m, f"not a token: {token!r}"
    assert m.group(1) in r.stderr and "only once" in r.stderr, r.stderr
    return token, m.group(1)


def closed(s):
    """True once the server refuses a request without a token (it re-reads
    whether keys exist at most once a second)."""
    return s.get("/v1/jobs", token="").status_code == 401


def test_open_mode_on_loopback_without_keys(server):
    r = server.get("/v1/jobs")
    assert r.status_code == 200, r.text
    j = server.create_job()
    assert j["tenant"] == "default"
    assert "no API keys exist" in server.log_text()


def test_keys_scopes_and_revocation(server):
    early = server.create_job()  # tenant default, made in open mode
    read_tok, read_id = create_key(server, "acme", "read", name="dashboard")
    wait_for(lambda: closed(server), timeout=5, what="401 without a token once a key exists")

    r = server.get("/v1/jobs", token="")
    error_shape(r, 401, "unauthorized")
    assert r.headers.get("WWW-Authenticate") == "Bearer"
    # bad tokens of every shape
    for bad in ("es_0123456789abcdef_notthesecretatall", read_tok[:-1] + ("A" if read_tok[-1] != "A" else "B"),
                "garbage", "es_" + read_id + "_", "es_" + "z" * 16 + "_abc"):
        error_shape(server.get("/v1/jobs", token=bad), 401, "unauthorized")
    error_shape(server.get("/v1/jobs", headers={"Authorization": "Basic " + read_tok}), 401)
    # public routes stay public
    assert server.get("/healthz", token="").status_code == 200
    assert server.get("/metrics", token="").status_code == 200
    assert server.get("/openapi.json", token="").status_code == 200

    # read scope: may read, may not create
    r = server.get("/v1/jobs", token=read_tok)
    assert r.status_code == 200, r.text
    assert r.json()["items"] == [], "tenant acme sees nothing of tenant default"
    error_shape(server.get(f"/v1/jobs/{early['id']}", token=read_tok), 404)
    error_shape(server.post("/v1/jobs", json={"kind": "noop"}, token=read_tok), 403, "forbidden")
    assert server.get("/v1/dlq", token=read_tok).status_code == 200
    # the bearer scheme is case-insensitive
    assert server.get("/v1/jobs", headers={"Authorization": "bearer " + read_tok}).status_code == 200

    # an ingest-only key may not read jobs
    ingest_tok, _ = create_key(server, "acme", "ingest")
    error_shape(server.get("/v1/jobs", token=ingest_tok), 403, "forbidden")

    # revoked: 401 from then on, and the other keys still work
    r = server.cli("keys", "revoke", read_id)
    assert r.returncode == 0, r.stderr
    error_shape(server.get("/v1/jobs", token=read_tok), 401, "unauthorized")
    assert server.get("/v1/jobs", token=ingest_tok).status_code == 403
    assert server.cli("keys", "revoke", read_id).returncode != 0, "revoking twice fails"
    assert server.cli("keys", "revoke", "0000000000000000").returncode != 0


def test_tenants_are_isolated(server):
    acme_tok, _ = create_key(server, "acme", "admin")
    other_tok, _ = create_key(server, "other", "all")
    acme_read, _ = create_key(server, "acme", "read")
    wait_for(lambda: closed(server), timeout=5, what="closed mode")

    r = server.post("/v1/jobs", json={"kind": "noop"}, token=acme_tok)
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["tenant"] == "acme"
    dead = server.post("/v1/jobs", json={"kind": "noop", "payload": {"fail": True, "permanent": True}},
                       token=acme_tok).json()

    server.token = acme_tok
    server.wait_job(job["id"], "done")
    server.wait_job(dead["id"], "dead")
    server.token = None

    # tenant other: 404 for acme's jobs, whatever the route
    for method, path in (("GET", f"/v1/jobs/{job['id']}"), ("POST", f"/v1/jobs/{job['id']}/cancel"),
                         ("POST", f"/v1/jobs/{dead['id']}/retry"), ("POST", f"/v1/dlq/{dead['id']}/retry"),
                         ("DELETE", f"/v1/dlq/{dead['id']}")):
        error_shape(server.request(method, path, token=other_tok), 404, "not_found")
    assert server.get("/v1/jobs", token=other_tok).json()["items"] == []
    assert server.get("/v1/dlq", token=other_tok).json()["items"] == []
    assert server.get("/v1/jobs?status=done", token=other_tok).json()["items"] == []
    # the dead job is still there for its owner: the DELETE above did nothing
    assert server.get(f"/v1/jobs/{dead['id']}", token=acme_tok).json()["status"] == "dead"

    # another key of the same tenant sees them
    ids = {x["id"] for x in server.get("/v1/jobs", token=acme_read).json()["items"]}
    assert ids == {job["id"], dead["id"]}
    assert server.get(f"/v1/jobs/{job['id']}", token=acme_read).status_code == 200

    # the same Idempotency-Key in two tenants names two jobs
    h = {"Idempotency-Key": "shared-key"}
    a = server.post("/v1/jobs", json={"kind": "noop"}, headers=h, token=acme_tok)
    o = server.post("/v1/jobs", json={"kind": "noop"}, headers=h, token=other_tok)
    assert a.status_code == 201 and o.status_code == 201
    assert a.json()["id"] != o.json()["id"]
    assert o.json()["tenant"] == "other"

    # the CLI sends ESTEIRA_TOKEN
    r = server.cli("jobs", "list", env={"ESTEIRA_TOKEN": acme_read})
    assert r.returncode == 0, r.stderr
    assert job["id"] in r.stdout
    r = server.cli("status", job["id"], env={"ESTEIRA_TOKEN": other_tok})
    assert r.returncode == 1 and "404" in r.stderr


def test_keys_list_never_prints_secrets(server):
    tokens = [create_key(server, "acme", "read", name="one"), create_key(server, "beta", "admin")]
    r = server.cli("keys", "list")
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    keys = json.loads(r.stdout)
    assert [(k["id"], k["tenant"], k["scopes"]) for k in keys] == [
        (tokens[0][1], "acme", "read"), (tokens[1][1], "beta", "admin")]
    assert keys[0]["name"] == "one"
    for token, _ in tokens:
        secret = token.split("_", 2)[2]
        assert secret not in out
        assert hashlib.sha256(secret.encode()).hexdigest() not in out
    # revocation shows in the list
    assert server.cli("keys", "revoke", tokens[0][1]).returncode == 0
    keys = json.loads(server.cli("keys", "list").stdout)
    assert "revokedAt" in keys[0] and "revokedAt" not in keys[1]
    # nor does the server log hold a token it was sent
    server.get("/v1/jobs", token=tokens[1][0])
    assert tokens[1][0].split("_", 2)[2] not in server.log_text()


def test_keys_create_validates(server):
    r = server.cli("keys", "create", "--tenant", "acme", "--scopes", "read,superuser")
    assert r.returncode == 2 and "superuser" in r.stderr
    r = server.cli("keys", "create", "--tenant", "Bad Tenant!", "--scopes", "read")
    assert r.returncode == 2 and "tenant" in r.stderr
    r = server.cli("keys", "create", "--tenant", "acme")
    assert r.returncode == 2
    assert server.cli("keys", "list").stdout.strip() == "[]"
    # still open: no key was made
    assert server.get("/v1/jobs", token="").status_code == 200


def test_auth_required_setting(start_server):
    s = start_server(env={"ESTEIRA_AUTH": "required"})
    error_shape(s.get("/v1/jobs", token=""), 401, "unauthorized")
    tok, _ = create_key(s, "acme", "admin")
    assert s.get("/v1/jobs", token=tok).status_code == 200


def test_public_bind_needs_keys(start_server):
    s = start_server(env={"ESTEIRA_HOST": "0.0.0.0"}, wait=False)
    s.spawn()
    rc = s.proc.wait(20)
    assert rc != 0
    log = s.log_text()
    assert "refusing to listen on 0.0.0.0 without API keys" in log, log
    assert "keys create" in log, "the message says how to fix it"

    tok, _ = create_key(s, "acme", "admin")
    s.start()
    # bound to every address, so never open: a token is needed from the first request
    error_shape(s.get("/v1/jobs", token=""), 401)
    assert s.get("/v1/jobs", token=tok).status_code == 200
    assert requests.get(s.url + "/healthz", timeout=5).status_code == 200
