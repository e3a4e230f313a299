"""Datasets end to end: definitions over POST /v1/datasets and from
ESTEIRA_DATASETS_DIR, and the rows CSV uploads load, read back per tenant,
typed, in key order, page by page and filtered by column.

The rows tests run on the embedded backends, and on PostgreSQL too when
ESTEIRA_TEST_DISTRIBUTED=1 (scripts/services running)."""

import json
import os
import time
import uuid
from decimal import Decimal

import pytest
import requests

from conftest import error_shape, wait_for
from distributed import fresh_backends

DISTRIBUTED = os.environ.get("ESTEIRA_TEST_DISTRIBUTED") == "1"


def people_def(name=None):
    """A dataset with a column of every type, headers that differ from names."""
    return {
        "name": name or "people_" + uuid.uuid4().hex[:8],
        "columns": [
            {"name": "person_id", "header": "Id", "type": "bigint", "required": True},
            {"name": "nick", "header": "Nick", "type": "text", "maxLength": 20},
            {"name": "age", "type": "integer", "nonNegative": True},
            {"name": "score", "header": "Score", "type": "decimal", "precision": 30, "scale": 3},
            {"name": "active", "type": "boolean"},
            {"name": "born", "type": "date"},
            {"name": "seen_at", "header": "seenAt", "type": "timestamp"},
            {"name": "ref", "type": "uuid"},
            {"name": "mail", "header": "eMail", "type": "email"},
            {"name": "meta", "type": "json"},
        ],
        "key": "Id",
    }


PEOPLE_HEADER = "Id,Nick,age,Score,active,born,seenAt,ref,eMail,meta\n"


def person(i, **over):
    v = {
        "Id": str(i),
        "Nick": f"nick {i}",
        "age": str(20 + i % 50),
        "Score": f"{i}.5",
        "active": "yes" if i % 2 else "no",
        "born": "1990-02-28",
        "seenAt": "2024-05-06T07:08:09.5+02:00",
        "ref": f"00000000-0000-4000-8000-{i:012d}".upper(),
        "eMail": f"p{i}@Example.COM",
        "meta": '"{""n"": %d, ""tags"": [""a""]}"' % i,
    }
    v.update(over)
    return ",".join(v[h] for h in PEOPLE_HEADER.strip().split(",")) + "\n"


def auth(token):
    return {"Authorization": "Bearer " + token} if token else {}


def upload(s, dataset, body, token=None):
    """Uploads a CSV and waits for it to be loaded; returns its final status."""
    h = {"Content-Type": "text/csv", **auth(token)}
    r = requests.post(f"{s.url}/v1/uploads?dataset={dataset}", data=body.encode(), headers=h,
                      timeout=60)
    assert r.status_code == 202, r.text
    uid = r.json()["id"]
    last = {}

    def done():
        last.update(s.get(f"/v1/uploads/{uid}", token=token).json())
        return last["status"] in ("done", "failed")

    wait_for(done, timeout=60, what=f"upload {uid} loaded")
    assert last["status"] == "done", last
    return last


def define(s, d, token=None, expect=201, headers=None):
    r = s.post("/v1/datasets", json=d, token=token, headers=headers)
    assert r.status_code == expect, r.text
    return r.json()


def rows(s, name, query="", token=None, expect=200):
    r = s.get(f"/v1/datasets/{name}/rows" + (f"?{query}" if query else ""), token=token)
    assert r.status_code == expect, r.text
    return r.json()


def all_rows(s, name, query="", limit=7, token=None, cursor=None):
    """Every row (after cursor), following nextCursor page by page."""
    out = []
    for _ in range(10000):
        q = "&".join(x for x in (query, f"limit={limit}", cursor and f"cursor={cursor}") if x)
        page = rows(s, name, q, token=token)
        assert len(page["items"]) <= limit
        out += page["items"]
        cursor = page["nextCursor"]
        if not cursor:
            return out
        assert page["items"], "a page with a cursor after it holds rows"
    raise AssertionError("pagination does not end")


