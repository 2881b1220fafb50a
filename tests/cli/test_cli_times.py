"""Times given on the command line: a time outside what a history may hold (1900-01-01 to 2200-01-01,
as in files and the API) is an error naming the option, before any history or model is read."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import isolated_env, run


@pytest.mark.parametrize(
    ("args", "option", "value"),
    [
        (["at-risk", "--as-of", "9999-01-01"], "--as-of", "9999-01-01"),
        (["forecast", "--as-of", "0001-01-01"], "--as-of", "0001-01-01"),
        (["health", "--since", "1899-12-31", "--until", "2025-01-01"], "--since", "1899-12-31"),
        (["health", "--since", "2025-01-01", "--until", "2201-01-01"], "--until", "2201-01-01"),
        (["score", "--as-of", "0001-01-01", "--out", "s.csv"], "--as-of", "0001-01-01"),
        (["monitor", "--since", "9999-12-31"], "--since", "9999-12-31"),
        (["simulate", "--out", "sim", "--start", "0001-01-01"], "--start", "0001-01-01"),
        (["simulate", "--out", "sim", "--end", "2201-01-01"], "--end", "2201-01-01"),
    ],
)
def test_a_time_out_of_range_names_the_option_and_the_range(
    tmp_path: Path, args: list[str], option: str, value: str
) -> None:
    data = [] if args[0] == "simulate" else ["--data", str(tmp_path)]
    args = [str(tmp_path / a) if a in ("s.csv", "sim") else a for a in args]
    result = run(isolated_env(tmp_path), *args, *data)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error:"), result.stderr
    assert f"{option} '{value}'" in result.stderr and "1900-01-01 to 2200-01-01" in result.stderr
    assert not (tmp_path / "sim").exists()


def test_the_range_s_ends_are_accepted(tmp_path: Path) -> None:
    result = run(isolated_env(tmp_path), "health", "--since", "1900-01-01", "--until", "2200-01-01",
                 "--data", str(tmp_path / "absent"))
    assert result.exit_code == 1 and "absent: no such folder" in result.stderr, result.stderr
