"""CSV uploads end to end on the embedded backends: the file streamed in,
batches through the broker, rows in the dataset's table exactly once, batch
objects, rejects, duplicates, and the errors a client can cause."""

import csv
import io
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid

import requests

from conftest import ROOT, wait_for

GEN = os.path.join(ROOT, "bench", "gen_debts_csv.py")
HEADER = "name,governmentId,email,debtAmount,debtDueDate,debtId\n"


def row(i, amount="10.00", due="2024-01-31", email=None):
    uid = f"00000000-0000-4000-8000-{i:012d}"
    return f"Name {i},{10000000000 + i},{email or f'p{i}@example.com'},{amount},{due},{uid}\n"


def uuid_from(rnd):
    return uuid.UUID(int=rnd.getrandbits(128), version=4)


def upload(s, body, dataset="debts", ctype="text/csv", headers=None, path="/v1/uploads"):
    h = {"Content-Type": ctype}
    h.update(headers or {})
    q = f"?dataset={dataset}" if dataset else ""
    return requests.post(s.url + path + q, data=body, headers=h, timeout=60)


def wait_done(s, uid, timeout=120):
    last = {}

    def done():
        last.update(s.get(f"/v1/uploads/{uid}").json())
        return last["status"] in ("done", "failed")

    wait_for(done, timeout=timeout, interval=0.05, what=f"upload {uid} finished")
    return last


def table_count(s):
    return int(s.sql1("SELECT count(*) FROM ds_debts"))


def generate(tmp_path, n, bad=None, seed=7):
    out = str(tmp_path / f"debts_{n}.csv")
    args = ["/usr/bin/python3", GEN, str(n), out, "--seed", str(seed)]
    if bad:
        args += ["--bad", str(bad)]
    subprocess.run(args, check=True, capture_output=True)
    return out


def test_upload_loads_every_row_once_with_batches_and_objects(start_server):
    s = start_server(env={"ESTEIRA_BATCH_ROWS": "100"})
    body = HEADER + "".join(row(i) for i in range(1, 451))
    r = upload(s, body.encode())
    assert r.status_code == 202, r.text
    st = r.json()
    assert st["status"] == "queued" and st["dataset"] == "debts"
    assert st["rows"]["total"] == 450 and st["batches"]["total"] == 5
    assert st["bytes"] == len(body.encode())
    st = wait_done(s, st["id"])
    assert st["status"] == "done", st
    assert st["rows"] == {"total": 450, "inserted": 450, "duplicate": 0, "rejected": 0}
    assert st["batches"] == {"total": 5, "done": 5, "failed": 0}
    assert st["startedAt"] and st["finishedAt"]
    assert table_count(s) == 450
    # provenance: each row knows its upload and its line in the file
    line, amount = s.sql("SELECT line, debt_amount FROM ds_debts WHERE debt_id ="
                         " '00000000-0000-4000-8000-000000000007'")[0]
    assert int(line) == 8
    # the source and one JSON object per batch, of the normalised rows
    blobs = os.path.join(s.data_dir, "blobs", "uploads", st["id"])
    with open(os.path.join(blobs, "source.csv"), "rb") as f:
        assert f.read() == body.encode()
    for n in range(1, 6):
        with open(os.path.join(blobs, f"batch-{n:06d}.json")) as f:
            rows = json.load(f)
        assert len(rows) == (100 if n < 5 else 50)
        assert rows[0]["debtId"] == f"00000000-0000-4000-8000-{(n - 1) * 100 + 1:012d}"
        assert rows[0]["debtAmount"] == 10.0 and rows[0]["debtDueDate"] == "2024-01-31"
    # listed, newest first, with filters
    lst = s.get("/v1/uploads?dataset=debts&status=done").json()
    assert [u["id"] for u in lst["items"]] == [st["id"]]
    assert s.get("/v1/uploads?dataset=nothing").json()["items"] == []


