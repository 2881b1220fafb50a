"""Settings from the environment: every documented variable is read, bad values name the variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from serving.settings import Settings, SettingsError, get_settings, read_settings


def test_every_variable_is_read_and_the_home_holds_the_default_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEALRISK_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DEALRISK_DATABASE_URL", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DEALRISK_MAX_BATCH_DEALS", "25")
    monkeypatch.setenv("DEALRISK_RELOAD_INTERVAL_S", "2.5")
    settings = read_settings()
    assert settings.home == tmp_path / "home"
    assert settings.database_url == f"sqlite:///{tmp_path / 'home' / 'dealrisk.db'}"
    assert settings.tracking_uri == f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"
    assert settings.max_batch_deals == 25 and settings.reload_interval_s == 2.5
    assert settings.model_uri == "models:/deal-risk@champion"

    monkeypatch.setenv("DEALRISK_DATABASE_URL", "postgresql+psycopg://u@db/dealrisk")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    settings = read_settings()
    assert settings.database_url == "postgresql+psycopg://u@db/dealrisk"
    assert settings.tracking_uri == "http://mlflow:5000"


def test_a_non_integer_limit_names_the_variable_and_its_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEALRISK_MAX_BATCH_DEALS", "lots")
    with pytest.raises(SettingsError, match=r"DEALRISK_MAX_BATCH_DEALS='lots': .*integer"):
        read_settings()
    monkeypatch.setenv("DEALRISK_MAX_BATCH_DEALS", "0")
    with pytest.raises(SettingsError, match=r"DEALRISK_MAX_BATCH_DEALS='0': .*greater than or equal to 1"):
        read_settings()


def test_get_settings_is_read_once_until_cleared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEALRISK_HOME", str(tmp_path / "a"))
    get_settings.cache_clear()
    try:
        first = get_settings()
        monkeypatch.setenv("DEALRISK_HOME", str(tmp_path / "b"))
        assert get_settings() is first and first.home == tmp_path / "a"
        assert first.home.is_dir()  # the call (not the import) creates the home
    finally:
        get_settings.cache_clear()


def test_importing_the_service_creates_no_folder(tmp_path: Path) -> None:
    home = tmp_path / "never-made"
    code = "import serving.app, serving.settings"
    env = {"DEALRISK_HOME": str(home), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=tmp_path)
    assert not home.exists()
    assert Settings(home=home).home == home  # constructing settings reads, never writes
    assert not home.exists()


def test_the_live_scorer_setting_names_its_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEALRISK_LIVE_SCORER", raising=False)
    assert read_settings().live_scorer == "process"  # what `dealrisk serve` and `make demo` run
    monkeypatch.setenv("DEALRISK_LIVE_SCORER", "thread")
    assert read_settings().live_scorer == "thread"
    monkeypatch.setenv("DEALRISK_LIVE_SCORER", "fork")
    with pytest.raises(SettingsError, match=r"DEALRISK_LIVE_SCORER='fork': .*'process' or 'thread'"):
        read_settings()


def test_the_write_timeout_is_read_under_its_name_and_its_old_sqlite_name_and_the_pool_size_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DEALRISK_WRITE_WAIT_S", raising=False)
    monkeypatch.delenv("DEALRISK_SQLITE_BUSY_TIMEOUT_S", raising=False)
    assert read_settings().write_wait_s == 30.0 and read_settings().pg_pool_size == 20
    monkeypatch.setenv("DEALRISK_SQLITE_BUSY_TIMEOUT_S", "7")  # the name of earlier releases
    assert read_settings().write_wait_s == 7.0
    monkeypatch.setenv("DEALRISK_WRITE_WAIT_S", "2.5")
    monkeypatch.setenv("DEALRISK_PG_POOL_SIZE", "8")
    settings = read_settings()
    assert settings.write_wait_s == 2.5 and settings.pg_pool_size == 8
    monkeypatch.setenv("DEALRISK_PG_POOL_SIZE", "0")
    with pytest.raises(SettingsError, match=r"DEALRISK_PG_POOL_SIZE='0': .*greater than or equal to 1"):
        read_settings()


@pytest.mark.parametrize("variable", ["DEALRISK_WRITE_WAIT_S", "DEALRISK_SQLITE_BUSY_TIMEOUT_S"])
def test_a_bad_write_timeout_names_the_variable_it_was_read_from(
    variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DEALRISK_WRITE_WAIT_S", raising=False)
    monkeypatch.delenv("DEALRISK_SQLITE_BUSY_TIMEOUT_S", raising=False)
    monkeypatch.setenv(variable, "-1")
    with pytest.raises(SettingsError, match=rf"environment: {variable}='-1': .*greater than 0"):
        read_settings()


def test_request_threads_default_to_the_cpu_count_at_least_two_and_are_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    monkeypatch.delenv("DEALRISK_REQUEST_THREADS", raising=False)
    assert read_settings().request_threads == max(2, os.cpu_count() or 1)
    monkeypatch.setenv("DEALRISK_REQUEST_THREADS", "5")
    assert read_settings().request_threads == 5
    monkeypatch.setenv("DEALRISK_REQUEST_THREADS", "0")
    with pytest.raises(SettingsError, match=r"DEALRISK_REQUEST_THREADS='0'"):
        read_settings()
