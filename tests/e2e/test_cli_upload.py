"""`esteira upload FILE --dataset NAME [--wait]`: the client command against a
real server.

What a script relies on: exit 0 only when the upload is done (rejected rows
included), 1 when the server refused it or it failed (with the server's
message), 2 for a usage error; stdout is one JSON document (the 202 answer, or
with --wait the final status); everything for humans goes to stderr, and no
progress bar is drawn there when stderr is not a terminal.
"""

import csv
import io
import json
import os
import uuid

from conftest import free_port, run_cli, uuid_like, wait_for

HEADER = "name,governmentId,email,debtAmount,debtDueDate,debtId"


def debts_csv(path, good=3, bad_amount=True):
    """Writes a debts CSV: `good` valid rows and, when bad_amount, one row
    whose debtAmount is not a number (line good+2).  Returns the valid rows'
    debt ids in file order."""
    ids = [str(uuid.uuid4()) for _ in range(good)]
    lines = [HEADER]
    for i, d in enumerate(ids):
        lines.append(f"Payer {i},{11111111111 + i},payer{i}@example.com,{100 + i}.50,2030-01-{i + 1:02d},{d}")
    if bad_amount:
        lines.append(f"Bad Payer,22222222222,bad@example.com,lots,2030-02-01,{uuid.uuid4()}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return ids


def final_json(r):
    """stdout must be exactly one JSON document."""
    assert r.stdout.strip(), f"nothing on stdout; stderr:\n{r.stderr}"
    return json.loads(r.stdout)


# ------------------------------------------------------------------ usage (no server)
def test_usage_errors_exit_2(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text(HEADER + "\n")
    env = {"ESTEIRA_URL": f"http://127.0.0.1:{free_port()}"}

    r = run_cli(["upload"], env=env)
    assert r.returncode == 2, r
    assert "FILE" in r.stderr and "usage: esteira upload" in r.stderr

    r = run_cli(["upload", str(f)], env=env)
    assert r.returncode == 2, r
    assert "--dataset" in r.stderr

    r = run_cli(["upload", str(f), "--dataset"], env=env)
    assert r.returncode == 2 and "--dataset" in r.stderr, r

    r = run_cli(["upload", str(f), "--dataset", "debts", "--bogus"], env=env)
    assert r.returncode == 2 and "--bogus" in r.stderr, r

    r = run_cli(["upload", str(f), str(f), "--dataset", "debts"], env=env)
    assert r.returncode == 2, r

    missing = tmp_path / "no-such-file.csv"
    r = run_cli(["upload", str(missing), "--dataset", "debts"], env=env)
    assert r.returncode == 2, r
    assert str(missing) in r.stderr and "No such file" in r.stderr, r.stderr

    r = run_cli(["upload", str(tmp_path), "--dataset", "debts"], env=env)
    assert r.returncode == 2 and str(tmp_path) in r.stderr, r

    unreadable = tmp_path / "secret.csv"
    unreadable.write_text(HEADER + "\n")
    unreadable.chmod(0)
    if os.geteuid() != 0:  # root reads anything
        r = run_cli(["upload", str(unreadable), "--dataset", "debts"], env=env)
        assert r.returncode == 2 and str(unreadable) in r.stderr, r


def test_help_lists_upload():
    r = run_cli(["help"])
    assert r.returncode == 0
    assert "upload FILE --dataset NAME" in r.stdout


def test_no_server_is_a_clear_error(tmp_path):
    f = tmp_path / "d.csv"
    debts_csv(f)
    url = f"http://127.0.0.1:{free_port()}"
    r = run_cli(["upload", str(f), "--dataset", "debts"], env={"ESTEIRA_URL": url})
    assert r.returncode == 1, r
    assert "ESTEIRA_URL" in r.stderr and url in r.stderr, r.stderr
    assert r.stdout == ""


# ------------------------------------------------------------------ against a server
def test_unknown_dataset_exit_1_with_the_servers_message(server, tmp_path):
    f = tmp_path / "d.csv"
    debts_csv(f)
    r = server.cli("upload", str(f), "--dataset", "no_such_dataset")
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "404" in r.stderr, r.stderr
    # the server's own message is what the user sees
    direct = server.post("/v1/uploads?dataset=no_such_dataset", data=b"x",
                         headers={"Content-Type": "text/csv"})
    assert direct.status_code == 404, direct.text
    assert direct.json()["error"]["message"] in r.stderr, (r.stderr, direct.text)
    assert r.stdout == ""


def test_early_refusal_of_a_large_file_is_still_shown(server, tmp_path):
    # The server refuses after the headers while the client is still sending
    # megabytes; the answer must reach the user, not a broken pipe.
    f = tmp_path / "big.csv"
    row = "Payer,11111111111,p@example.com,1.00,2030-01-01,00000000-0000-4000-8000-000000000000\n"
    with open(f, "w") as out:
        out.write(HEADER + "\n")
        out.write(row * (24 * 1024 * 1024 // len(row)))
    r = server.cli("upload", str(f), "--dataset", "no_such_dataset")
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "404" in r.stderr, r.stderr


def test_bad_header_names_the_columns(server, tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("name,governmentId,email,debtAmount,debtDueDate,colour\nA,1,a@example.com,1.00,2030-01-01,red\n")
    r = server.cli("upload", str(f), "--dataset", "debts")
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "422" in r.stderr, r.stderr
    assert "debtId" in r.stderr and "colour" in r.stderr, r.stderr  # missing and unknown


def test_wait_loads_the_rows_and_reports_counts(server, tmp_path):
    f = tmp_path / "debts.csv"
    ids = debts_csv(f, good=3)
    r = server.cli("upload", str(f), "--dataset", "debts", "--wait")
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    u = final_json(r)
    assert uuid_like(u["id"]), u
    assert u["dataset"] == "debts" and u["status"] == "done", u
    assert u["rows"] == {"total": 4, "inserted": 3, "duplicate": 0, "rejected": 1}, u
    assert u["batches"]["failed"] == 0 and u["batches"]["done"] == u["batches"]["total"] >= 1, u
    assert u["bytes"] == os.path.getsize(f), u

    # the human summary, and no bar (stderr is a pipe here)
    assert "done: 4 rows, 3 inserted, 0 duplicate, 1 rejected" in r.stderr, r.stderr
    assert u["id"] in r.stderr
    assert "\r" not in r.stderr and "\033[" not in r.stderr, repr(r.stderr)

    # the server agrees, and the rows are in the dataset's table
    g = server.get(f"/v1/uploads/{u['id']}")
    assert g.status_code == 200, g.text
    assert g.json()["status"] == "done" and g.json()["rows"] == u["rows"], g.text
    rows = server.sql(f"SELECT debt_id FROM ds_debts WHERE upload_id = '{u['id']}' ORDER BY line")
    assert [x[0] for x in rows] == ids, rows

    # the rejected line (line 5: header + 3 good rows + it), with its reason
    rej = server.get(f"/v1/uploads/{u['id']}/rejects")
    assert rej.status_code == 200, rej.text
    recs = list(csv.reader(io.StringIO(rej.text)))
    assert recs[0] == ["line", "column", "reason", "raw"], recs
    assert len(recs) == 2 and recs[1][0] == "5" and "debtAmount" in recs[1][1], recs


def test_sending_the_file_again_inserts_nothing_twice(server, tmp_path):
    f = tmp_path / "debts.csv"
    debts_csv(f, good=5, bad_amount=False)
    first = server.cli("upload", str(f), "--dataset", "debts", "--wait")
    assert first.returncode == 0, first.stderr
    again = server.cli("upload", str(f), "--dataset", "debts", "--wait")
    assert again.returncode == 0, again.stderr
    a, b = final_json(first), final_json(again)
    assert a["id"] != b["id"], "a new invocation is a new upload"
    assert a["rows"] == {"total": 5, "inserted": 5, "duplicate": 0, "rejected": 0}, a
    assert b["rows"] == {"total": 5, "inserted": 0, "duplicate": 5, "rejected": 0}, b
    assert server.sql1("SELECT count(*) FROM ds_debts") == "5"


def test_without_wait_prints_the_accepted_upload(server, tmp_path):
    f = tmp_path / "debts.csv"
    debts_csv(f, good=2, bad_amount=False)
    r = server.cli("upload", str(f), "--dataset", "debts")
    assert r.returncode == 0, (r.stdout, r.stderr)
    u = final_json(r)
    assert uuid_like(u["id"]) and u["dataset"] == "debts", u
    assert u["status"] in ("receiving", "queued", "processing", "done"), u
    assert u["id"] in r.stderr, r.stderr

    def done():
        g = server.get(f"/v1/uploads/{u['id']}").json()
        return g if g["status"] in ("done", "failed") else None

    g = wait_for(done, timeout=30, what="upload done")
    assert g["status"] == "done" and g["rows"]["inserted"] == 2, g


def test_idempotency_key_returns_the_same_upload(server, tmp_path):
    f = tmp_path / "debts.csv"
    debts_csv(f, good=2, bad_amount=False)
    key = "cli-" + uuid.uuid4().hex
    r1 = server.cli("upload", str(f), "--dataset", "debts", "--idempotency-key", key, "--wait")
    r2 = server.cli("upload", str(f), "--dataset", "debts", "--idempotency-key", key, "--wait")
    assert r1.returncode == 0 and r2.returncode == 0, (r1.stderr, r2.stderr)
    a, b = final_json(r1), final_json(r2)
    assert a["id"] == b["id"], (a, b)
    assert b["rows"] == {"total": 2, "inserted": 2, "duplicate": 0, "rejected": 0}, b
    assert server.sql1("SELECT count(*) FROM ds_debts") == "2"


def test_quiet_says_nothing_on_success(server, tmp_path):
    f = tmp_path / "debts.csv"
    debts_csv(f, good=1, bad_amount=False)
    r = server.cli("upload", str(f), "--dataset", "debts", "--wait", "--quiet")
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr
    assert final_json(r)["status"] == "done"


def test_from_stdin(server, tmp_path):
    # "-" reads standard input: a body of unknown length, sent chunked
    f = tmp_path / "debts.csv"
    ids = debts_csv(f, good=2, bad_amount=False)
    e = {"ESTEIRA_URL": server.url, "ESTEIRA_LOG_LEVEL": "warn"}
    r = run_cli(["upload", "-", "--dataset", "debts", "--wait"], env=e, input=f.read_text())
    assert r.returncode == 0, (r.stdout, r.stderr)
    u = final_json(r)
    assert u["rows"]["inserted"] == 2, u
    rows = server.sql(f"SELECT debt_id FROM ds_debts WHERE upload_id = '{u['id']}' ORDER BY line")
    assert [x[0] for x in rows] == ids, rows


def test_token_is_sent(server, tmp_path):
    # once a key exists every request needs one: the command must send ESTEIRA_TOKEN
    k = server.cli("keys", "create", "--tenant", "acme", "--scopes", "ingest,read")
    assert k.returncode == 0, k.stderr
    token = k.stdout.strip()
    assert token.startswith("es_"), token
    # the server re-reads whether keys exist at most once a second
    wait_for(lambda: server.get("/v1/jobs", token="").status_code == 401, what="auth required")
    f = tmp_path / "debts.csv"
    debts_csv(f, good=1, bad_amount=False)
    r = server.cli("upload", str(f), "--dataset", "debts", "--wait")
    assert r.returncode == 1 and "401" in r.stderr, (r.returncode, r.stderr)
    r = server.cli("upload", str(f), "--dataset", "debts", "--wait", env={"ESTEIRA_TOKEN": token})
    assert r.returncode == 0, r.stderr
    assert final_json(r)["rows"]["inserted"] == 1
