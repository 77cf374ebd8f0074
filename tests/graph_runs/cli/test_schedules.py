"""graph_runs.cli.schedules: the schedule commands, with --json, and exit status 2 on bad input.

Runs main() in-process against a real database named by GRAPH_RUNS_DATABASE_URL. Bad input
must give one line and write nothing.
"""

import datetime as dt

import pytest
import sqlalchemy as sa

from graph_runs.dispatch import ledger
from graph_runs.execution_api.client import Outcome
from graph_runs.store.db import make_engine
from graph_runs.store.tables import run_ledger, schedules
from tests.helpers import at, claim_at

NOW = at("2026-01-03T12:00:00Z")


def test_create_describe_pause_resume_delete(cli, cli_grant) -> None:
    grant_id = cli_grant
    code, created, _ = cli(
        "schedules", "create", "--owner", "alice", "--graph", "daily-digest",
        "--cron", "0 9 * * 1-5", "--timezone", "Europe/Berlin", "--grant", grant_id,
        "--input", '{"lang": "de"}', "--max-cost-usd", "0.25", "--timeout-seconds", "600",
        "--json",
    )  # fmt: skip
    assert code == 0
    sid = created["id"]
    assert (created["max_cost_usd"], created["timeout_seconds"]) == ("0.25", 600)
    code, described, _ = cli("schedules", "describe", sid, "--json")
    assert code == 0 and len(described["next_fire_times"]) == 10
    assert described["next_fire_times"][0]["fires_at"] == described["next_run_at"]
    assert described["recent_actions"] == [] and described["running"] == []
    assert described["policies"] == {
        "overlap": "skip",
        "catchup": "latest",
        "catchup_window": "1h",
        "jitter": "0s",
        "start_at": None,
        "end_at": None,
        "max_runs": None,
        "pause_after_failures": 3,
        "requires_approval": False,
        "approval_timeout": "1d",
        "on_approval_timeout": "skip",
    }
    code, paused, _ = cli(
        "schedules", "pause", sid, "--note", "vacation", "--by", "ana", "--json"
    )  # fmt: skip
    assert (paused["enabled"], paused["pause_note"], paused["paused_by"]) == (
        False,
        "vacation",
        "ana",
    )
    code, again, _ = cli("schedules", "pause", sid, "--note", "other", "--json")
    assert code == 0 and again == paused
    code, described, _ = cli("schedules", "describe", sid, "--json")
    assert described["pause"]["note"] == "vacation" and described["next_fire_times"] == []
    code, resumed, _ = cli("schedules", "resume", sid, "--json")
    assert resumed["enabled"] is True
    code, listed, _ = cli("schedules", "list", "--owner", "alice", "--json")
    assert [s["id"] for s in listed] == [sid]
    code, deleted, _ = cli("schedules", "delete", sid, "--json")
    assert deleted == {"id": sid, "deleted": True}
    code, deleted, _ = cli("schedules", "delete", sid, "--json")
    assert (code, deleted) == (0, {"id": sid, "deleted": False})
    code, _, err = cli("schedules", "describe", sid)
    assert (code, err) == (2, f"error: schedule {sid} not found\n")