def test_same_file_twice_is_all_duplicates(start_server):
    s = start_server(env={"ESTEIRA_BATCH_ROWS": "50"})
    body = (HEADER + "".join(row(i) for i in range(1, 201))).encode()
    a = wait_done(s, upload(s, body).json()["id"])
    b = wait_done(s, upload(s, body).json()["id"])
    assert a["rows"]["inserted"] == 200 and a["rows"]["duplicate"] == 0
    assert b["status"] == "done"
    assert b["rows"] == {"total": 200, "inserted": 0, "duplicate": 200, "rejected": 0}
    # overlapping files: only the new keys go in; a key twice in one file counts once
    c_body = (HEADER + "".join(row(i) for i in range(150, 260)) + row(255)).encode()
    c = wait_done(s, upload(s, c_body).json()["id"])
    assert c["rows"] == {"total": 111, "inserted": 59, "duplicate": 52, "rejected": 0}
    assert table_count(s) == 259
    assert int(s.sql1("SELECT count(DISTINCT debt_id) FROM ds_debts")) == 259


def test_big_group_two_readers_key_ranges_and_exact_batch_counts(start_server):
    """150 batches of 10 rows make one job on SQLite: read by two parts side by
    side and loaded key range by key range.  Every batch's ledger row must
    still say exactly what became of its own rows: a new file (all new), the
    same file again (all duplicates), and an overlapping file with a key twice
    (some of each, loaded batch by batch)."""
    s = start_server(env={"ESTEIRA_BATCH_ROWS": "10"})
    rnd = random.Random(11)
    keys = [str(uuid_from(rnd)) for _ in range(1500)]

    def line(i, key, amount="10.00"):
        return f"Name {i},{10000000000 + i},p{i}@example.com,{amount},2024-01-31,{key}\n"

    bad = {3, 740, 760, 1499}  # rejects in both halves of the group
    body = HEADER + "".join(line(i, k, "x" if i in bad else "10.00") for i, k in enumerate(keys))

    def ledger(uid):
        return [tuple(int(v) for v in r) for r in s.sql(
            "SELECT seq, rows, inserted, duplicate, rejected FROM upload_batches"
            f" WHERE upload_id = '{uid}' ORDER BY seq")]

    a = wait_done(s, upload(s, body.encode()).json()["id"])
    assert a["status"] == "done", a
    assert a["rows"] == {"total": 1500, "inserted": 1496, "duplicate": 0, "rejected": 4}
    assert a["batches"] == {"total": 150, "done": 150, "failed": 0}
    want = [(b + 1, 10, 10 - nb, 0, nb)
            for b in range(150) for nb in [sum(1 for i in bad if i // 10 == b)]]
    assert ledger(a["id"]) == want
    # one job, read from two places at once
    payload = s.sql1(f"SELECT payload FROM jobs WHERE payload LIKE '%{a['id']}%'")
    assert json.loads(payload)["split"] == [75, len((HEADER + "".join(
        line(i, k, "x" if i in bad else "10.00") for i, k in enumerate(keys[:750]))).encode())]
    assert table_count(s) == 1496
    # each row at its own line, objects of both halves written
    assert s.sql1(f"SELECT line FROM ds_debts WHERE debt_id = '{keys[1234]}'") == "1236"
    blobs = os.path.join(s.data_dir, "blobs", "uploads", a["id"])
    for n in (1, 75, 76, 150):
        with open(os.path.join(blobs, f"batch-{n:06d}.json")) as f:
            got = [r["debtId"] for r in json.load(f)]
        assert got == [k for i, k in enumerate(keys[(n - 1) * 10:n * 10], (n - 1) * 10)
                       if i not in bad]
    rejects = s.get(f"/v1/uploads/{a['id']}/rejects").text.splitlines()
    assert [r.split(",")[0] for r in rejects[1:]] == [str(i + 2) for i in sorted(bad)]

    b = wait_done(s, upload(s, body.encode()).json()["id"])
    assert b["rows"] == {"total": 1500, "inserted": 0, "duplicate": 1496, "rejected": 4}
    assert ledger(b["id"]) == [(q, n, 0, n - r, r) for q, n, _, _, r in want]

    # the second half again, new keys after it, and one new key twice: some
    # of each in one group
    more = [str(uuid_from(rnd)) for _ in range(749)]
    rows3 = keys[750:] + more + [more[0]]
    body3 = HEADER + "".join(line(i, k) for i, k in enumerate(rows3))
    c = wait_done(s, upload(s, body3.encode()).json()["id"])
    seen = {k for i, k in enumerate(keys) if i not in bad}
    exp = []
    for bi in range(len(rows3) // 10):
        ins = 0
        for k in rows3[bi * 10:(bi + 1) * 10]:
            ins += k not in seen
            seen.add(k)
        exp.append((bi + 1, 10, ins, 10 - ins, 0))
    assert ledger(c["id"]) == exp
    # the rejected 760 and 1499 of the first file are new; more[0] is there twice
    assert c["rows"] == {"total": 1500, "inserted": 751, "duplicate": 749, "rejected": 0}
    assert table_count(s) == 1496 + 751


def test_rejects_name_line_column_and_reason(start_server):
    s = start_server()
    body = (HEADER + row(1) + row(2, amount="abc") + row(3, due="2023-02-30") +
            "only,three,fields\n" + row(5, email="not-an-email") + row(6, amount="-5") +
            '"Quoted, Name",1,q@example.com,7811,2024-02-29,00000000-0000-4000-8000-000000000007\n')
    st = wait_done(s, upload(s, body.encode()).json()["id"])
    assert st["status"] == "done"
    assert st["rows"] == {"total": 7, "inserted": 2, "duplicate": 0, "rejected": 5}
    r = s.get(f"/v1/uploads/{st['id']}/rejects")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/csv")
    got = list(csv.reader(io.StringIO(r.text)))
    assert got[0] == ["line", "column", "reason", "raw"]
    by_line = {int(x[0]): x for x in got[1:]}
    assert sorted(by_line) == [3, 4, 5, 6, 7]
    assert by_line[3][1] == "debtAmount" and by_line[3][3] == "abc"
    assert by_line[4][1] == "debtDueDate" and by_line[4][3] == "2023-02-30"
    assert by_line[5][1] == "" and "expected 6 fields, found 3" in by_line[5][2]
    assert by_line[6][1] == "email"
    assert by_line[7][1] == "debtAmount"
    amount = s.sql1("SELECT debt_amount FROM ds_debts WHERE name = 'Quoted, Name'")
    assert float(amount) == 7811.0


def test_generated_bad_rows_are_exactly_the_rejects(start_server, tmp_path):
    s = start_server(env={"ESTEIRA_BATCH_ROWS": "1000"})
    path = generate(tmp_path, 20000, bad=0.01)
    with open(path + ".bad") as f:
        bad = sorted(int(x.split()[0]) for x in f if x.strip() and x.split()[0].isdigit())
    with open(path, "rb") as f:
        st = upload(s, f).json()
    st = wait_done(s, st["id"])
    assert st["status"] == "done", st
    rej = list(csv.reader(io.StringIO(s.get(f"/v1/uploads/{st['id']}/rejects").text)))[1:]
    lines = sorted({int(x[0]) for x in rej})
    assert lines == bad
    assert st["rows"]["rejected"] == len(bad)
    assert st["rows"]["inserted"] == 20000 - len(bad) == table_count(s)


def test_multipart_and_the_seed_alias(start_server):
    s = start_server()
    body = HEADER + row(1) + row(2)
    r = requests.post(s.url + "/v1/uploads?dataset=debts", timeout=30,
                      files={"note": (None, "ignored"), "file": ("d.csv", body, "text/csv")})
    assert r.status_code == 202, r.text
    assert wait_done(s, r.json()["id"])["rows"]["inserted"] == 2
    r = requests.post(s.url + "/upload", timeout=30, files={"csv": ("d.csv", HEADER + row(3))})
    assert r.status_code == 202, r.text
    assert r.json()["dataset"] == "debts"
    assert wait_done(s, r.json()["id"])["rows"]["inserted"] == 1
    # a form without a file part
    r = requests.post(s.url + "/v1/uploads?dataset=debts", timeout=30,
                      files={"other": (None, "x")})
    assert r.status_code == 400
    assert table_count(s) == 3


def test_refusals(start_server):
    s = start_server()
    r = upload(s, (HEADER + row(1)).encode(), dataset="nope")
    assert r.status_code == 404 and "nope" in r.json()["error"]["message"]
    r = upload(s, (HEADER + row(1)).encode(), dataset=None)
    assert r.status_code == 400
    r = upload(s, b'{"a":1}', ctype="application/json")
    assert r.status_code == 415
    # the header is checked before anything is queued
    r = upload(s, b"name,email,colour,debtId\nx,y,z,w\n")
    assert r.status_code == 422, r.text
    problems = {(d["field"], d["problem"]) for d in r.json()["error"]["details"]}
    fields = {f for f, _ in problems}
    assert {"governmentId", "debtAmount", "debtDueDate", "colour"} <= fields
    # malformed CSV: the line is named
    r = upload(s, (HEADER + row(1) + 'a,"unterminated,b,c,d,e\n').encode())
    assert r.status_code == 422 and "line 3" in r.json()["error"]["message"], r.text
    r = upload(s, b"")
    assert r.status_code == 422
    # nothing of those was queued or loaded
    assert table_count(s) == 0
    states = {u["status"] for u in s.get("/v1/uploads").json()["items"]}
    assert states <= {"failed"}


def test_idempotency_key_returns_the_same_upload(start_server):
    s = start_server()
    body = (HEADER + row(1) + row(2)).encode()
    a = upload(s, body, headers={"Idempotency-Key": "file-1"})
    b = upload(s, body, headers={"Idempotency-Key": "file-1"})
    assert a.status_code == b.status_code == 202
    assert a.json()["id"] == b.json()["id"]
    wait_done(s, a.json()["id"])
    assert len(s.get("/v1/uploads").json()["items"]) == 1


def test_kill9_worker_mid_upload_finishes_exactly(start_server, tmp_path):
    """kill -9 of the process at random moments while its batches load: after
    each restart the upload goes on, and ends with exactly the file's rows."""
    s = start_server(env={"ESTEIRA_BATCH_ROWS": "200", "ESTEIRA_BATCHES_PER_JOB": "1",
                          "ESTEIRA_WORKERS": "2"})
    n = int(os.environ.get("ESTEIRA_TEST_KILL_ROWS", "30000"))
    path = generate(tmp_path, n, seed=11)
    with open(path, "rb") as f:
        uid = upload(s, f).json()["id"]
    rnd = random.Random(5)
    kills = 0
    for _ in range(5):
        time.sleep(rnd.uniform(0.02, 0.25))
        st = s.get(f"/v1/uploads/{uid}").json()
        if st["status"] == "done":
            break
        s.kill()
        kills += 1
        print(f"\nkill -9 with {st['batches']['done']}/{st['batches']['total']} batches done")
        s.start()
    st = wait_done(s, uid, timeout=180)
    assert st["status"] == "done", st
    assert st["rows"]["inserted"] + st["rows"]["duplicate"] == n
    assert st["rows"]["inserted"] == n, st  # nothing was there before
    assert table_count(s) == n
    assert int(s.sql1("SELECT count(DISTINCT debt_id) FROM ds_debts")) == n
    assert int(s.sql1("SELECT count(*) FROM upload_batches WHERE done_ms IS NULL")) == 0
    print(f"{kills} kills; {n} rows, {n} distinct keys")


def test_kill9_api_while_receiving_then_resend(start_server, tmp_path):
    """The API dies while the body arrives: the client gets no 202, the
    half-received upload shows as failed, the resend loads everything."""
    s = start_server(env={"ESTEIRA_CONN_TIMEOUT_MS": "1000"})
    path = generate(tmp_path, 20000, seed=3)
    data = open(path, "rb").read()

    def slow_body():
        for i in range(0, len(data), 65536):
            yield data[i:i + 65536]
            time.sleep(0.01)

    err = []

    def send():
        try:
            requests.post(s.url + "/v1/uploads?dataset=debts", data=slow_body(),
                          headers={"Content-Type": "text/csv"}, timeout=30)
        except requests.RequestException as e:
            err.append(e)

    t = threading.Thread(target=send)
    t.start()
    wait_for(lambda: s.sql("SELECT id FROM uploads WHERE status = 'receiving'"), timeout=20,
             interval=0.01, what="an upload receiving")
    time.sleep(0.1)
    s.kill()
    t.join(30)
    assert err, "the client must not see a 202"
    s.start()
    first = s.sql1("SELECT id FROM uploads")
    st = s.get(f"/v1/uploads/{first}").json()
    wait_for(lambda: s.get(f"/v1/uploads/{first}").json()["status"] == "failed", timeout=30,
             interval=0.2, what="the interrupted upload shown as failed")
    assert s.post(f"/v1/uploads/{first}/retry").status_code == 409
    r = upload(s, data)
    assert r.status_code == 202, r.text
    st = wait_done(s, r.json()["id"])
    assert st["rows"]["inserted"] == 20000 == table_count(s)


def test_presigned_upload(start_server):
    s = start_server()
    r = s.post("/v1/uploads/presign", json={"dataset": "debts", "filename": "d.csv", "size": 100})
    assert r.status_code == 201, r.text
    p = r.json()
    assert p["method"] == "PUT" and p["headers"] == {"Content-Type": "text/csv"}
    assert p["status"] == "receiving" and p["expiresAt"]
    # completing before the PUT is a conflict
    assert s.post(f"/v1/uploads/{p['id']}/complete").status_code == 409
    body = (HEADER + row(1) + row(2) + row(3, amount="x")).encode()
    put = requests.put(p["url"], data=body, headers=p["headers"], timeout=30)
    assert put.status_code in (200, 201), put.text
    r = s.post(f"/v1/uploads/{p['id']}/complete")
    assert r.status_code == 202, r.text
    again = s.post(f"/v1/uploads/{p['id']}/complete")  # idempotent
    assert again.status_code == 202
    st = wait_done(s, p["id"])
    assert st["status"] == "done", st
    assert st["rows"] == {"total": 3, "inserted": 2, "duplicate": 0, "rejected": 1}
    assert st["bytes"] == len(body)
    assert table_count(s) == 2
    # a presigned file whose header is wrong fails the upload, with the reason
    p = s.post("/v1/uploads/presign", json={"dataset": "debts"}).json()
    requests.put(p["url"], data=b"a,b\n1,2\n", headers=p["headers"], timeout=30)
    assert s.post(f"/v1/uploads/{p['id']}/complete").status_code == 202
    st = wait_done(s, p["id"])
    assert st["status"] == "failed" and "debtId" in st["error"], st
    # refusals
    assert s.post("/v1/uploads/presign", json={"dataset": "nope"}).status_code == 404
    assert s.post("/v1/uploads/presign", json={"size": -1}).status_code == 400
    assert s.post("/v1/uploads/presign",
                  json={"dataset": "debts", "size": 1 << 50}).status_code == 413
    http_up = upload(s, (HEADER + row(9)).encode()).json()["id"]
    assert s.post(f"/v1/uploads/{http_up}/complete").status_code == 409


def test_dead_batches_fail_the_upload_and_retry_resumes_it(start_server):
    s = start_server(env={"ESTEIRA_BATCH_ROWS": "100", "ESTEIRA_BATCHES_PER_JOB": "1",
                          "ESTEIRA_JOB_KINDS": "upload_batch:attempts=1"})
    wait_done(s, upload(s, (HEADER + row(1)).encode()).json()["id"])
    s.sql("DROP TABLE ds_debts")  # every batch now fails, and has one attempt
    body = (HEADER + "".join(row(i) for i in range(10, 310))).encode()
    uid = upload(s, body).json()["id"]
    st = wait_done(s, uid)
    assert st["status"] == "failed", st
    assert st["batches"] == {"total": 3, "done": 0, "failed": 3}
    assert "3 of 3 batches failed" in st["error"]
    dead = s.get("/v1/dlq?kind=upload_batch").json()["items"]
    assert len(dead) == 3
    s.restart()  # the table is made again when it is next needed
    r = s.post(f"/v1/uploads/{uid}/retry")
    assert r.status_code == 202, r.text
    st = wait_done(s, uid)
    assert st["status"] == "done", st
    assert st["rows"]["inserted"] == 300 and st["batches"]["failed"] == 0
    assert table_count(s) == 300
    assert s.post(f"/v1/uploads/{uid}/retry").status_code == 409  # done: nothing to retry
