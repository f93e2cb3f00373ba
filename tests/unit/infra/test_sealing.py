"""Connector configs sealed at rest (worker.infra.sealing, ConfigStore): no credential in Redis in
clear, plain configs of an older release still read, keys rotated by reencrypt."""

from __future__ import annotations

import json
import stat

import fakeredis
import pytest
from cryptography.fernet import Fernet

from worker.connectors.config import parse_config
from worker.core.errors import InvalidConfig
from worker.infra.sealing import FERNET_PREFIX, PREFIX, Sealer, SealingError, keys_from, new_key
from worker.infra.settings import Settings
from worker.records.configs import KEY_PREFIX, ConfigStore

API_KEY = "xkeysib-SEALED-0123456789abcdef"
CONFIG = {
    "type_id": "sendinblue",
    "config": {
        "api_key": API_KEY,
        "properties": [{"id": "A", "value": "consents_purposes_x_enabled"}],
    },
}


def everything(redis: fakeredis.FakeRedis) -> bytes:
    return b"".join(
        name + b"".join(k + v for k, v in redis.hgetall(name).items())
        for name in redis.scan_iter(f"{KEY_PREFIX}*")
    )


def test_a_stored_config_holds_no_credential_in_clear_and_reads_back():
    redis, sealer = fakeredis.FakeRedis(), Sealer([new_key()])
    store = ConfigStore(redis, sealer)
    store.put("acme", parse_config(CONFIG))

    assert API_KEY.encode() not in everything(redis)
    assert redis.hget(f"{KEY_PREFIX}acme", "sendinblue").startswith(PREFIX)
    assert store.get("acme", "sendinblue").credentials == API_KEY


def test_a_plain_config_of_an_older_release_reads_with_the_development_key_until_reencrypted():
    redis, sealer = fakeredis.FakeRedis(), Sealer([new_key()], accept_plain=True)
    stored = parse_config(CONFIG).to_stored()
    redis.hset(f"{KEY_PREFIX}acme", "sendinblue", json.dumps(stored))
    store = ConfigStore(redis, sealer)
    assert store.get("acme", "sendinblue").credentials == API_KEY

    assert store.reencrypt() == (1, 0)

    assert API_KEY.encode() not in everything(redis)
    assert store.get("acme", "sendinblue").credentials == API_KEY
    assert store.reencrypt() == (0, 1)


def test_with_keys_set_a_plain_config_is_refused_naming_reencrypt_which_seals_it():
    redis = fakeredis.FakeRedis()
    redis.hset(f"{KEY_PREFIX}acme", "sendinblue", json.dumps(parse_config(CONFIG).to_stored()))
    store = ConfigStore(redis, Sealer([new_key()]))

    with pytest.raises(InvalidConfig, match=r"plain text.*prefsync connectors reencrypt"):
        store.get("acme", "sendinblue")

    assert store.reencrypt() == (1, 0)
    assert store.get("acme", "sendinblue").credentials == API_KEY


def test_a_sealed_config_moved_to_another_tenant_or_connector_is_refused():
    redis, sealer = fakeredis.FakeRedis(), Sealer([new_key()])
    store = ConfigStore(redis, sealer)
    store.put("globex", parse_config(CONFIG))
    store.put("acme", parse_config({**CONFIG, "config": {**CONFIG["config"], "api_key": "k2"}}))
    globex = redis.hget(f"{KEY_PREFIX}globex", "sendinblue")

    redis.hset(f"{KEY_PREFIX}acme", "sendinblue", globex)
    redis.hset(f"{KEY_PREFIX}globex", "other", globex)

    for tenant, connector_id in (("acme", "sendinblue"), ("globex", "other")):
        with pytest.raises(InvalidConfig, match="for another tenant or connector") as refused:
            store.get(tenant, connector_id)
        assert API_KEY not in str(refused.value)
    with pytest.raises(InvalidConfig, match="tenant 'acme', connector 'sendinblue'"):
        store.reencrypt()
    assert store.get("globex", "sendinblue").credentials == API_KEY


def test_a_config_the_previous_release_sealed_still_opens_and_reencrypt_binds_it():
    redis, key = fakeredis.FakeRedis(), new_key()
    stored = json.dumps(parse_config(CONFIG).to_stored()).encode()
    redis.hset(f"{KEY_PREFIX}acme", "sendinblue", FERNET_PREFIX + Fernet(key).encrypt(stored))
    store = ConfigStore(redis, Sealer([key]))
    assert store.get("acme", "sendinblue").credentials == API_KEY

    assert store.reencrypt() == (1, 0)

    assert redis.hget(f"{KEY_PREFIX}acme", "sendinblue").startswith(PREFIX)
    assert store.get("acme", "sendinblue").credentials == API_KEY


def test_rotation_the_first_key_seals_every_key_opens_reencrypt_moves_to_the_first():
    redis = fakeredis.FakeRedis()
    old, new = new_key(), new_key()
    ConfigStore(redis, Sealer([old])).put("acme", parse_config(CONFIG))
    rotated = ConfigStore(redis, Sealer([new, old]))
    assert rotated.get("acme", "sendinblue").credentials == API_KEY

    assert rotated.reencrypt() == (1, 0)

    assert ConfigStore(redis, Sealer([new])).get("acme", "sendinblue").credentials == API_KEY
    with pytest.raises(InvalidConfig, match="cannot be read: sealed under a key that is not"):
        ConfigStore(redis, Sealer([old])).get("acme", "sendinblue")


def test_reencrypt_names_a_config_no_key_opens_and_still_does_the_others():
    redis, stranger, ours = fakeredis.FakeRedis(), new_key(), new_key()
    ConfigStore(redis, Sealer([stranger])).put("acme", parse_config(CONFIG))
    redis.hset(f"{KEY_PREFIX}beta", "sendinblue", json.dumps(parse_config(CONFIG).to_stored()))

    with pytest.raises(InvalidConfig) as refused:
        ConfigStore(redis, Sealer([ours])).reencrypt()

    assert "re-encrypted 1" in str(refused.value)
    assert "tenant 'acme', connector 'sendinblue'" in str(refused.value)
    assert API_KEY not in str(refused.value)


def test_an_altered_value_is_refused_not_read_wrongly():
    sealer = Sealer([new_key()])
    sealed = bytearray(sealer.seal("{}", "acme", "braze"))
    sealed[-5] ^= 1
    with pytest.raises(SealingError):
        sealer.open(bytes(sealed), "acme", "braze")


def test_without_keys_a_development_key_is_made_once_and_kept_private(tmp_path):
    path = tmp_path / "dir" / "secret.key"
    first = keys_from(None, path)
    assert keys_from("", path) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keys_from(" k1 , k2 ", path) == [" k1 ", " k2 "]


def test_a_malformed_key_is_refused_at_start_without_showing_it():
    with pytest.raises(ValueError) as refused:
        Settings(secret_keys=f"{new_key()},not-a-key-SECRETVALUE")
    assert "SECRETVALUE" not in str(refused.value)
    assert "32 url-safe base64-encoded bytes" in str(refused.value)
