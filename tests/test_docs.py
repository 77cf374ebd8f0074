"""README.md and docs/*.md against the real CLI's parser and graph_runs.settings' defaults.

The pages are read as text; click parses the commands they show without running them.

Command lines shown as examples must parse as typed; synopses and inline mentions must name
commands and options that exist. Every default stated for a GRAPH_RUNS_* setting, in a table
or in prose, must equal the one the code uses with an empty environment.
"""

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from graph_runs.cli import cli
from graph_runs.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A synopsis marks optional parts, alternatives and placeholders; an example has none.
# ("grt_..." is an example id, a lone "..." a synopsis.)
SYNOPSIS = re.compile(r"\[|\]|\(--|\||(?<!\w)\.\.\.| [A-Z][A-Z_]*\b")
SHELL_STOPS = {"|", ">", ">>", "&&", ";", "||"}


@dataclass(frozen=True)
class Shown:
    page: str
    line: int
    text: str
    example: bool  # in a code block and without synopsis marks: must parse as typed

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.text}"


def _code_blocks(text: str) -> list[list[tuple[int, str]]]:
    """Each fenced code block's lines, backslash continuations joined, with line numbers."""
    blocks: list[list[tuple[int, str]]] = []
    block: list[tuple[int, str]] | None = None
    pending: tuple[int, str] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("```"):
            if block is None:
                block = []
            else:
                blocks.append(block)
                block = None
            continue
        if block is None:
            continue
        if pending is not None:
            number, stripped = pending[0], f"{pending[1]} {stripped}"
            pending = None
        if stripped.endswith("\\"):
            pending = (number, stripped[:-1].strip())
            continue
        if stripped.startswith("[") and block:
            # A synopsis wrapped onto more lines: "[--input JSON] [--jitter D]" goes on.
            block[-1] = (block[-1][0], f"{block[-1][1]} {stripped}")
            continue
        block.append((number, stripped))
    return blocks


