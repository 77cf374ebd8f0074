"""graph_runs.cli.grants: create, list and revoke grants through the CLI, on a real database."""


def test_grants_revoke_and_list(cli, cli_grant) -> None:
    grant_id = cli_grant
    code, created, _ = cli(
        "schedules", "create", "--owner", "alice", "--graph", "daily-digest",
        "--cron", "0 9 * * *", "--grant", grant_id, "--json",
    )  # fmt: skip
    code, revoked, _ = cli("grants", "revoke", grant_id, "--by", "security", "--json")
    assert code == 0 and revoked["revoked_by"] == "security"
    assert revoked["paused_schedules"] == 1
    code, text, _ = cli("grants", "revoke", grant_id, "--by", "security")
    assert text.endswith("paused 0 schedule(s) under it\n")
    code, listed, _ = cli("grants", "list", "--json")
    assert [g["id"] for g in listed] == [grant_id]
    code, _, err = cli("grants", "create", "--owner", "a", "--billing-account", "b", "--scope", "x")
    assert (code, err) == (
        2,
        "error: scope: 'x' is not graph:execute:<graph_id> or graph:execute:*\n",
    )
