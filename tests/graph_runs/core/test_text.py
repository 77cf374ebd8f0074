"""graph_runs.core.text: outside text is bounded, one line, and bounding it twice is a no-op."""

import pytest

from graph_runs.core.text import MAX_ERROR_MESSAGE, bounded


@pytest.mark.parametrize(
    ("raw", "kept"),
    [
        ("plain message", "plain message"),
        ("two\nlines", "two\\nlines"),
        ("\x1b[2Jcleared", "\\x1b[2Jcleared"),
        ("nul\x00 and \x7f", "nul\\x00 and \\x7f"),
        ("lone \ud800 surrogate", "lone \\ud800 surrogate"),
        ("accents stay: é ü 日本", "accents stay: é ü 日本"),
    ],
)
def test_control_characters_are_escaped_and_the_rest_kept(raw: str, kept: str) -> None:
    assert bounded(raw) == kept


def test_long_text_is_cut_to_the_limit_saying_how_much() -> None:
    cut = bounded("x" * 2_800_000)
    assert cut is not None and len(cut) == MAX_ERROR_MESSAGE
    assert cut.endswith(f"... ({2_800_000 - MAX_ERROR_MESSAGE} more characters)")


@pytest.mark.parametrize("raw", ["a\nb\\n" + "y" * 5000, "short\x1b", None])
def test_bounding_twice_changes_nothing(raw: str | None) -> None:
    once = bounded(raw)
    assert bounded(once) == once