def create_keys(s, *specs):
    """A token per (tenant, scopes); returns once requests need one."""
    tokens = []
    for tenant, scopes in specs:
        r = s.cli("keys", "create", "--tenant", tenant, "--scopes", scopes)
        assert r.returncode == 0, r.stderr
        tokens.append(r.stdout.strip())
    wait_for(lambda: s.get("/v1/datasets", token="").status_code == 401, timeout=5,
             what="closed mode")
    return tokens


@pytest.fixture(params=["embedded", "postgres"])
def any_server(request, start_server):
    """`esteira up` on the embedded backends, or on PostgreSQL (+ RabbitMQ,
    Redis, S3) when the distributed services are there."""
    if request.param == "postgres":
        if not DISTRIBUTED:
            pytest.skip("PostgreSQL: set ESTEIRA_TEST_DISTRIBUTED=1 with scripts/services running")
        env = fresh_backends()
        env.pop("_DB")
        return start_server(env=env)
    return start_server()


# ------------------------------------------------------------------ definitions


def test_define_get_list_and_conflicts(server):
    d = people_def()
    made = define(server, d)
    # the definition as stored: defaults filled in, the key by column name
    assert made["name"] == d["name"] and made["table"] == "ds_" + d["name"]
    assert made["key"] == "person_id"
    assert [c["name"] for c in made["columns"]] == [c["name"] for c in d["columns"]]
    nick = made["columns"][1]
    assert nick == {"name": "nick", "header": "Nick", "type": "text", "required": False,
                    "trim": True, "maxLength": 20}
    assert made["columns"][2]["header"] == "age"  # the column name when no header is given
    assert made["columns"][3]["precision"] == 30 and made["columns"][3]["scale"] == 3

    r = server.get(f"/v1/datasets/{d['name']}")
    assert r.status_code == 200 and r.json() == made
    debts = server.get("/v1/datasets/debts").json()
    assert debts["key"] == "debt_id"
    assert [c["header"] for c in debts["columns"]] == [
        "name", "governmentId", "email", "debtAmount", "debtDueDate", "debtId"]
    other = define(server, people_def("aaa_" + uuid.uuid4().hex[:6]))
    # built-in first, then by name
    names = [x["name"] for x in server.get("/v1/datasets").json()["items"]]
    assert names == ["debts", other["name"], d["name"]]

    # names are taken once: the same or another definition, or a built-in name
    body = error_shape(server.post("/v1/datasets", json=d), 409, "conflict")
    assert d["name"] in body["error"]["message"]
    changed = json.loads(json.dumps(d))
    changed["columns"][1]["maxLength"] = 30
    error_shape(server.post("/v1/datasets", json=changed), 409, "conflict")
    debts_def = {k: debts[k] for k in ("name", "columns", "key")}
    error_shape(server.post("/v1/datasets", json=debts_def), 409, "conflict")
    # a client repeating its POST with an Idempotency-Key gets the dataset back...
    r = server.post("/v1/datasets", json=d, headers={"Idempotency-Key": "k1"})
    assert r.status_code == 200 and r.json() == made, r.text
    assert r.headers.get("Idempotent-Replayed") == "true"
    # ...but never a changed one
    error_shape(server.post("/v1/datasets", json=changed, headers={"Idempotency-Key": "k1"}),
                409, "conflict")
    assert server.get(f"/v1/datasets/{d['name']}").json() == made

    body = error_shape(server.get("/v1/datasets/nope"), 404, "not_found")
    assert "nope" in body["error"]["message"]
    error_shape(server.get("/v1/datasets/nope/rows"), 404, "not_found")
    error_shape(server.get("/v1/datasets/Bad%20Name"), 404, "not_found")


