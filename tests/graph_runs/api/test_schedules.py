"""The /v1/schedules routes over real HTTP, on SQLite and PostgreSQL.

Create, upsert, read, edit under If-Match, delete, list by pages, slots, actions and preview.
"""

import datetime as dt
import threading

import sqlalchemy as sa

from graph_runs.store.tables import audit_log, run_ledger, schedules
from tests.graph_runs.api.conftest import Api


def test_create_answers_201_with_location_and_etag(api: Api) -> None:
    client = api.client(api.app_token)
    answer = client.post("/v1/schedules", json=api.spec(external_id="digest-1"))
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert answer.headers["location"] == f"/v1/schedules/{body['id']}"
    assert answer.headers["etag"].startswith('"')
    assert body["owner"] == "alice" and body["cron"] == "0 9 * * *"
    got = client.get(answer.headers["location"])
    assert got.status_code == 200 and got.json() == body
    assert got.headers["etag"] == answer.headers["etag"]
    with api.engine.connect() as conn:
        actor = conn.execute(
            sa.select(audit_log.c.actor).where(audit_log.c.action == "schedule.create")
        ).scalar_one()
    assert actor.startswith("api:key_")


def test_bad_spec_names_the_field_and_writes_nothing(api: Api) -> None:
    client = api.client(api.app_token)
    answer = client.post("/v1/schedules", json=api.spec(cron="61 * * * *"))
    assert answer.status_code == 400
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["field"] == "cron" and problem["code"] == "invalid_input"
    unknown = client.post("/v1/schedules", json=api.spec(colour="red"))
    assert unknown.status_code == 400 and unknown.json()["field"] == "colour"
    with api.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schedules)).scalar_one() == 0


def test_upsert_creates_then_updates_then_leaves_unchanged(api: Api) -> None:
    client = api.client(api.app_token)
    path = "/v1/schedules/by-external-id/alice/digest-7"
    spec = api.spec()
    del spec["owner"]
    first = client.put(path, json=spec)
    assert first.status_code == 201 and first.json()["upsert"] == "created"
    again = client.put(path, json=spec)
    assert again.status_code == 200 and again.json()["upsert"] == "unchanged"
    changed = client.put(path, json={**spec, "cron": "0 10 * * *"})
    assert changed.status_code == 200 and changed.json()["upsert"] == "updated"
    assert changed.json()["id"] == first.json()["id"]
    clash = client.put(path, json={**spec, "external_id": "other"})
    assert clash.status_code == 400 and clash.json()["field"] == "external_id"


