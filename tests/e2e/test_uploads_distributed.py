"""CSV uploads on PostgreSQL + RabbitMQ + Redis + S3: an API process and two
worker processes load a file exactly once, with its rejects and objects; the
same file again is all duplicates; a worker killed mid-upload changes nothing;
the presigned variant PUTs straight to S3."""
import csv
import io
import json
import subprocess

import requests

from conftest import wait_for
from distributed import fresh_backends, needs_services, psql
from test_uploads import GEN, HEADER, row, upload, wait_done

pytestmark = needs_services


def cluster(start_server, extra=None):
    env = fresh_backends()
    db = env.pop("_DB")
    env.update(extra or {})
    api = start_server(env={**env, "ESTEIRA_WORKERS": "0"}, cmd="serve", name="api")
    w1 = start_server(env=env, cmd="work", name="worker1")
    w2 = start_server(env=env, cmd="work", name="worker2")
    return api, w1, w2, db, env


def test_upload_on_distributed_backends(start_server, tmp_path):
    api, w1, w2, db, env = cluster(start_server, {"ESTEIRA_BATCH_ROWS": "500"})
    path = str(tmp_path / "d.csv")
    subprocess.run(["/usr/bin/python3", GEN, "20000", path, "--seed", "5", "--bad", "0.01"],
                   check=True, capture_output=True)
    bad = sorted(int(x.split()[0]) for x in open(path + ".bad") if x.strip())
    with open(path, "rb") as f:
        r = upload(api, f)
    assert r.status_code == 202, r.text
    st = wait_done(api, r.json()["id"])
    assert st["status"] == "done", st
    assert st["batches"]["total"] == st["batches"]["done"] == 40
    assert st["rows"]["rejected"] == len(bad)
    assert st["rows"]["inserted"] == 20000 - len(bad)
    assert psql("SELECT count(*) FROM ds_debts", db=db) == str(20000 - len(bad))
    assert psql("SELECT count(DISTINCT debt_id) FROM ds_debts", db=db) == str(20000 - len(bad))
    rej = list(csv.reader(io.StringIO(api.get(f"/v1/uploads/{st['id']}/rejects").text)))[1:]
    assert sorted({int(x[0]) for x in rej}) == bad
    # the objects are in S3: the API reads them back through a presigned GET
    out = api.cli("presign", "GET", f"uploads/{st['id']}/batch-000040.json", env=env)
    assert out.returncode == 0, out.stderr
    objs = requests.get(out.stdout.strip(), timeout=30).json()
    assert 0 < len(objs) <= 500 and "debtId" in objs[0]
    # the same file again: all duplicates, the table unchanged
    with open(path, "rb") as f:
        st2 = wait_done(api, upload(api, f).json()["id"])
    assert st2["rows"]["duplicate"] == 20000 - len(bad) and st2["rows"]["inserted"] == 0
    assert psql("SELECT count(*) FROM ds_debts", db=db) == str(20000 - len(bad))
    # datasets rows read from PostgreSQL
    page = api.get("/v1/datasets/debts/rows?limit=3").json()
    assert len(page["items"]) == 3 and page["nextCursor"]


def test_worker_killed_mid_upload_on_distributed_backends(start_server, tmp_path):
    api, w1, w2, db, env = cluster(start_server, {"ESTEIRA_BATCH_ROWS": "200",
                                                  "ESTEIRA_BATCHES_PER_JOB": "1"})
    path = str(tmp_path / "k.csv")
    subprocess.run(["/usr/bin/python3", GEN, "30000", path, "--seed", "9"], check=True,
                   capture_output=True)
    with open(path, "rb") as f:
        uid = upload(api, f).json()["id"]
    wait_for(lambda: api.get(f"/v1/uploads/{uid}").json()["batches"]["done"] >= 20, timeout=60,
             interval=0.02, what="some batches done")
    w1.kill()
    st = api.get(f"/v1/uploads/{uid}").json()
    print(f"\nworker1 kill -9 at {st['batches']['done']}/{st['batches']['total']} batches")
    w1.start()
    st = wait_done(api, uid, timeout=180)
    assert st["status"] == "done", st
    assert st["rows"]["inserted"] == 30000
    assert psql("SELECT count(*) FROM ds_debts", db=db) == "30000"
    assert psql("SELECT count(DISTINCT debt_id) FROM ds_debts", db=db) == "30000"


def test_presigned_upload_to_s3(start_server):
    api, w1, w2, db, env = cluster(start_server)
    p = api.post("/v1/uploads/presign", json={"dataset": "debts", "filename": "x.csv"}).json()
    assert p["url"].startswith("http://127.0.0.1:") and "X-Amz-Signature" in p["url"]
    body = (HEADER + row(1) + row(2)).encode()
    put = requests.put(p["url"], data=body, headers=p["headers"], timeout=30)
    assert put.status_code == 200, put.text
    assert api.post(f"/v1/uploads/{p['id']}/complete").status_code == 202
    st = wait_done(api, p["id"])
    assert st["status"] == "done" and st["rows"]["inserted"] == 2, st
    assert json.loads(psql("SELECT count(*) FROM ds_debts", db=db)) == 2