@pytest.mark.parametrize("change, field, problem", [
    (lambda d: d.pop("key"), "key", "required"),
    (lambda d: d.update(key="missing"), "key", "no column 'missing'"),
    (lambda d: d.update(name="Bad-Name"), "name", "must match"),
    (lambda d: d.update(extra=1), "extra", "unknown field"),
    (lambda d: d.update(columns=[]), "columns", "non-empty"),
    (lambda d: d["columns"][3].update(type="money"), "columns[3].type", "unknown type 'money'"),
    (lambda d: d["columns"][3].pop("precision"), "columns[3].precision", "required for decimal"),
    (lambda d: d["columns"][2].update(name="select"), "columns[2].name", "reserved"),
    (lambda d: d["columns"][2].update(name="line"), "columns[2].name", "reserved"),
    (lambda d: d["columns"][5].update(name="person_id"), "columns[5].name", "repeated"),
    (lambda d: d["columns"][1].update(nonNegative=True), "columns[1].nonNegative", "only for"),
    (lambda d: d["columns"][0].update(required=False), "key", "must be required"),
])
def test_invalid_definitions_name_the_field(server, change, field, problem):
    d = people_def()
    change(d)
    body = error_shape(server.post("/v1/datasets", json=d), 400, "validation_failed")
    details = body["error"]["details"]
    assert len(details) == 1 and details[0]["field"] == field, details
    assert problem in details[0]["problem"], details
    # nothing was defined
    if isinstance(d.get("name"), str):
        assert server.get(f"/v1/datasets/{d['name']}").status_code == 404


def test_malformed_bodies_and_scopes(server):
    error_shape(server.post("/v1/datasets", data="{", headers={"Content-Type": "application/json"}),
                400)
    error_shape(server.post("/v1/datasets", json=[1]), 400, "validation_failed")
    error_shape(server.post("/v1/datasets", data="x", headers={"Content-Type": "text/plain"}), 415)
    admin, reader, ingest = create_keys(server, ("t1", "admin"), ("t1", "read"), ("t1", "ingest"))
    d = people_def()
    # defining is for admin keys, reading for read keys
    error_shape(server.post("/v1/datasets", json=d, token=reader), 403, "forbidden")
    error_shape(server.post("/v1/datasets", json=d, token=ingest), 403, "forbidden")
    define(server, d, token=admin)
    assert server.get(f"/v1/datasets/{d['name']}", token=reader).status_code == 200
    assert server.get(f"/v1/datasets/{d['name']}/rows", token=reader).status_code == 200
    error_shape(server.get(f"/v1/datasets/{d['name']}/rows", token=ingest), 403, "forbidden")
    error_shape(server.get("/v1/datasets", token=""), 401, "unauthorized")


# ------------------------------------------------------------------ rows


def test_rows_are_typed_and_in_key_order(any_server):
    s = any_server
    d = people_def()
    define(s, d)
    body = (PEOPLE_HEADER + person(3) + person(1, Nick='"tab\there ""q"" \\ é"', Score="-0.250",
                                                age="", active="", born="", seenAt="", ref="",
                                                eMail="", meta="")
            + person(2, Score="123456789012345678901234567.125", meta='"[1, 2.5, null, true]"')
            + person(10) + person(4, age="-1"))
    st = upload(s, d["name"], body)
    assert st["rows"] == {"total": 5, "inserted": 4, "duplicate": 0, "rejected": 1}, st
    page = rows(s, d["name"])
    assert page["nextCursor"] is None
    items = page["items"]
    assert [r["Id"] for r in items] == [1, 2, 3, 10]  # by the key, as numbers (10 after 3)
    one, two, three = items[0], items[1], items[2]
    assert one == {"Id": 1, "Nick": "tab\there \"q\" \\ é", "age": None, "Score": -0.25,
                   "active": None, "born": None, "seenAt": None, "ref": None, "eMail": None,
                   "meta": None, "_upload": st["id"], "_line": 3}
    assert three == {"Id": 3, "Nick": "nick 3", "age": 23, "Score": 3.5, "active": True,
                     "born": "1990-02-28", "seenAt": "2024-05-06T05:08:09.500Z",
                     "ref": "00000000-0000-4000-8000-000000000003", "eMail": "p3@example.com",
                     "meta": {"n": 3, "tags": ["a"]}, "_upload": st["id"], "_line": 2}
    assert two["meta"] == [1, 2.5, None, True] and two["active"] is False
    assert two["_line"] == 4
    # numbers are JSON numbers with the digits of the table (a decimal(30,3) does
    # not fit a double); the spelling may vary by engine, never the value
    # (SQLite keeps decimals as doubles: there, only their first 15 digits)
    r = s.get(f"/v1/datasets/{d['name']}/rows?Id=2")
    score = json.loads(r.text, parse_float=Decimal)["items"][0]["Score"]
    want = Decimal("123456789012345678901234567.125")
    if s.env.get("ESTEIRA_DATABASE_URL", "").startswith("postgres"):
        assert score == want
    else:
        assert abs(score - want) < Decimal("1e13"), score


