"""graph_runs.cli.billing: budgets set/list and billing report, as typed, exit 2 on bad input.

Runs main() in-process against a real database named by GRAPH_RUNS_DATABASE_URL.
"""


def test_budgets_set_and_list(cli) -> None:
    code, budget, _ = cli(
        "budgets", "set", "--billing-account", "acme", "--limit-usd", "25", "--json"
    )  # fmt: skip
    assert code == 0
    assert (budget["limit_usd"], budget["spent_usd"], budget["reached"]) == ("25", "0", False)
    code, listed, _ = cli("budgets", "list", "--json")
    assert [b["billing_account"] for b in listed] == ["acme"]
    code, _, err = cli("budgets", "set", "--billing-account", "acme", "--limit-usd", "lots")
    assert (code, err) == (2, "error: limit_usd: 'lots' is not a number\n")
    for huge in ("1e30", "9" * 14):  # past what micro-dollars in a BIGINT carry: no traceback
        code, _, err = cli("budgets", "set", "--billing-account", "acme", "--limit-usd", huge)
        assert (code, err) == (2, "error: limit_usd: must be at most 1000000000 USD\n")


def test_billing_report_json_and_bad_range(cli) -> None:
    code, report, _ = cli("billing", "report", "--billing-account", "acme", "--json")
    assert code == 0 and report["total"] == {
        "cost_usd": "0",
        "receipts": 0,
        "total_tokens": 0,
        "over_budget_runs": 0,
    }
    code, _, err = cli(
        "billing", "report", "--billing-account", "acme",
        "--from", "2026-11-02T00:00:00Z", "--to", "2026-11-01T00:00:00Z",
    )  # fmt: skip
    assert code == 2 and err.startswith("error: to: ")
    code, _, err = cli("billing", "report", "--billing-account", "acme", "--from", "yesterday")
    assert code == 2 and err.startswith("error: from: ")