def test_patch_needs_if_match_and_refuses_a_stale_one(api: Api) -> None:
    client = api.client(api.app_token)
    created = client.post("/v1/schedules", json=api.spec())
    path, etag = created.headers["location"], created.headers["etag"]
    missing = client.patch(path, json={"cron": "0 10 * * *"})
    assert missing.status_code == 428
    patched = client.patch(
        path,
        content=b'{"cron": "0 10 * * *", "input": {"m": 2}}',
        headers={"If-Match": etag, "Content-Type": "application/merge-patch+json"},
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["cron"] == "0 10 * * *"
    # A merge patch merges objects: the input keeps n and gains m.
    assert patched.json()["input"] == {"n": 1, "m": 2}
    assert patched.headers["etag"] != etag
    stale = client.patch(path, json={"cron": "0 11 * * *"}, headers={"If-Match": etag})
    assert stale.status_code == 412
    assert client.get(path).json()["cron"] == "0 10 * * *"
    # null returns a field to its default.
    reset = client.patch(
        path, json={"timezone": None}, headers={"If-Match": patched.headers["etag"]}
    )
    assert reset.status_code == 200 and reset.json()["timezone"] == "UTC"


def test_two_editors_with_one_etag_exactly_one_wins(api: Api) -> None:
    created = api.client(api.app_token).post("/v1/schedules", json=api.spec())
    path, etag = created.headers["location"], created.headers["etag"]
    answers: list[int] = []
    barrier = threading.Barrier(2)

    def edit(hour: int) -> None:
        client = api.client(api.app_token)
        barrier.wait(timeout=10)
        answer = client.patch(path, json={"cron": f"0 {hour} * * *"}, headers={"If-Match": etag})
        answers.append(answer.status_code)

    threads = [threading.Thread(target=edit, args=(h,)) for h in (10, 11)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(answers) == [200, 412]


def test_put_replaces_the_whole_spec_and_keeps_the_owner(api: Api) -> None:
    client = api.client(api.app_token)
    created = client.post("/v1/schedules", json=api.spec(jitter_seconds=30))
    path, etag = created.headers["location"], created.headers["etag"]
    replaced = client.put(path, json=api.spec(cron="0 8 * * *"), headers={"If-Match": etag})
    assert replaced.status_code == 200
    assert replaced.json()["policies"]["jitter"] == "0s"  # left out: back to its default
    moved = client.put(path, json=api.spec("bob", cron="0 8 * * *"), headers={"If-Match": "*"})
    assert moved.status_code == 400 and moved.json()["field"] == "owner"


def test_delete_is_idempotent_and_honours_if_match(api: Api) -> None:
    client = api.client(api.app_token)
    created = client.post("/v1/schedules", json=api.spec())
    path = created.headers["location"]
    stale = client.delete(path, headers={"If-Match": '"not-it"'})
    assert stale.status_code == 412
    assert client.delete(path).json() == {"id": created.json()["id"], "deleted": True}
    # A retried DELETE (its first answer lost) succeeds, even with the ETag it held.
    again = client.delete(path, headers={"If-Match": created.headers["etag"]})
    assert again.status_code == 200 and again.json()["deleted"] is False
    assert client.get(path).status_code == 404
    # An id that never existed is not a repeat: it is unknown.
    unknown = client.delete("/v1/schedules/sch_" + "0" * 32)
    assert unknown.status_code == 404 and unknown.json()["type"].endswith("not_found")
    with api.engine.connect() as conn:
        deletes = conn.execute(
            sa.select(sa.func.count()).where(audit_log.c.action == "schedule.delete")
        ).scalar_one()
    assert deletes == 1


def test_list_pages_by_cursor_never_repeating_under_inserts(api: Api) -> None:
    client = api.client(api.app_token)
    ids = []
    for n in range(5):
        api.clock.now += dt.timedelta(seconds=1)
        ids.append(client.post("/v1/schedules", json=api.spec(input={"n": n})).json()["id"])
    first = client.get("/v1/schedules", params={"limit": 2}).json()
    assert [s["id"] for s in first["items"]] == ids[:2]
    # One more, inserted while the client pages: it comes last, and nothing repeats.
    api.clock.now += dt.timedelta(seconds=1)
    ids.append(client.post("/v1/schedules", json=api.spec("bob")).json()["id"])
    seen = [s["id"] for s in first["items"]]
    cursor = first["next_cursor"]
    while cursor:
        page = client.get("/v1/schedules", params={"limit": 2, "cursor": cursor}).json()
        seen += [s["id"] for s in page["items"]]
        cursor = page["next_cursor"]
    assert seen == ids
    bobs = client.get("/v1/schedules", params={"owner": "bob"}).json()["items"]
    assert [s["id"] for s in bobs] == ids[-1:]
    assert client.get("/v1/schedules", params={"cursor": "nonsense"}).json()["field"] == "cursor"
    assert client.get("/v1/schedules", params={"limit": 501}).json()["field"] == "limit"


def test_actions_pause_resume_trigger_backfill(api: Api) -> None:
    client = api.client(api.app_token)
    sid = client.post("/v1/schedules", json=api.spec()).json()["id"]
    paused = client.post(f"/v1/schedules/{sid}/pause", json={"note": "holiday"})
    assert paused.status_code == 200 and paused.json()["enabled"] is False
    assert paused.json()["pause_note"] == "holiday"
    assert paused.json()["paused_by"].startswith("api:key_")
    resumed = client.post(f"/v1/schedules/{sid}/resume")
    assert resumed.status_code == 200 and resumed.json()["enabled"] is True
    trigger = client.post(
        f"/v1/schedules/{sid}/trigger",
        json={"requested_by": "alice"},
        headers={"Idempotency-Key": "t-1"},
    )
    assert trigger.status_code == 200 and trigger.json()["created"] is True
    backfill = client.post(
        f"/v1/schedules/{sid}/backfill",
        json={"from": "2026-12-05T00:00:00Z", "to": "2026-12-06T23:59:00Z"},
    )
    assert backfill.status_code == 200, backfill.text
    assert backfill.json()["slots"] == 2  # 09:00 Berlin on the 5th and the 6th
    bad = client.post(f"/v1/schedules/{sid}/backfill", json={"from": "2026-12-05T00:00:00Z"})
    assert bad.status_code == 400 and bad.json()["field"] == "to"


def test_slots_newest_first_with_links(api: Api) -> None:
    client = api.client(api.app_token)
    sid = client.post("/v1/schedules", json=api.spec()).json()["id"]
    client.post(
        f"/v1/schedules/{sid}/backfill",
        json={"from": "2026-12-04T00:00:00Z", "to": "2026-12-06T23:59:00Z"},
    )
    with api.engine.begin() as conn:
        conn.execute(
            run_ledger.update()
            .where(run_ledger.c.schedule_id == sid)
            .values(status="succeeded", dagster_run_id="run-1")
        )
    page = client.get(f"/v1/schedules/{sid}/slots", params={"limit": 2}).json()
    assert [s["status"] for s in page["items"]] == ["succeeded", "succeeded"]
    assert page["items"][0]["dagster_run_url"] == "http://dagster.test/runs/run-1"
    rest = client.get(f"/v1/schedules/{sid}/slots", params={"cursor": page["next_cursor"]})
    assert len(rest.json()["items"]) == 1 and rest.json()["next_cursor"] is None
    slots = {s["slot"] for s in page["items"] + rest.json()["items"]}
    assert slots == {f"2026-12-0{d}T08:00:00Z" for d in (4, 5, 6)}
    none = client.get(f"/v1/schedules/{sid}/slots", params={"status": "failed"}).json()
    assert none["items"] == []


def test_preview_and_describe(api: Api) -> None:
    client = api.client(api.app_token)
    fires = client.get(
        "/v1/preview",
        params={
            "cron": "0 9 * * *",
            "timezone": "Europe/Berlin",
            "from": "2026-12-07T00:00:00Z",
            "count": 2,
        },
    )
    assert fires.json() == {"fires": ["2026-12-07T08:00:00Z", "2026-12-08T08:00:00Z"]}
    bad = client.get(
        "/v1/preview",
        params={"cron": "0 9 * * *", "timezone": "Mars/Base", "from": "2026-12-07T00:00:00Z"},
    )
    assert bad.status_code == 400 and bad.json()["field"] == "timezone"
    sid = client.post("/v1/schedules", json=api.spec()).json()["id"]
    described = client.get(f"/v1/schedules/{sid}/describe").json()
    assert described["next_fire_times"][0]["slot"] == "2026-12-08T08:00:00Z"
    assert described["counts"]["runs"] == 0


def test_concurrent_upserts_of_one_new_external_id_all_succeed_making_one(api: Api) -> None:
    spec = api.spec()
    del spec["owner"]
    statuses: list[int] = []
    barrier = threading.Barrier(8)

    def put() -> None:
        client = api.client(api.app_token)
        barrier.wait(timeout=10)
        answer = client.put("/v1/schedules/by-external-id/alice/race", json=spec)
        statuses.append(answer.status_code)

    threads = [threading.Thread(target=put) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(statuses) == [200] * 7 + [201]
    with api.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schedules)).scalar_one() == 1