def test_policies_external_ids_upsert_trigger_and_backfill(cli, cli_grant) -> None:
    grant_id = cli_grant
    create = [
        "schedules", "create", "--owner", "alice", "--graph", "daily-digest",
        "--cron", "0 9 * * *", "--grant", grant_id, "--external-id", "user-7",
        "--overlap", "buffer_one", "--catchup", "all", "--catchup-window", "2d",
        "--jitter", "90s", "--max-runs", "5", "--pause-after-failures", "0",
        "--start-at", "2026-01-01T00:00:00Z", "--requires-approval",
        "--approval-timeout", "90m", "--on-timeout", "approve", "--json",
    ]  # fmt: skip
    code, created, _ = cli(*create)
    assert code == 0
    assert created["policies"] == {
        "overlap": "buffer_one",
        "catchup": "all",
        "catchup_window": "2d",
        "jitter": "90s",
        "start_at": "2026-01-01T00:00:00Z",
        "end_at": None,
        "max_runs": 5,
        "pause_after_failures": 0,
        "requires_approval": True,
        "approval_timeout": "90m",
        "on_approval_timeout": "approve",
    }
    code, _, err = cli(*create)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: alice already has schedule {created['id']} with external id")
    upsert = [
        "schedules", "upsert", "--owner", "alice", "--external-id", "user-7",
        "--graph", "daily-digest", "--cron", "0 10 * * *", "--grant", grant_id, "--json",
    ]  # fmt: skip
    code, upserted, _ = cli(*upsert)
    assert (code, upserted["upsert"], upserted["id"]) == (0, "updated", created["id"])
    assert upserted["policies"]["overlap"] == "skip"  # left out: back to the default
    code, upserted, _ = cli(*upsert)
    assert upserted["upsert"] == "unchanged"
    code, triggered, _ = cli(
        "schedules", "trigger", created["id"], "--requested-by", "ana", "--key", "r1", "--json"
    )  # fmt: skip
    assert (code, triggered["created"], triggered["status"]) == (0, True, "pending")
    code, again, _ = cli("schedules", "trigger", created["id"], "--key", "r1", "--json")
    assert (again["created"], again["ledger_id"]) == (False, triggered["ledger_id"])
    backfill = [
        "schedules", "backfill", created["id"],
        "--from", "2026-01-01T00:00:00Z", "--to", "2026-01-03T23:00:00Z",
    ]  # fmt: skip
    code, text, _ = cli(*backfill)
    assert text == (
        "3 slot(s) from 2026-01-01T00:00:00Z to 2026-01-03T23:00:00Z: 3 will run, "
        "0 already had a run, 0 skipped (overlap allow_all)\n"
    )
    code, report, _ = cli(*backfill, "--json")
    assert (report["ran"], report["already"]) == (0, 3)
    code, described, _ = cli("schedules", "describe", created["id"], "--json")
    assert described["counts"]["runs"] == 4
    assert described["counts"]["by_trigger_kind"] == {"backfill": 3, "manual": 1}
    assert len(described["running"]) == 4 and len(described["recent_actions"]) == 4
    code, _, err = cli("schedules", "backfill", created["id"], "--from", "x", "--to", "y")
    assert (code, err) == (2, "error: from: 'x' is not an ISO 8601 time\n")
    year_one = ["--from", "0001-01-01T00:00:00Z", "--to", "0001-01-02T00:00:00Z"]
    code, _, err = cli("schedules", "backfill", created["id"], *year_one)
    assert (code, err) == (2, "error: from: must be from 2000-01-01 to before 2200-01-01\n")
    code, _, err = cli("schedules", "create", "--owner", "alice", "--graph", "g",
                       "--grant", grant_id, "--cron", "* * * * *", "--jitter", "soon")  # fmt: skip
    assert (code, err.split(";")[0]) == (2, "error: jitter: 'soon' is not a duration")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--cron", "0 9 * *"], "error: cron: '0 9 * *' is not a 5-field cron expression"),
        (["--cron", "0 9 * * *", "--timezone", "Europe/Nowhere"], "error: timezone: unknown IANA"),
        # A folder of the zone database, and a name too long for a file: not a traceback.
        (["--cron", "0 9 * * *", "--timezone", "America"], "error: timezone: unknown IANA"),
        (["--cron", "0 9 * * *", "--timezone", "x" * 300], "error: timezone: unknown IANA"),
        (["--cron", "0 9 * * *", "--input", "{oops"], "error: input: is not valid JSON"),
        (["--cron", "0 9 * * *", "--run-at", "tomorrow"], "error: run_at: 'tomorrow' is not"),
        (["--cron", "0 9 * * *", "--max-cost-usd", "lots"], "error: max_cost_usd: 'lots'"),
        (["--cron", "0 9 * * *", "--timeout-seconds", "x"], "error: Invalid value for '--timeout"),
        # A graph id is one URL path segment at the API: never "..", never a slash.
        (["--graph", "..", "--cron", "0 9 * * *"], "error: graph_id: String should match"),
        (["--graph", "a/../b", "--cron", "0 9 * * *"], "error: graph_id: String should match"),
        # Values at the edges of their types: one line each, never a traceback.
        (["--cron", "0 9 * * *", "--max-runs", "9" * 20], "error: max_runs: Input should be"),
        (["--cron", "0 9 * * *", "--pause-after-failures", "9" * 20], "error: pause_after_fai"),
        (["--cron", "0 9 * * *", "--max-cost-usd", "9" * 14], "error: max_cost_usd: Input"),
        (["--cron", "0 9 * * *", "--start-at", "0001-01-01T00:00:00Z"], "error: start_at: must"),
        (["--run-at", "9999-12-31T23:59:59Z"], "error: run_at: must be from 2000-01-01"),
        # Issue 21, B8: the end of time with a negative offset is past datetime's range in UTC.
        (
            ["--run-at", "9999-12-31T23:59:59-05:00"],
            "error: run_at: '9999-12-31T23:59:59-05:00' is outside the years 1 to 9999 in UTC",
        ),
        # Issue 22: what could only fail at every fire is refused at create.
        (["--cron", "0 9 * * *"], "error: grant_id: grant grt_"),
        (
            ["--graph", "daily-digest", "--run-at", "2020-01-01T09:00:00Z"],
            "error: run_at: 2020-01-01T09:00:00Z is in the past",
        ),
        (["--cron", "0 9 * * *", "--input", '{"a": NaN}'], "error: input: holds a number"),
        (["--cron", "0 9 * * *", "--input", '{"a": "\\u0000"}'], "error: input: holds a NUL"),
        (["--cron", "0 9 * * *", "--input", '{"a": "\\ud800"}'], "error: input: holds a lone"),
        (["--cron", "0 9 * * *", "--input", "[" * 15_000 + "]" * 15_000], "error: input: is nes"),
        (
            ["--cron", "0 9 * * *", "--input", '{"a":' + "[" * 40 + "]" * 40 + "}"],
            "error: input: is",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    cli, cli_grant, database_url: str, extra: list[str], message: str
) -> None:
    grant_id = cli_grant
    base = ["schedules", "create", "--owner", "alice", "--graph", "g", "--grant", grant_id]
    code, out, err = cli(*base, *extra)
    assert code == 2 and out == ""
    assert err.startswith(message) and err.count("\n") == 1
    engine = sa.create_engine(database_url.replace("postgresql://", "postgresql+psycopg2://"))
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schedules)).scalar() == 0
    engine.dispose()