def test_pages_follow_the_key_without_gaps_or_repeats(any_server):
    s = any_server
    d = people_def()
    define(s, d)
    ids = list(range(1, 131))
    # out of order in the file, in two uploads
    upload(s, d["name"], PEOPLE_HEADER + "".join(person(i) for i in reversed(ids[:70])))
    upload(s, d["name"], PEOPLE_HEADER + "".join(person(i) for i in ids[70:]))
    got = all_rows(s, d["name"], limit=9)
    assert [r["Id"] for r in got] == ids

    # the default page is 50, the largest 1000
    page = rows(s, d["name"])
    assert len(page["items"]) == 50 and page["nextCursor"]
    assert len(rows(s, d["name"], "limit=1000")["items"]) == 130
    for bad in ("limit=0", "limit=1001", "limit=x"):
        body = error_shape(s.get(f"/v1/datasets/{d['name']}/rows?{bad}"), 400, "validation_failed")
        assert body["error"]["details"][0]["field"] == "limit"

    # a cursor is stable: rows loaded after it was given appear in their place
    first = rows(s, d["name"], "limit=10")
    assert [r["Id"] for r in first["items"]] == ids[:10]
    upload(s, d["name"], PEOPLE_HEADER + person(1000) + person(5) + person(15))  # 5 is a duplicate
    rest = all_rows(s, d["name"], cursor=first["nextCursor"], limit=50)
    assert [r["Id"] for r in rest] == ids[10:] + [1000]
    # the same cursor again answers the same page
    assert rows(s, d["name"], f"cursor={first['nextCursor']}&limit=5") == \
        rows(s, d["name"], f"cursor={first['nextCursor']}&limit=5")

    for bad in ("zzz!", "", "AA", "eA"):  # not base64url / not a key of this dataset
        body = error_shape(s.get(f"/v1/datasets/{d['name']}/rows?cursor={bad}"), 400,
                           "validation_failed")
        assert body["error"]["details"][0]["field"] == "cursor", body


