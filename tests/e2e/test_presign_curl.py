"""Presigned S3 URLs from `esteira presign`, used with plain curl against the
S3 server (which checks SigV4 for real)."""
import os
import subprocess
import time
import uuid

from conftest import run_cli
from distributed import needs_services

pytestmark = needs_services


def s3_env(ttl="15m"):
    return {
        "ESTEIRA_BLOB_URL": "s3://%s?endpoint=%s&region=us-east-1" % (
            os.environ.get("S3_BUCKET", "app"), os.environ.get("S3_ENDPOINT", "http://127.0.0.1:49000")),
        "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "S3RVER"),
        "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "S3RVER"),
        "ESTEIRA_SIGNED_URL_TTL_MS": ttl,
    }


def presign(*args, ttl="15m"):
    r = run_cli(["presign", *args], env=s3_env(ttl))
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def curl(method, url, data=None, ctype=None):
    cmd = ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "-X", method, url]
    if ctype:
        cmd += ["-H", f"Content-Type: {ctype}"]
    if data is not None:
        cmd += ["--data-binary", data]
    out = subprocess.run(cmd, capture_output=True, timeout=30).stdout
    body, _, code = out.rpartition(b"\n")
    return int(code), body


def test_presigned_put_get_and_refusals(workdir):
    key = f"e2e/{uuid.uuid4().hex}.txt"
    put = presign("PUT", key, "text/plain")
    get = presign("GET", key)
    assert curl("PUT", put, b"hello from curl", "text/plain")[0] == 200
    assert curl("GET", get) == (200, b"hello from curl")
    assert curl("PUT", put, b"evil", "text/html")[0] == 403          # another content type
    assert curl("PUT", get, b"evil", "text/plain")[0] == 403         # a GET URL used to PUT
    assert curl("DELETE", get)[0] == 403                             # or to delete
    other = presign("GET", f"e2e/{uuid.uuid4().hex}.txt")
    assert curl("GET", other.replace(other.split("?")[0].rsplit("/", 1)[1], key.rsplit("/", 1)[1]))[0] == 403
    tampered = get[:-1] + ("0" if get[-1] != "0" else "1")
    assert curl("GET", tampered)[0] == 403
    expiring = presign("GET", key, ttl="1s")
    time.sleep(2.2)
    assert curl("GET", expiring)[0] == 403
    assert curl("GET", get) == (200, b"hello from curl")             # untouched by all that
