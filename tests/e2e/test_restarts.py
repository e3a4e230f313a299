"""Backends restarted, and workers killed, in the middle of a run: every job
ends done exactly once.  Uses a private set of servers (its own ports and
directory) so that restarting them disturbs no other test.

ESTEIRA_TEST_RESTART_JOBS sets the number of jobs (default 20000)."""
import os
import shutil
import signal
import tempfile
import time

import pytest

from conftest import wait_for
from distributed import Submitter, fresh_backends, needs_services, psql, services

pytestmark = needs_services

N = int(os.environ.get("ESTEIRA_TEST_RESTART_JOBS", "20000"))
PRIVATE = {
    "SERVICES_ONLY": "postgres redis rabbitmq",
    "SERVICES_PG_PORT": "54349", "SERVICES_REDIS_PORT": "63819", "SERVICES_AMQP_PORT": "56749",
    "SERVICES_RABBIT_DIST_PORT": "45699", "SERVICES_EPMD_PORT": "43719",
}


@pytest.fixture(scope="module")
def private_services():
    d = tempfile.mkdtemp(prefix="esteira-svc-")
    env = {**PRIVATE, "SERVICES_DIR": d}
    try:
        services("start", env=env)
        yield env
    finally:
        services("stop", env=env, check=False)
        shutil.rmtree(d, ignore_errors=True)


def restart(env, which):
    e = {**env, "SERVICES_ONLY": which}
    t0 = time.monotonic()
    services("stop", env=e)
    services("start", env=e)
    return time.monotonic() - t0


def progress(db, env):
    try:
        return int(psql("SELECT count(*) FROM jobs WHERE status = 'done'", env=env, db=db) or 0)
    except Exception:
        return -1  # the store is down right now


def test_backend_restarts_and_worker_kill(start_server, private_services):
    env = private_services
    be = fresh_backends(env)
    db = be.pop("_DB")
    be["ESTEIRA_BLOB_URL"] = "file:./blobs"  # S3 is not restarted here
    api = start_server(env={**be, "ESTEIRA_WORKERS": "0"}, cmd="serve", name="api")
    workers = [start_server(env=be, cmd="work", name=f"worker{i}") for i in (1, 2)]

    t_start = time.monotonic()
    sub = Submitter(api.url, N, threads=16).start()
    log = []

    def when(frac):
        wait_for(lambda: sub.accepted >= N * frac, timeout=600, interval=0.2,
                 what=f"{frac:.0%} submitted")

    when(0.2)
    log.append(f"rabbitmq restarted in {restart(env, 'rabbitmq'):.1f} s at {sub.accepted} accepted")
    when(0.4)
    log.append(f"postgres restarted in {restart(env, 'postgres'):.1f} s at {sub.accepted} accepted")
    when(0.6)
    log.append(f"redis restarted in {restart(env, 'redis'):.1f} s at {sub.accepted} accepted")
    when(0.8)
    workers[0].kill()  # SIGKILL, mid-run
    log.append(f"worker1 killed -9 at {sub.accepted} accepted, {progress(db, env)} done")
    workers[0].start()
    sub.join()
    assert not sub.errors, f"{len(sub.errors)} jobs never accepted"
    t0 = time.monotonic()
    log.append(f"{N} jobs submitted over HTTP in {t0 - t_start:.1f} s ({N / (t0 - t_start):.0f}/s)")
    wait_for(lambda: progress(db, env) == N, timeout=900, interval=1, what=f"{N} jobs done")
    log.append(f"all {N} done {time.monotonic() - t0:.1f} s after the last submit; "
               f"{sub.retries} submit retries")

    assert psql("SELECT count(*) FROM jobs", env=env, db=db) == str(N)
    assert psql("SELECT count(*) FROM noop_effects", env=env, db=db) == str(N)
    assert psql("SELECT count(DISTINCT job_id) FROM noop_effects", env=env, db=db) == str(N)
    assert psql("SELECT count(*) FROM jobs WHERE status <> 'done'", env=env, db=db) == "0"
    reruns = psql("SELECT count(*) FROM jobs WHERE attempts > 1", env=env, db=db)
    log.append(f"{reruns} jobs needed more than one attempt; effects {N}, distinct {N}")
    print("\n" + "\n".join(log))