def test_filters_by_header_or_column_name(any_server):
    s = any_server
    d = people_def()
    define(s, d)
    body = PEOPLE_HEADER + "".join(
        person(i, Nick=f"group {i % 3}", born="" if i % 4 == 0 else "1990-02-28")
        for i in range(1, 25))
    upload(s, d["name"], body)
    n = d["name"]

    def ids(q):
        return [r["Id"] for r in all_rows(s, n, q, limit=4)]

    assert ids("Nick=group%201") == [i for i in range(1, 25) if i % 3 == 1]
    assert ids("nick=group+1") == ids("Nick=group%201")  # column name, '+' as a space
    # several filters: all must hold, with paging
    assert ids("Nick=group%200&active=true") == [i for i in range(1, 25) if i % 3 == 0 and i % 2]
    # values are compared as they are stored: normalised like the CSV's
    assert ids("ref=00000000-0000-4000-8000-000000000007") == [7]
    assert ids("ref=%2000000000-0000-4000-8000-000000000007%20") == [7]  # trimmed
    assert ids("eMail=p8@EXAMPLE.com") == [8]
    assert ids("Score=8.50") == [8] and ids("score=8.5") == [8]
    assert ids("active=YES&Id=9") == [9] and ids("active=0&Id=9") == []
    assert ids("seenAt=2024-05-06T05:08:09.5Z&Id=3") == [3]
    assert ids("born=1990-02-28") == [i for i in range(1, 25) if i % 4]
    assert ids("born=") == [4, 8, 12, 16, 20, 24]  # empty = the NULLs
    assert ids("meta=%7B%22n%22%3A%205%2C%20%22tags%22%3A%5B%22a%22%5D%7D") == [5]  # json, compacted
    assert ids("person_id=11") == [11] and ids("Id=11&age=31") == [11]
    assert ids("Id=99") == []

    body = error_shape(s.get(f"/v1/datasets/{n}/rows?bogus=1&Id=x&born=2023-02-30&Nick=a&nick=b"
                             "&Id=1"), 400, "validation_failed")
    problems = {(p["field"], p["problem"].split(" (")[0]) for p in body["error"]["details"]}
    assert problems == {("bogus", "not a column of this dataset"), ("Id", "not an integer"),
                        ("born", "not a valid date"), ("nick", "this column is filtered twice")}, body
    body = error_shape(s.get(f"/v1/datasets/{n}/rows?Id="), 400, "validation_failed")
    assert body["error"]["details"] == [{"field": "Id", "problem": "required"}]
    error_shape(s.get(f"/v1/datasets/{n}/rows?age=%zz"), 400, "validation_failed")


def test_rows_belong_to_their_tenant(start_server):
    s = start_server()
    acme, other, admin = create_keys(s, ("acme", "ingest,read"), ("other", "ingest,read"),
                                     ("ops", "admin"))
    d = people_def()
    define(s, d, token=admin)
    # datasets are shared: every tenant sees the definition and loads into it
    assert s.get(f"/v1/datasets/{d['name']}", token=other).status_code == 200
    upload(s, d["name"], PEOPLE_HEADER + "".join(person(i) for i in range(1, 11)), token=acme)
    # the same keys are another tenant's rows, not duplicates
    st = upload(s, d["name"], PEOPLE_HEADER + "".join(person(i, Nick="theirs") for i in range(5, 16)),
                token=other)
    assert st["rows"]["inserted"] == 11
    a = all_rows(s, d["name"], token=acme)
    o = all_rows(s, d["name"], token=other)
    assert [r["Id"] for r in a] == list(range(1, 11)) and {r["Nick"] for r in a} != {"theirs"}
    assert [r["Id"] for r in o] == list(range(5, 16)) and {r["Nick"] for r in o} == {"theirs"}
    assert rows(s, d["name"], "Id=12", token=acme)["items"] == []
    # a cursor of one tenant only pages through the caller's own rows
    cur = rows(s, d["name"], "limit=2", token=other)["nextCursor"]
    assert [r["Id"] for r in all_rows(s, d["name"], cursor=cur, token=acme)] == list(range(7, 11))
    assert rows(s, d["name"], token=admin)["items"] == []
    assert int(s.sql1(f"SELECT count(*) FROM ds_{d['name']}")) == 21


