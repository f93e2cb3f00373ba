"""prefsync's Lua (lua/*.lua), run as one Redis function library.

The admin user loads the library (``prefsync redis-acl --load-functions``: FUNCTION LOAD,
which runs any code it is given, so no other user may); every other component only calls
its functions (FCALL), and so can run prefsync's scripts and no code of its own.

The library and its functions are named after a digest of the scripts
(``prefsync_<version>``, ``claim_<version>``…): a release never calls the functions of
another, and loading a new release's library leaves the previous one for the workers still
running it during an upgrade.

Where the library is not loaded (fakeredis in the unit tests, a Redis without ACLs that
nobody loaded it into), the same scripts run with EVALSHA, if the user may: the users of
``prefsync redis-acl`` may not, and get ``FunctionsNotLoaded``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib.resources import files
from typing import Any

import redis
from redis.client import Pipeline

from worker.core.errors import PrefsyncError

# The preludes define the functions the scripts use (person.lua: the person's record;
# legacy.lua: the previous release's records): in the library they are defined once.
_PRELUDES = ("person", "legacy")

#: script -> the lua/ files it runs (its preludes first)
PARTS: dict[str, tuple[str, ...]] = {
    "claim": ("person", "legacy", "claim"),
    "finish": ("finish",),
    "tombstone": ("person", "legacy", "tombstone"),
    "forget": ("person", "forget"),
    "audit_append": ("audit_append",),
    "bulk_fed": ("bulk_fed",),
    "pace_take": ("pace_take",),
    "pace_hold": ("pace_hold",),
    "signals_inbox": ("inbox",),
}

# A function that only says the library is there: the first call of each process asks it.
_LOADED = "loaded"


def _read(part: str) -> str:
    return (files("worker.records") / "lua" / f"{part}.lua").read_text(encoding="utf-8")


def _digest() -> str:
    parts = sorted({part for names in PARTS.values() for part in names})
    text = "\n".join(f"{part}\n{_read(part)}" for part in parts)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


VERSION = _digest()
LIBRARY = f"prefsync_{VERSION}"


def function_name(script: str) -> str:
    return f"{script}_{VERSION}"


def library() -> str:
    """The library's source for FUNCTION LOAD: the preludes, then each script registered
    as a function taking KEYS and ARGV as a script does."""
    chunks = [f"#!lua name={LIBRARY}", *(_read(part) for part in _PRELUDES)]
    for script, parts in PARTS.items():
        chunks.append(
            f"redis.register_function('{function_name(script)}', function(KEYS, ARGV)\n"
            f"{_read(parts[-1])}\nend)"
        )
    loaded = function_name(_LOADED)
    chunks.append(
        f"redis.register_function{{function_name='{loaded}', "
        "callback=function() return 1 end, flags={'no-writes'}}"
    )
    return "\n".join(chunks)


def load(client: redis.Redis) -> list[str]:
    """Load this release's library (again, if it is there); the prefsync libraries of other
    releases still loaded, which their workers may still call."""
    client.function_load(library(), replace=True)
    others = []
    for entry in client.function_list(library="prefsync_*"):
        if not isinstance(entry, dict):  # RESP2: a flat list of names and values
            entry = dict(zip(entry[::2], entry[1::2], strict=True))
        fields = entry
        name = fields.get(b"library_name", fields.get("library_name"))
        name = name.decode() if isinstance(name, bytes) else str(name)
        if name != LIBRARY:
            others.append(name)
    return sorted(others)


class FunctionsNotLoaded(PrefsyncError):
    """This Redis user may run prefsync's functions only, and they are not loaded."""

    operator_action = True


def _missing(exc: redis.exceptions.ResponseError) -> bool:
    text = str(exc).lower()
    return "function not found" in text or "unknown command" in text


class Scripts:
    """Runs prefsync's scripts on ``client``: by FCALL once the library is loaded, else by
    EVALSHA (see the module's docstring)."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._functions: bool | None = None
        self._evaluated: dict[str, Any] = {}

    def run(
        self,
        script: str,
        keys: Sequence[str],
        args: Sequence[Any],
        client: redis.Redis | Pipeline | None = None,
    ) -> Any:
        """Run ``script`` (a name of ``PARTS``), or queue it on ``client`` (a pipeline)."""
        target = self.redis if client is None else client
        if self._loaded():
            try:
                return target.fcall(function_name(script), len(keys), *keys, *args)
            except redis.exceptions.ResponseError as exc:
                # Gone since (a Redis restarted without persistence): try without.
                if client is not None or not _missing(exc):
                    raise
                self._functions = False
        return self._evalsha(script, keys, args, target)

    def _loaded(self) -> bool:
        if self._functions is None:
            try:
                self.redis.fcall_ro(function_name(_LOADED), 0)
                self._functions = True
            except redis.exceptions.ResponseError as exc:
                if not _missing(exc):
                    raise
                self._functions = False
        return self._functions

    def _evalsha(self, script: str, keys: Sequence[str], args: Sequence[Any], target: Any) -> Any:
        if script not in self._evaluated:
            source = "\n".join(_read(part) for part in PARTS[script])
            self._evaluated[script] = self.redis.register_script(source)
        try:
            return self._evaluated[script](keys=keys, args=args, client=target)
        except redis.exceptions.NoPermissionError:
            raise FunctionsNotLoaded(
                f"prefsync's Redis functions ({LIBRARY}) are not loaded and this Redis user "
                "may not run scripts: load them as the admin user with "
                "`prefsync redis-acl --load-functions`"
            ) from None
