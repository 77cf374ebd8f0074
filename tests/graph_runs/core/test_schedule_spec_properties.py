"""graph_runs.core.schedule_spec and core.cron under hypothesis: no input escapes validation.

Any raw schedule, hostile values included (numbers at the edges of their types, NaN,
instants from year 1 to 9999, zone names that are folders or paths, JSON with NUL
characters, lone surrogates or deep nesting), gives a valid spec or one ``InvalidInput``,
never another exception. A valid spec stores within its column types and plans its
slots without error.
"""

import datetime as dt
import string
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graph_runs.core.errors import InvalidInput
from graph_runs.core.schedule_spec import ScheduleLimits, validate_spec

NOW = dt.datetime(2026, 11, 22, 10, 0, tzinfo=dt.UTC)
INT64 = 2**63 - 1

edge_ints = st.one_of(
    st.integers(min_value=-5, max_value=100),
    st.sampled_from([0, 1, 2**31 - 1, 2**31, 2**63, 2**70, -(2**63)]),
    st.integers(),
)
instants = st.datetimes(
    min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30), timezones=st.just(dt.UTC)
)
costs = st.one_of(
    st.none(),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.sampled_from(["1e20", "NaN", "-1000", "0.000001", "99999999999999", "1e-30"]),
    st.floats(),
)
zones = st.one_of(
    st.sampled_from(
        ["UTC", "Europe/Berlin", "America", "America/", "../../etc/passwd", "x" * 300, ""]
    ),
    st.text(max_size=80),
)
crons = st.one_of(
    st.sampled_from(["* * * * *", "0 9 * * 1-5", "30 2 * * *", "0 0 29 2 *", "0 0 31 2 *"]),
    st.text(alphabet=string.digits + "*/,- LW#?", max_size=30),
)
hostile_text = st.text(
    alphabet=st.characters(codec=None, categories=None, exclude_categories=()), max_size=20
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.floats(), edge_ints, hostile_text),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(hostile_text, inner, max_size=3)
    ),
    max_leaves=20,
)


def _deep(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


inputs = st.one_of(
    st.dictionaries(hostile_text, json_values, max_size=4),
    st.integers(min_value=30, max_value=2000).map(lambda d: {"deep": _deep(d)}),
    json_values,
)


@st.composite
def raw_schedules(draw: st.DrawFn) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "owner": draw(st.sampled_from(["alice", "", "x" * 300])),
        "graph_id": draw(st.sampled_from(["echo", "..", "a/b", "daily-digest"])),
        "grant_id": "grt_1",
        "input": draw(inputs),
        "timezone": draw(zones),
    }
    if draw(st.booleans()):
        raw["cron"] = draw(crons)
    else:
        raw["run_at"] = draw(instants)
    optional = {
        "max_cost_usd": costs,
        "max_runs": edge_ints,
        "pause_after_failures": edge_ints,
        "jitter_seconds": edge_ints,
        "catchup_window_seconds": edge_ints,
        "timeout_seconds": edge_ints,
        "start_at": instants,
        "end_at": instants,
    }
    for name, strategy in optional.items():
        if draw(st.booleans()):
            raw[name] = draw(strategy)
    return raw


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
@given(raw_schedules())
def test_any_raw_schedule_is_a_valid_spec_or_one_invalid_input(raw: dict[str, Any]) -> None:
    try:
        spec = validate_spec(raw, ScheduleLimits(), NOW)
    except InvalidInput:
        return
    stored = spec.stored()
    for name in ("max_runs", "pause_after_failures", "jitter_seconds", "max_cost_micros"):
        assert stored[name] is None or 0 <= stored[name] <= INT64, name
    schedule = spec.cron_schedule()
    if schedule is not None:
        after = max(NOW, spec.start_at or NOW)
        fires = schedule.fires_between(after, after + dt.timedelta(days=3), limit=20)
        assert all(fire > after - dt.timedelta(microseconds=1) for fire in fires)
    assert spec.max_cost_usd is None or Decimal(0) <= spec.max_cost_usd
