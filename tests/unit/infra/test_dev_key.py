"""The development key file (worker.infra.sealing): refused when group or others can read it,
with one line naming the file and the fix."""

from __future__ import annotations

import pytest

from worker.infra.sealing import keys_from
from worker.infra.settings import InvalidSettings


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_file_readable_by_group_or_others_is_refused(tmp_path, mode: int) -> None:
    path = tmp_path / "secret.key"
    keys_from(None, path)
    path.chmod(mode)

    with pytest.raises(InvalidSettings) as refused:
        keys_from(None, path)

    (line,) = str(refused.value).splitlines()
    assert str(path) in line
    assert f"chmod 600 {path}" in line
    assert path.read_text().strip() not in line


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_key_file_of_its_owner_only_is_used(tmp_path, mode: int) -> None:
    path = tmp_path / "secret.key"
    (key,) = keys_from(None, path)
    path.chmod(mode)

    assert keys_from(None, path) == [key]


def test_the_configured_keys_never_read_the_file(tmp_path) -> None:
    path = tmp_path / "secret.key"
    path.write_text("anything\n")
    path.chmod(0o644)

    assert keys_from("k1,k2", path) == ["k1", "k2"]
