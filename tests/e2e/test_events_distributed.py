"""Events on PostgreSQL + RabbitMQ: an API process and two workers store
exactly the events answered 202 (COPY into user_interactions, counted by type
by the table's trigger); a worker or the API killed with -9 during the load,
PostgreSQL stopped for 30 s, RabbitMQ stopped: nothing answered 202 is lost,
nothing is stored twice.  The outage tests use the private servers of
test_restarts (their own ports), so no other test is disturbed."""
import os
import time

import pytest

from conftest import error_shape, wait_for
from distributed import fresh_backends, needs_services, psql, services
from eventload import EventSender
from test_restarts import private_services  # noqa: F401 (a fixture)

pytestmark = needs_services
OUTAGE_S = float(os.environ.get("ESTEIRA_TEST_EVENTS_OUTAGE_S", "30"))


def cluster(start_server, env, workers=2):
    env = {**env, "ESTEIRA_EVENTS_FLUSH_MS": "300ms", "ESTEIRA_BLOB_URL": "file:./blobs"}
    api = start_server(env={**env, "ESTEIRA_WORKERS": "0"}, cmd="serve", name="api")
    ws = [start_server(env=env, cmd="work", name=f"worker{i + 1}") for i in range(workers)]
    return api, ws


def stored_ids(db, env=None):
    out = psql("SELECT id FROM user_interactions", env=env, db=db)
    return [x for x in out.split() if x]


def check_exact(sender, db, env=None, timeout=60):
    wait_for(lambda: len(stored_ids(db, env)) >= len(sender.accepted), timeout=timeout,
             interval=0.5, what=f"{len(sender.accepted)} events stored")
    time.sleep(1.5)  # anything late or twice would show now
    ids = stored_ids(db, env)
    assert len(ids) == len(set(ids))
    assert set(ids) == sender.accepted
    total = psql("SELECT sum(n) FROM event_counts", env=env, db=db)
    assert int(total) == len(ids)  # the trigger counted each row once
    by = dict(x.split("|") for x in psql(
        "SELECT event_type, n FROM event_counts", env=env, db=db).split())
    assert {k: int(v) for k, v in by.items()} == sender.by_type


def test_events_on_postgres_and_rabbitmq(start_server):
    be = fresh_backends()
    db = be.pop("_DB")
    api, _ = cluster(start_server, be)
    sender = EventSender(api.url, 2000, threads=8).start().join()
    assert not sender.errors, sender.errors[:5]
    r = api.post("/v1/events/batch", json=[{"userId": "b", "eventType": "search",
                                             "sessionId": "s"}] * 500)
    assert r.status_code == 202 and r.json()["accepted"] == 500
    wait_for(lambda: api.get("/v1/events/stats").json()["total"] == 2500, timeout=30,
             interval=0.3, what="2500 events stored")
    st = api.get("/v1/events/stats").json()
    assert st["batches"]["inserted"] == 2500 and st["flushLag"]["maxMs"] > 0
    assert api.get("/v1/events?userId=b&limit=3").json()["nextCursor"]
    assert int(psql("SELECT count(*) FROM user_interactions", db=db)) == 2500


@pytest.mark.parametrize("victim", ["worker", "api"])
def test_kill9_during_load(start_server, victim):
    be = fresh_backends()
    db = be.pop("_DB")
    api, ws = cluster(start_server, be)
    sender = EventSender(api.url, 6000, threads=12).start()
    wait_for(lambda: sender.count >= 2000, timeout=120, what="2000 events accepted")
    target = ws[0] if victim == "worker" else api
    target.kill()
    time.sleep(0.5)
    target.start()
    sender.join()
    assert not sender.errors, sender.errors[:5]
    check_exact(sender, db)


def test_store_outage_then_recovery(start_server, private_services):  # noqa: F811
    env = private_services
    be = fresh_backends(env)
    db = be.pop("_DB")
    api, ws = cluster(start_server, be, workers=1)
    sender = EventSender(api.url, 4000, threads=8).start()
    wait_for(lambda: sender.count >= 1000, timeout=120, what="1000 events accepted")
    pg = {**env, "SERVICES_ONLY": "postgres"}
    services("stop", env=pg)
    at_stop = sender.count
    time.sleep(OUTAGE_S)
    during = sender.count - at_stop
    services("start", env=pg)
    sender.join()
    assert not sender.errors, sender.errors[:5]
    # the API kept answering 202 while the store was away (the broker holds them)
    assert during > 0
    check_exact(sender, db, env, timeout=120)
    log = ws[0].log_text()
    assert "the store is unavailable" in log


def test_broker_outage_answers_503(start_server, private_services):  # noqa: F811
    env = private_services
    be = fresh_backends(env)
    db = be.pop("_DB")
    api, _ = cluster(start_server, {**be, "ESTEIRA_BROKER_URL": be["ESTEIRA_BROKER_URL"] +
                                    "?publish_timeout=2s&connect_timeout=1s"}, workers=1)
    ok = api.post("/v1/events", json={"userId": "u", "eventType": "view", "sessionId": "s"})
    assert ok.status_code == 202
    mq = {**env, "SERVICES_ONLY": "rabbitmq"}
    services("stop", env=mq)
    try:
        r = api.post("/v1/events", json={"userId": "u", "eventType": "view", "sessionId": "s"},
                     timeout=30)
        error_shape(r, 503)
        assert r.headers.get("Retry-After")
    finally:
        services("start", env=mq)
    r = wait_for(lambda: api.post("/v1/events", json={"userId": "u2", "eventType": "view",
                                                      "sessionId": "s"}).status_code == 202,
                 timeout=60, interval=0.5, what="202 again after RabbitMQ is back")
    wait_for(lambda: psql("SELECT count(*) FROM user_interactions", env=env, db=db) == "2",
             timeout=60, interval=0.5, what="both accepted events stored")