def test_debts_rows(start_server):
    s = start_server()
    header = "name,governmentId,email,debtAmount,debtDueDate,debtId\n"
    body = header + "".join(
        f"Name {i},{1000 + i},p{i}@example.com,{i}00.1,2024-01-{i:02d},"
        f"00000000-0000-4000-8000-{i:012d}\n" for i in range(1, 6))
    upload(s, "debts", body)
    got = rows(s, "debts", "debtId=00000000-0000-4000-8000-000000000003")["items"]
    assert len(got) == 1
    assert {k: v for k, v in got[0].items() if k != "_upload"} == {
        "name": "Name 3", "governmentId": "1003", "email": "p3@example.com", "debtAmount": 300.1,
        "debtDueDate": "2024-01-03", "debtId": "00000000-0000-4000-8000-000000000003", "_line": 4}
    assert [r["debtAmount"] for r in rows(s, "debts")["items"]] == [100.1, 200.1, 300.1, 400.1, 500.1]
    assert [r["debtId"][-1] for r in rows(s, "debts", "debt_due_date=2024-01-05")["items"]] == ["5"]


# ------------------------------------------------------------------ ESTEIRA_DATASETS_DIR


def write_defs(path, **defs):
    os.makedirs(path, exist_ok=True)
    for fname, d in defs.items():
        with open(os.path.join(path, fname), "w") as f:
            f.write(d if isinstance(d, str) else json.dumps(d))


def test_datasets_dir_defines_at_start(start_server, workdir):
    ddir = os.path.join(workdir, "defs")
    a, b = people_def("dir_a"), people_def("dir_b")
    write_defs(ddir, **{"a.json": a, "b.json": b, "notes.txt": "not a definition",
                        ".hidden.json": "{"})
    env = {"ESTEIRA_DATASETS_DIR": ddir}
    s = start_server(env=env)
    names = [x["name"] for x in s.get("/v1/datasets").json()["items"]]
    assert names == ["debts", "dir_a", "dir_b"]
    assert s.get("/v1/datasets/dir_a").json()["key"] == "person_id"
    upload(s, "dir_b", PEOPLE_HEADER + person(1) + person(2))
    assert [r["Id"] for r in rows(s, "dir_b")["items"]] == [1, 2]
    # defined once: the API refuses the name, a restart with the same files is fine
    error_shape(s.post("/v1/datasets", json=a), 409, "conflict")
    s.restart()
    assert [r["Id"] for r in rows(s, "dir_b")["items"]] == [1, 2]

    # a file whose definition differs from the stored one stops the start, naming it
    s.stop()
    changed = dict(b, key="ref")
    changed["columns"] = [dict(c, required=True) if c["name"] == "ref" else c for c in b["columns"]]
    write_defs(ddir, **{"b.json": changed})
    s.spawn()
    assert s.proc.wait(30) != 0
    log = s.log_text()
    assert "b.json" in log and "dir_b" in log and "already defined otherwise" in log, log
    write_defs(ddir, **{"b.json": b})
    s.start()
    assert [r["Id"] for r in rows(s, "dir_b")["items"]] == [1, 2]


@pytest.mark.parametrize("content, says", [
    ("{\"name\": \"x\",", "not JSON"),
    (json.dumps({**people_def("dir_bad"), "key": "nope"}), "key: no column 'nope'"),
    (json.dumps({**people_def("dir_bad"), "columns": [{"name": "a", "type": "money"}]}),
     "columns[0].type: unknown type 'money'"),
    (json.dumps({"name": "debts", "columns": [{"name": "a", "type": "text", "required": True}],
                 "key": "a"}), "built-in"),
])
def test_datasets_dir_refuses_bad_files(start_server, workdir, content, says):
    ddir = os.path.join(workdir, "defs")
    write_defs(ddir, **{"good.json": people_def("dir_good"), "zz_bad.json": content})
    s = start_server(env={"ESTEIRA_DATASETS_DIR": ddir}, wait=False)
    s.spawn()
    assert s.proc.wait(30) != 0
    log = s.log_text()
    assert "zz_bad.json" in log and says in log, log


def test_datasets_dir_missing_is_an_error(start_server, workdir):
    s = start_server(env={"ESTEIRA_DATASETS_DIR": os.path.join(workdir, "nowhere")}, wait=False)
    s.spawn()
    assert s.proc.wait(30) != 0
    assert "nowhere" in s.log_text()