def _commands(block: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """The ``graph-runs ...`` commands a block shows, without prompts or comments.

    In a block with ``$ `` prompts, only the prompted lines are commands; the rest is output.
    """
    prompted = any(line.startswith("$ ") for _, line in block)
    found = []
    for number, line in block:
        if prompted and not line.startswith("$ "):
            continue
        line = re.sub(r"^(\$ |\.venv/bin/)", "", line)
        if line.startswith("graph-runs "):
            found.append((number, re.split(r"\s+#\s", line, maxsplit=1)[0].strip()))
    return found


def shown_commands() -> list[Shown]:
    shown = []
    for page in PAGES:
        text = page.read_text()
        name = str(page.relative_to(ROOT))
        for block in _code_blocks(text):
            for number, command in _commands(block):
                shown.append(Shown(name, number, command, not SYNOPSIS.search(command)))
        for number, line in enumerate(text.splitlines(), 1):
            # A command word follows; "graph-runs (grant)" is an actor's name, not a command.
            for span in re.findall(r"`(graph-runs [a-z][^`]*)`", line):
                shown.append(Shown(name, number, span, False))
    return shown


def _resolve(words: list[str]) -> tuple[list[str], click.Command, list[str]]:
    """The command path the words name, the command, and the words after it."""
    path: list[str] = []
    command: click.Command = cli
    rest = list(words)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        sub = command.get_command(click.Context(command), rest[0])
        if sub is None:
            break
        path.append(rest.pop(0))
        command = sub
    return path, command, rest


def _unknown_options(command: click.Command, rest: list[str]) -> set[str]:
    """Options a synopsis names (in brackets or not) that the command does not have."""
    known = {
        name
        for param in command.params
        if isinstance(param, click.Option)
        for name in (*param.opts, *param.secondary_opts)
    }
    return set(re.findall(r"--[a-z][a-z0-9-]*", " ".join(rest))) - known - {"--help"}


COMMANDS = shown_commands()


def test_the_docs_show_commands_of_every_kind() -> None:
    """The extraction itself works: examples, synopses and inline mentions are all found."""
    assert sum(s.example for s in COMMANDS) >= 20, COMMANDS
    assert sum(not s.example for s in COMMANDS) >= 20, COMMANDS
    assert {s.page for s in COMMANDS} >= {"README.md", "docs/reference.md", "docs/scheduling.md"}


@pytest.mark.parametrize("shown", COMMANDS, ids=str)
def test_each_shown_command_is_one_the_cli_has(shown: Shown) -> None:
    words = shlex.split(shown.text)[1:]
    words = words[: next((i for i, w in enumerate(words) if w in SHELL_STOPS), len(words))]
    path, command, rest = _resolve(words)
    assert path, f"{shown}: names no graph-runs command"
    assert not isinstance(command, click.Group), f"{shown}: names a group, not a command"
    if shown.example:
        # click's own parser: unknown options, missing values, bad choices and types fail.
        ctx = command.make_context(" ".join(["graph-runs", *path]), rest, parent=None)
        ctx.close()
        return
    unknown = _unknown_options(command, rest)
    assert not unknown, f"{shown}: {' '.join(path)} has no option {sorted(unknown)}"


def test_a_command_the_cli_lacks_is_caught() -> None:
    """The check can fail: a misspelt option and an unknown command are both refused."""
    with pytest.raises(click.UsageError):
        _, command, rest = _resolve(["schedules", "pause", "sch_1", "--reason", "x"])
        command.make_context("graph-runs schedules pause", rest)
    path, command, rest = _resolve(shlex.split("schedules pause ID [--reason TEXT] [--by WHO]"))
    assert path == ["schedules", "pause"]
    assert _unknown_options(command, rest) == {"--reason"}
    path, command, _ = _resolve(["schedules", "frobnicate"])
    assert isinstance(command, click.Group) and path == ["schedules"]


# Defaults as the code has them with nothing set, by variable.
_S = load_settings({})
CODE_DEFAULTS: dict[str, object] = {
    "GRAPH_RUNS_EXECUTION_API_URL": _S.execution_api_url,
    "GRAPH_RUNS_SENSOR_INTERVAL_SECONDS": _S.sensor_interval_seconds,
    "GRAPH_RUNS_MIN_INTERVAL_SECONDS": _S.schedule_limits.min_interval_seconds,
    "GRAPH_RUNS_MAX_SCHEDULES_PER_OWNER": _S.schedule_limits.max_schedules_per_owner,
    "GRAPH_RUNS_MAX_INPUT_BYTES": _S.schedule_limits.max_input_bytes,
    "GRAPH_RUNS_HOME": ".graph_runs",
    "GRAPH_RUNS_DATABASE_URL": "sqlite:///.graph_runs/graph_runs.db",
    "GRAPH_RUNS_BATCH_SIZE": _S.dispatch.batch_size,
    "GRAPH_RUNS_PARALLEL_DISPATCH_RUNS": _S.dispatch.parallel_runs,
    "GRAPH_RUNS_ACCOUNT_BATCHES": _S.dispatch.account_batches,
    "GRAPH_RUNS_MAX_CONCURRENT_CALLS": _S.dispatch.max_concurrent_calls,
    "GRAPH_RUNS_MAX_CALLS_PER_ACCOUNT": _S.dispatch.max_calls_per_account,
    "GRAPH_RUNS_LAUNCH_ALLOWANCE_SECONDS": _S.dispatch.launch_allowance_seconds,
    "GRAPH_RUNS_DISPATCH_LEASE_SECONDS": _S.dispatch.lease_seconds,
    "GRAPH_RUNS_RUN_START_TIMEOUT_SECONDS": _S.dispatch.start_timeout_seconds,
    "GRAPH_RUNS_DISPATCH_HAND_OFF_SECONDS": _S.dispatch.hand_off_seconds,
    "GRAPH_RUNS_API_MAX_ATTEMPTS": _S.api.max_attempts,
    "GRAPH_RUNS_API_REQUEST_TIMEOUT_SECONDS": _S.api.request_timeout_seconds,
    "GRAPH_RUNS_SLOT_ASSET_EVENTS": _S.dispatch.slot_asset_events,
}
# "| `GRAPH_RUNS_X` | `value` ..." in a table, or "`GRAPH_RUNS_X` (2,500" / "`GRAPH_RUNS_X`, 20 s"
# and "`GRAPH_RUNS_X`, 12 tries by default" in prose.
TABLE_ROW = re.compile(r"^\|\s*`(GRAPH_RUNS_[A-Z_]+)`\s*\|\s*`([^`]+)`", re.M)
PROSE = re.compile(r"`(GRAPH_RUNS_[A-Z_]+)`(?: \(|, )(\d[\d,]*(?:\.\d+)?)(?=[ ,);:s]|$)")


def stated_defaults() -> list[tuple[str, str, str]]:
    found = []
    for page in PAGES:
        text = page.read_text()
        name = str(page.relative_to(ROOT))
        found += [(name, var, value) for var, value in TABLE_ROW.findall(text)]
        found += [(name, var, value) for var, value in PROSE.findall(text.replace("\n", " "))]
    return found


def _same(code: object, stated: str) -> bool:
    if isinstance(code, bool):
        return stated.lower() == str(code).lower()
    if isinstance(code, int):
        return stated.replace(",", "") == str(code)
    return stated == code


STATED = stated_defaults()


def test_the_docs_state_the_defaults_that_matter() -> None:
    stated = {var for _, var, _ in STATED}
    assert stated >= set(CODE_DEFAULTS), sorted(set(CODE_DEFAULTS) - stated)


@pytest.mark.parametrize("page,var,value", STATED, ids=[f"{p}:{v}={x}" for p, v, x in STATED])
def test_each_stated_default_is_the_codes(page: str, var: str, value: str) -> None:
    assert var in CODE_DEFAULTS, f"{page} states a default for {var}, which the code lacks"
    assert _same(CODE_DEFAULTS[var], value), (
        f"{page} says {var} defaults to {value}; the code says {CODE_DEFAULTS[var]}"
    )


def test_a_wrong_default_is_caught() -> None:
    """The check can fail: the contract page's old '5 attempts', written as a default."""
    (row,) = TABLE_ROW.findall("| `GRAPH_RUNS_API_MAX_ATTEMPTS` | `5` | tries |")
    assert not _same(CODE_DEFAULTS[row[0]], row[1])
    (prose,) = PROSE.findall("tries (`GRAPH_RUNS_API_MAX_ATTEMPTS`, 5 tries by default)")
    assert not _same(CODE_DEFAULTS[prose[0]], prose[1])
