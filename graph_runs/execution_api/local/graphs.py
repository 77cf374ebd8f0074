"""The built-in demo graphs and the usage they report.

Each graph is a pure function of its input (plus, for ``sleep``, the server's clock), so that
the server's answers are reproducible.
"""

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

MODEL = "demo-model-1"
PRICE_PER_TOKEN_USD = Decimal("0.000002")
GRAPHS = ("echo", "sleep", "fail", "flaky")


@dataclass(frozen=True)
class GraphResult:
    """What a finished demo graph returns."""

    status: str
    output: Any
    error: dict[str, str] | None


def usage_for(payload: Any) -> dict[str, Any]:
    """Deterministic token counts and cost for a run's input."""
    prompt = max(1, len(json.dumps(payload, sort_keys=True)) // 4)
    completion = max(1, prompt // 2)
    total = prompt + completion
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total,
        "cost_usd": str(PRICE_PER_TOKEN_USD * total),
        "model": MODEL,
    }


def finish(graph_id: str, payload: dict[str, Any]) -> GraphResult:
    """The result of a graph that has run to its end."""
    if graph_id == "fail":
        message = str(payload.get("message", "the fail graph always fails"))
        return GraphResult("failed", None, {"code": "graph_failed", "message": message})
    return GraphResult("succeeded", {"echo": payload}, None)


def sleep_seconds(payload: dict[str, Any]) -> float:
    """How long the ``sleep`` graph runs."""
    return float(payload.get("seconds", 5))


def flaky_failures(payload: dict[str, Any]) -> int:
    """How many 503s the ``flaky`` graph answers before it accepts a key."""
    return int(payload.get("failures", 1))