@pytest.mark.parametrize(
    ("start", "message"),
    [
        ("0001-01-01T00:00:00Z", "error: from: must be from 2000-01-01 to before 2200-01-01"),
        ("9999-12-31T23:00:00Z", "error: from: must be from 2000-01-01 to before 2200-01-01"),
        # Before year 1 once in UTC: past what a date can hold at all.
        ("0001-01-01T00:00:00+05:00", "error: from: '0001-01-01T00:00:00+05:00' is outside"),
    ],
)
def test_preview_from_the_edges_of_time_exits_2_with_one_line(
    cli, start: str, message: str
) -> None:
    """Issue 21, B8: ``preview --from`` year 1 crashed with OverflowError, a traceback."""
    code, out, err = cli("schedules", "preview", "--cron", "0 9 * * *", "--from", start)
    assert code == 2 and out == ""
    assert err.startswith(message) and err.count("\n") == 1


def test_preview_prints_fire_instants_under_the_dst_policy(cli) -> None:
    code, instants, _ = cli(
        "schedules", "preview", "--cron", "30 1 * * *", "--timezone", "America/New_York",
        "--from", "2026-10-31T00:00:00Z", "--count", "3", "--json",
    )  # fmt: skip
    assert code == 0
    assert instants == ["2026-10-31T05:30:00Z", "2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]
    code, text, _ = cli(
        "schedules", "preview", "--cron", "30 2 * * *", "--timezone", "America/New_York",
        "--from", "2026-03-08T00:00:00Z", "--count", "1",
    )  # fmt: skip
    assert text == "2026-03-08T07:00:00Z\n"


def test_describe_says_why_a_slot_failed_and_that_a_paused_schedule_fires_nothing(
    cli, cli_grant, database_url: str
) -> None:
    # Issue 22: describe's text hid failure reasons, and a paused schedule showed a next slot.
    code, created, _ = cli(
        "schedules", "create", "--owner", "alice", "--graph", "daily-digest",
        "--cron", "* * * * *", "--grant", cli_grant, "--json",
    )  # fmt: skip
    assert code == 0
    engine = make_engine(database_url)
    with engine.begin() as conn:
        claim_at(conn, dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2))
        conn.execute(
            run_ledger.update()
            .where(run_ledger.c.schedule_id == created["id"])
            .values(
                status="failed",
                error_code="scope_denied",
                error_message="grant grt_x has no\nscope graph:execute:daily-digest",
                finished_at=dt.datetime.now(dt.UTC),
            )
        )
    engine.dispose()
    code, text, _ = cli("schedules", "describe", created["id"])
    assert code == 0
    # One line however the message came: a newline another writer stored shows escaped.
    line = "reason=scope_denied: grant grt_x has no\\nscope graph:execute:daily-digest"
    assert line in text
    cli("schedules", "pause", created["id"], "--note", "enough")
    code, text, _ = cli("schedules", "describe", created["id"])
    assert "next=paused" in text.splitlines()[0]
    assert "next fire times: none (paused)" in text


