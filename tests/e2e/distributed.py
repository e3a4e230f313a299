"""Helpers for end-to-end tests on PostgreSQL + RabbitMQ + Redis + S3.

They run when ESTEIRA_TEST_DISTRIBUTED=1 and the servers of scripts/services
are up (scripts/test does both); each test gets a fresh database, RabbitMQ
vhost and Redis db, so tests never see each other's jobs or queues."""
import atexit
import os
import random
import subprocess
import uuid

import pytest

from load import RetryingLoad

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERVICES = os.path.join(ROOT, "scripts", "services")

needs_services = pytest.mark.skipif(
    os.environ.get("ESTEIRA_TEST_DISTRIBUTED") != "1",
    reason="distributed backends: set ESTEIRA_TEST_DISTRIBUTED=1 with scripts/services running "
           "(scripts/test does)")


def services(*args, env=None, check=True, timeout=180):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([SERVICES, *args], env=e, capture_output=True, text=True,
                          check=check, timeout=timeout)


def psql(sql, env=None, db=None):
    e = dict(os.environ)
    e.update(env or {})
    args = [SERVICES, "psql", "-XtAq", "-v", "ON_ERROR_STOP=1", "-c", sql]
    if db:
        args = [SERVICES, "psql", "-XtAq", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql]
    return subprocess.run(args, env=e, capture_output=True, text=True, check=True,
                          timeout=60).stdout.strip()


_created = []  # (database, env) made by fresh_backends, dropped when the run ends


@atexit.register
def _drop_databases():
    # best effort: private servers are gone by now, and that is fine
    for db, env in _created:
        try:
            psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)', env=env)
        except Exception:
            pass


def fresh_backends(env=None):
    """ESTEIRA_* settings for a fresh database, vhost and Redis db on the
    servers that `scripts/services env` describes (env: SERVICES_* overrides)."""
    e = dict(os.environ)
    e.update(env or {})
    pg_port = e.get("SERVICES_PG_PORT", e.get("PGPORT", "54329"))
    amqp_port = e.get("SERVICES_AMQP_PORT", e.get("AMQP_PORT", "56729"))
    redis_port = e.get("SERVICES_REDIS_PORT", e.get("REDIS_PORT", "63799"))
    tag = "e2e_" + uuid.uuid4().hex[:10]
    psql(f"CREATE DATABASE {tag}", env=env)
    _created.append((tag, env))
    services("rabbitmqctl", "add_vhost", tag, env=env)
    services("rabbitmqctl", "set_permissions", "-p", tag, "guest", ".*", ".*", ".*", env=env)
    s3 = e.get("S3_ENDPOINT", "http://127.0.0.1:49000")
    return {
        "ESTEIRA_DATABASE_URL": f"postgres://postgres@127.0.0.1:{pg_port}/{tag}",
        "ESTEIRA_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{amqp_port}/{tag}",
        "ESTEIRA_CACHE_URL": f"redis://127.0.0.1:{redis_port}/{random.randint(1, 15)}",
        "ESTEIRA_BLOB_URL": f"s3://{e.get('S3_BUCKET', 'app')}?endpoint={s3}&region=us-east-1",
        "AWS_ACCESS_KEY_ID": e.get("AWS_ACCESS_KEY_ID", "S3RVER"),
        "AWS_SECRET_ACCESS_KEY": e.get("AWS_SECRET_ACCESS_KEY", "S3RVER"),
        "_DB": tag,
    }


class Submitter(RetryingLoad):
    """Submits n no-op jobs from several threads, each with its own
    Idempotency-Key, retrying every failure (503 while a backend restarts,
    refused connections) until accepted: at the end exactly n jobs exist."""

    def __init__(self, url, n, threads=16, payload=None, prefix=None):
        super().__init__(url, n, threads)
        self.payload = payload or {}
        self.prefix = prefix or uuid.uuid4().hex[:8]
        self.accepted = 0

    def attempt(self, session, i):
        r = session.post(self.url + "/v1/jobs", json={"kind": "noop", "payload": self.payload},
                         headers={"Idempotency-Key": f"{self.prefix}-{i}"}, timeout=30)
        return r.status_code in (200, 201)

    def accepted_item(self, i):
        self.accepted += 1
