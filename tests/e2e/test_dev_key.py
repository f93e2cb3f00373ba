"""The development key, as an operator meets it: `prefsync connectors put` refuses to seal
with it unless PREFSYNC_ALLOW_DEV_KEY says so (workers holding the real keys would
dead-letter the connector), and a key file others can read is refused, in one line each."""

from __future__ import annotations

import json

from tests.e2e.helpers import BRAZE_KEY, braze_config


def without_keys(prefsync_env, tmp_path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in prefsync_env.items() if k != "PREFSYNC_SECRET_KEYS"}
    return env | {"PREFSYNC_DEV_KEY_FILE": str(tmp_path / "secret.key")} | extra


def test_put_without_keys_is_refused_and_stores_nothing(
    prefsync_env, fake_destinations, run_cli, tmp_path
):
    env = without_keys(prefsync_env, tmp_path)
    config = json.dumps(braze_config(fake_destinations.url, BRAZE_KEY))

    put = run_cli(env, "connectors", "put", "acme", "-", input=config)

    assert put.returncode == 2
    (line,) = put.stderr.splitlines()
    assert line.startswith("error: PREFSYNC_SECRET_KEYS is not set")
    assert "PREFSYNC_ALLOW_DEV_KEY=1" in line
    assert not (tmp_path / "secret.key").exists()
    assert "has no connectors" in run_cli(prefsync_env, "connectors", "list", "acme").stderr


def test_put_with_the_development_setting_seals_with_the_dev_key(
    prefsync_env, fake_destinations, run_cli, tmp_path
):
    env = without_keys(prefsync_env, tmp_path, PREFSYNC_ALLOW_DEV_KEY="1")
    config = json.dumps(braze_config(fake_destinations.url, BRAZE_KEY))

    put = run_cli(env, "connectors", "put", "acme", "-", input=config)

    assert put.returncode == 0, put.stderr
    assert (tmp_path / "secret.key").stat().st_mode & 0o777 == 0o600
    assert run_cli(env, "connectors", "show", "acme", "braze").returncode == 0


def test_a_key_file_others_can_read_is_refused_in_one_line(
    prefsync_env, fake_destinations, run_cli, tmp_path
):
    env = without_keys(prefsync_env, tmp_path, PREFSYNC_ALLOW_DEV_KEY="1")
    config = json.dumps(braze_config(fake_destinations.url, BRAZE_KEY))
    assert run_cli(env, "connectors", "put", "acme", "-", input=config).returncode == 0
    key_file = tmp_path / "secret.key"
    key_file.chmod(0o644)

    shown = run_cli(env, "connectors", "show", "acme", "braze")

    assert shown.returncode == 2
    assert shown.stderr.splitlines() == [
        f"error: PREFSYNC_DEV_KEY_FILE {key_file} is readable by group or others: "
        f"run `chmod 600 {key_file}` (or set PREFSYNC_SECRET_KEYS)"
    ]
    assert key_file.read_text().strip() not in shown.stderr
