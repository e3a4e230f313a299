"""Slow and idle clients cannot hold a connection forever."""
import socket
import time

import requests


def test_trickling_body_is_disconnected(start_server):
    s = start_server(env={"ESTEIRA_REQUEST_TIMEOUT_MS": "1s"})
    c = socket.create_connection(("127.0.0.1", s.port), timeout=10)
    c.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 200\r\n\r\n{")
    t0 = time.monotonic()
    closed = False
    while time.monotonic() - t0 < 8:
        time.sleep(0.25)
        try:
            c.sendall(b" ")  # one byte at a time: never idle, never done
            c.settimeout(0.01)
            if c.recv(1) == b"":
                closed = True
                break
        except socket.timeout:
            continue
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
    took = time.monotonic() - t0
    c.close()
    assert closed, "a client trickling its body kept the connection for 8 s"
    assert took < 4, f"disconnected only after {took:.1f} s"
    assert "body still arriving" in s.log_text()
    # the server is unaffected and a normal request of the same kind works
    r = requests.post(s.url + "/v1/jobs", json={"kind": "noop"}, timeout=10)
    assert r.status_code == 201


def test_idle_connection_is_closed(start_server):
    s = start_server(env={"ESTEIRA_CONN_TIMEOUT_MS": "1s"})
    c = socket.create_connection(("127.0.0.1", s.port), timeout=10)
    c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # headers never finished
    t0 = time.monotonic()
    c.settimeout(6)
    try:
        data = c.recv(4096)
    except socket.timeout:
        data = None
    took = time.monotonic() - t0
    c.close()
    assert data is not None, "an idle connection stayed open for 6 s"
    assert took < 4, f"closed only after {took:.1f} s"