def test_refire_fires_the_failed_slots_again_and_refuses_a_bad_range(
    cli, cli_grant, database_url: str
) -> None:
    code, created, _ = cli(
        "schedules", "create", "--owner", "alice", "--graph", "daily-digest",
        "--cron", "0 9 * * *", "--grant", cli_grant, "--start-at", "2026-01-01T00:00:00Z",
        "--json",
    )  # fmt: skip
    assert code == 0
    sid = created["id"]
    cli("schedules", "backfill", sid, "--from", "2026-01-01T00:00:00Z", "--to",
        "2026-01-02T23:00:00Z")  # fmt: skip
    engine = make_engine(database_url)
    with engine.begin() as conn:
        ledger_ids = list(
            conn.execute(
                sa.select(run_ledger.c.id)
                .where(run_ledger.c.schedule_id == sid)
                .order_by(run_ledger.c.scheduled_for)
            ).scalars()
        )
        outcome = Outcome(status="failed", error_code="scope_denied", error_message="no scope")
        for ledger_id in ledger_ids:
            ledger.record_outcome(conn, ledger_id, outcome, dagster_run_id="r", now=NOW)
    engine.dispose()
    # A bad range: one line naming the field, exit 2, both slots still failed.
    code, _, err = cli("schedules", "refire", sid, "--from", "2026-01-03T00:00:00Z",
                       "--to", "2026-01-01T00:00:00Z")  # fmt: skip
    assert (code, err) == (2, "error: to: is before from\n")
    code, text, _ = cli("schedules", "refire", sid, "--from", "2026-01-01T00:00:00Z",
                        "--to", "2026-01-01T23:00:00Z", "--requested-by", "ana")  # fmt: skip
    assert (code, text) == (
        0,
        "1 failed slot(s) from 2026-01-01T00:00:00Z to 2026-01-01T23:00:00Z: 1 will fire "
        "again, 0 skipped (overlap allow_all)\n"
        "  2026-01-01T09:00:00Z  was scope_denied: no scope\n",
    )
    code, described, _ = cli("schedules", "describe", sid, "--json")
    assert (described["runs_failed"], described["counts"]["failed"]) == (1, 1)
    assert described["counts"]["in_flight"] == 1
