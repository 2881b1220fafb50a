"""A bad setting in the environment stops the CLI with a message naming the variable."""

from __future__ import annotations

from pathlib import Path

from cli_helpers import isolated_env, run


def test_a_non_integer_limit_in_the_environment_is_named(tmp_path: Path) -> None:
    env = {**isolated_env(tmp_path), "DEALRISK_MAX_EVENTS_PER_DEAL": "many"}
    result = run(env, "keys", "list")
    assert result.exit_code == 2
    assert "DEALRISK_MAX_EVENTS_PER_DEAL='many'" in result.stderr
    assert "valid integer" in result.stderr
    assert not (tmp_path / "home").exists()  # nothing was created before the error
