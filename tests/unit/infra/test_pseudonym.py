"""The keyed hash that names a person in Redis (worker.infra.pseudonym), and its key."""

from __future__ import annotations

import logging

import fakeredis

from worker.infra.pseudonym import KEY, Pseudonyms, load_key
from worker.infra.settings import Settings

JANE = "jane.doe@example.com"


def test_the_keyed_hash_is_stable_short_and_depends_on_the_key() -> None:
    one, other = Pseudonyms(b"key-one"), Pseudonyms(b"key-two")
    assert one.user(JANE) == one.user(JANE)
    assert len(one.user(JANE)) == 32 and JANE not in one.user(JANE)
    assert one.user(JANE) != other.user(JANE)
    assert one.user(JANE) != one.user("john@example.com")
    assert one.of("ab", "c") != one.of("a", "bc")
    assert "key-one" not in repr(one)


def test_the_key_setting_is_used_when_given() -> None:
    client = fakeredis.FakeRedis()
    settings = Settings(user_hash_key="from-the-setting")
    assert load_key(client, settings) == b"from-the-setting"
    assert client.get(KEY) is None


def test_an_empty_key_setting_counts_as_unset() -> None:
    # docker compose passes an unset variable as "".
    assert Settings(user_hash_key=" ").user_hash_key is None


def test_without_the_setting_one_key_is_generated_kept_and_warned_about(caplog) -> None:
    client = fakeredis.FakeRedis()
    with caplog.at_level(logging.WARNING, logger="prefsync.pseudonym"):
        first = load_key(client, Settings())
        second = load_key(client, Settings())
    assert first == second == client.get(KEY) and len(first) == 64
    assert "PREFSYNC_USER_HASH_KEY is not set" in caplog.text
