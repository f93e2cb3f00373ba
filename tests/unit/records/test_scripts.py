"""prefsync's scripts as one Redis function library (worker.records.scripts)."""

from __future__ import annotations

import fakeredis
import pytest

from worker.records import scripts

# The list fed from, the rotation, its counter, and the tenant's other list.
FED_KEYS = [
    "prefsync:bulk:acme",
    "prefsync:bulk:tenants",
    "prefsync:bulk:turn",
    'prefsync:bulk:["acme"]',
]


def test_a_loaded_library_runs_the_scripts_by_fcall_without_eval(monkeypatch):
    client = fakeredis.FakeRedis()
    assert scripts.load(client) == []

    def no_eval(*_args, **_kwargs):
        raise AssertionError("EVAL used although the library is loaded")

    monkeypatch.setattr(client, "register_script", no_eval)
    runner = scripts.Scripts(client)
    client.rpush("prefsync:bulk:acme", "m1", "m2")
    assert runner.run("bulk_fed", FED_KEYS, ["m1", "acme"]) == 1
    assert client.lrange("prefsync:bulk:acme", 0, -1) == [b"m2"]
    taken, slot = runner.run("pace_take", ["prefsync:pace:x"], [100.0, 0.5, 5])
    assert (taken, float(slot)) == (1, 100.0)


def test_every_script_is_a_function_of_the_library():
    client = fakeredis.FakeRedis()
    scripts.load(client)
    (library,) = client.function_list(library=scripts.LIBRARY)
    listed = dict(zip(library[::2], library[1::2], strict=True))
    names = {dict(zip(f[::2], f[1::2], strict=True))[b"name"] for f in listed[b"functions"]}
    assert names == {scripts.function_name(s).encode() for s in [*scripts.PARTS, "loaded"]}


def test_without_the_library_the_scripts_run_by_evalsha():
    client = fakeredis.FakeRedis()
    runner = scripts.Scripts(client)
    assert runner.run("pace_take", ["prefsync:pace:x"], [100.0, 0.5, 5])[0] == 1
    assert client.script_exists(runner._evaluated["pace_take"].sha) == [True]


def test_a_user_who_may_not_eval_is_told_to_load_the_functions(monkeypatch):
    client = fakeredis.FakeRedis()
    runner = scripts.Scripts(client)

    class Refused:
        sha = "0" * 40

        def __call__(self, **_kwargs):
            raise scripts.redis.exceptions.NoPermissionError("NOPERM evalsha")

    monkeypatch.setattr(client, "register_script", lambda _source: Refused())
    with pytest.raises(scripts.FunctionsNotLoaded, match="prefsync redis-acl --load-functions"):
        runner.run("pace_hold", ["prefsync:pace:x"], [100.0, 1])


def test_loading_names_the_libraries_of_other_releases_and_keeps_them():
    client = fakeredis.FakeRedis()
    client.function_load(
        "#!lua name=prefsync_0ld\nredis.register_function('claim_0ld', function() return 1 end)"
    )
    assert scripts.load(client) == ["prefsync_0ld"]
    assert client.fcall("claim_0ld", 0) == 1
