"""Signed URLs of the file: blob backend (PUT/GET /v1/blobs/{key}).

No public endpoint hands one out yet, so the test signs them itself, exactly
as include/esteira/sign.h and src/core/sign.c say:
    sig = HMAC-SHA256(secret, "v1\\n" method "\\n" key "\\n" ct "\\n" exp)
    query = method=M&ct=<percent-encoded ct>&exp=<unix s>&sig=<hex>
with the secret the server generated into DATA_DIR/secret."""

import hashlib
import hmac
import os
import time
from urllib.parse import quote

import requests

from conftest import error_shape

OCTET = "application/octet-stream"


def secret_of(s):
    with open(os.path.join(s.data_dir, "secret")) as f:
        secret = f.read()
    assert len(secret) == 64 and all(c in "0123456789abcdef" for c in secret), secret
    return secret


def signed(s, method, key, ct="", exp=None, secret=None):
    """The URL of key for method/ct, as esteira would sign it."""
    exp = int(time.time()) + 300 if exp is None else exp
    msg = f"v1\n{method}\n{key}\n{ct}\n{exp}"
    sig = hmac.new((secret or secret_of(s)).encode(), msg.encode(), hashlib.sha256).hexdigest()
    return f"{s.url}/v1/blobs/{key}?method={method}&ct={quote(ct, safe='')}&exp={exp}&sig={sig}"


def put(url, data, ct=OCTET):
    return requests.put(url, data=data, headers={"Content-Type": ct}, timeout=30)


def test_put_then_get_same_bytes(server):
    data = os.urandom(1024 * 1024)
    key = "e2e/put-get/random.bin"
    r = put(signed(server, "PUT", key, OCTET), data)
    assert r.status_code == 201, r.text
    assert r.json() == {"key": key, "size": len(data)}
    # on disk under the blob directory, whole
    with open(os.path.join(server.data_dir, "blobs", key), "rb") as f:
        assert f.read() == data

    r = requests.get(signed(server, "GET", key), timeout=30)
    assert r.status_code == 200, r.text[:200]
    assert r.headers["Content-Type"] == OCTET
    assert int(r.headers["Content-Length"]) == len(data)
    assert hashlib.sha256(r.content).digest() == hashlib.sha256(data).digest()
    assert r.headers.get("X-Request-Id")

    # the stored content type is the one the URL was signed for
    key2 = "e2e/put-get/note.txt"
    ct = "text/plain; charset=utf-8"
    assert put(signed(server, "PUT", key2, ct), b"hello\n", ct).status_code == 201
    r = requests.get(signed(server, "GET", key2), timeout=10)
    assert r.status_code == 200 and r.content == b"hello\n"
    assert r.headers["Content-Type"] == ct

    # an empty object and a streamed (chunked) body both work
    assert put(signed(server, "PUT", "e2e/empty", OCTET), b"").status_code == 201
    assert requests.get(signed(server, "GET", "e2e/empty"), timeout=10).content == b""
    chunks = [os.urandom(70000) for _ in range(5)]
    r = put(signed(server, "PUT", "e2e/chunked", OCTET), iter(chunks))
    assert r.status_code == 201 and r.json()["size"] == 350000
    assert requests.get(signed(server, "GET", "e2e/chunked"), timeout=10).content == b"".join(chunks)

    # a second PUT replaces the object
    assert put(signed(server, "PUT", key, OCTET), b"v2").status_code == 201
    assert requests.get(signed(server, "GET", key), timeout=10).content == b"v2"


def test_expired_url(server):
    key = "e2e/expired.bin"
    r = put(signed(server, "PUT", key, OCTET, exp=int(time.time()) - 5), b"late")
    error_shape(r, 403, "url_expired")
    assert not os.path.exists(os.path.join(server.data_dir, "blobs", key))
    # a valid PUT, then an expired GET of it
    assert put(signed(server, "PUT", key, OCTET), b"x").status_code == 201
    r = requests.get(signed(server, "GET", key, exp=int(time.time()) - 1), timeout=10)
    error_shape(r, 403, "url_expired")


def test_refused_urls(server):
    key = "e2e/target.bin"
    good = signed(server, "PUT", key, OCTET)
    stored = os.path.join(server.data_dir, "blobs", key)

    def refused(r):
        body = error_shape(r, 403, "forbidden")
        assert not os.path.exists(stored), "a refused PUT stored something"
        return body

    # tampered signature
    base, sig = good.rsplit("sig=", 1)
    flipped = ("0" if sig[0] != "0" else "1") + sig[1:]
    refused(put(base + "sig=" + flipped, b"evil"))
    refused(put(base + "sig=" + sig[:-2], b"evil"))
    # a parameter changed after signing: a later expiry
    exp = good.split("exp=")[1].split("&")[0]
    refused(put(good.replace(f"exp={exp}", f"exp={int(exp) + 3600}"), b"evil"))
    # signed for another key
    refused(put(signed(server, "PUT", "e2e/other.bin", OCTET).replace("e2e/other.bin", key), b"evil"))
    # signed for another method: a GET URL used to PUT, and the method rewritten
    refused(put(signed(server, "GET", key), b"evil"))
    refused(put(signed(server, "GET", key).replace("method=GET", "method=PUT"), b"evil"))
    # another content type than the one signed
    refused(put(good, b"evil", ct="text/html"))
    refused(put(good, b"evil", ct=OCTET + "; x=1"))
    # another secret
    refused(put(signed(server, "PUT", key, OCTET, secret="f" * 64), b"evil"))
    # extra, duplicated or missing parameters
    refused(put(good + "&admin=1", b"evil"))
    refused(put(good + "&exp=" + exp, b"evil"))
    refused(put(good.split("&sig=")[0], b"evil"))
    refused(put(f"{server.url}/v1/blobs/{key}", b"evil"))

    # the good URL still works after all that, and only for PUT
    assert put(good, b"good").status_code == 201
    error_shape(requests.get(good, timeout=10), 403, "forbidden")
    assert requests.get(signed(server, "GET", key), timeout=10).content == b"good"
    # a GET URL of one key does not open another
    r = requests.get(signed(server, "GET", "e2e/none.bin").replace("e2e/none.bin", key), timeout=10)
    error_shape(r, 403, "forbidden")


def test_missing_object_and_bad_keys(server):
    r = requests.get(signed(server, "GET", "e2e/never-written"), timeout=10)
    error_shape(r, 404)
    # keys that would escape the blob directory are refused before anything else
    for bad in ("e2e/../../secret", "e2e//x", "e2e/./x"):
        r = requests.put(signed(server, "PUT", bad, OCTET), data=b"x",
                         headers={"Content-Type": OCTET}, timeout=10)
        assert r.status_code in (400, 403, 404), (bad, r.status_code, r.text)
        assert r.status_code != 201
    assert secret_of(server)  # DATA_DIR/secret untouched


def test_secret_survives_restart(server):
    before = secret_of(server)
    key = "e2e/restart.bin"
    assert put(signed(server, "PUT", key, OCTET), b"kept").status_code == 201
    url = signed(server, "GET", key)
    server.restart()
    assert secret_of(server) == before
    # a URL signed before the restart still opens the object after it
    r = requests.get(url, timeout=10)
    assert r.status_code == 200 and r.content == b"kept"
