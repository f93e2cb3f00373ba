"""Hostile input, generated: arbitrary JSON and mutated copies of the examples fed to every
entry point (the producer API, `prefsync enqueue`, the route task, connector configs).

Each entry point has one contract for input it cannot use: refuse it with our own error,
in one line that says what is wrong, and never crash, lose it or echo a credential. The
properties below state those contracts; the explicit cases pin down the size limit, the
Braze server tricks no property would reliably reach, and each bug the properties found.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import states
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.queue import harness as task_harness
from tests.unit.queue.harness import Harness
from worker.cli import main
from worker.connectors.base import mask
from worker.connectors.braze import INSTANCES
from worker.connectors.config import parse_config
from worker.connectors.model import ConnectorConfig
from worker.core.errors import InvalidConfig, InvalidEvent
from worker.core.events import MAX_DEPTH, PreferenceEvent
from worker.delivery import runtime as runtime_module
from worker.delivery.runtime import Runtime
from worker.infra.settings import get_settings
from worker.producer import enqueue, validate
from worker.queue import tasks
from worker.queue.tasks import route
from worker.records.outbox import ENTRIES as OUTBOX_ENTRIES

# The real route task through Celery's Request and tracer, on fakeredis and a frozen clock.
harness = task_harness.harness

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EVENTS = [json.loads(p.read_text()) for p in sorted((EXAMPLES / "events").glob("*.json"))]
CONFIGS = [json.loads(p.read_text()) for p in sorted((EXAMPLES / "connectors").glob("*.json"))]
BRAZE = json.loads((EXAMPLES / "connectors" / "braze.json").read_text())  # the real endpoint
# The local examples name the fake destinations, which only these settings allow.
ALLOW_HOSTS = ("127.0.0.1:8080", "fake-destinations:8080")
DEFAULT_LIMIT = 256 * 1024
TENANT = "acme"  # the examples' tenant

# Deterministic and without an example database, so CI sees the same inputs every run.
# The fixtures used under @given are reset by each test itself where it matters.
FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(autouse=True)
def default_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("MAX_EVENT_BYTES", "ALLOW_HOSTS"):
        monkeypatch.delenv(f"PREFSYNC_{name}", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


# -- strategies ------------------------------------------------------------------------

# Text a producer can really send, and the characters that break naive handling:
# lone surrogates (JSON's "\ud800"), line separators JSON keeps raw, NUL, bidi controls.
TRICKY_TEXT = [
    "",
    " ",
    "\ud800",
    "a\udfffb",
    "line\nbreak",
    "\u2028",
    "\x85",
    "\x00",
    "\u202etxt.exe",
    "é" * 3,
    "💥",
]
texts = (
    st.text(max_size=12)
    | st.sampled_from(TRICKY_TEXT)
    | st.text(st.characters(), max_size=4)
    | st.integers(1000, 5000).map(lambda size: "x" * size)
)
numbers = (
    st.integers()
    | st.sampled_from([0, -1, 2**63, -(2**63) - 1, 10**40])
    | st.floats(allow_nan=True, allow_infinity=True)
)
json_scalars = st.none() | st.booleans() | numbers | texts
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)

Path_ = tuple[str | int, ...]


def paths(value: Any, here: Path_ = ()) -> Iterator[Path_]:
    """Every location in a JSON value, the root included."""
    yield here
    if isinstance(value, dict):
        for key, child in value.items():
            yield from paths(child, (*here, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from paths(child, (*here, index))


def get(root: Any, where: Path_) -> Any:
    for part in where:
        root = root[part]
    return root


def put(root: Any, where: Path_, value: Any) -> Any:
    """``root`` with the value at ``where`` replaced (the root itself when ``where`` is ())."""
    if not where:
        return value
    get(root, where[:-1])[where[-1]] = value
    return root


def nest(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = [value]
    return value


@st.composite
def mutated(draw: st.DrawFn, examples: list[dict[str, Any]], max_depth: int = 3000) -> Any:
    """An example with zero to three mutations: a key dropped, a value replaced by any
    JSON value (so of any type), an unknown key added, a huge string, NaN or infinity,
    deep nesting. Zero mutations keeps some inputs valid, so acceptance is tested too."""
    payload: Any = copy.deepcopy(draw(st.sampled_from(examples)))
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(list(paths(payload))))
        kind = draw(st.sampled_from(["drop", "replace", "add", "huge", "float", "nest", "text"]))
        old = get(payload, where)
        if kind == "drop" and where:
            del get(payload, where[:-1])[where[-1]]
        elif kind == "add" and isinstance(old, dict):
            old[draw(texts)] = draw(json_values)
        elif kind == "huge":
            size = draw(st.sampled_from([70_000, DEFAULT_LIMIT, DEFAULT_LIMIT + 1]))
            payload = put(payload, where, "é" * (size // 2))
        elif kind == "float":
            value = draw(st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0]))
            payload = put(payload, where, value)
        elif kind == "nest":
            payload = put(payload, where, nest(old, draw(st.integers(1, max_depth))))
            break  # finding paths in a thousand levels would cost more than it finds
        elif kind == "text":
            payload = put(payload, where, draw(texts))
        else:
            payload = put(payload, where, draw(json_values))
    return payload


events = json_values | mutated(EVENTS)

# An InvalidEvent names what is wrong: the field (every path starts at one of the
# envelope's fields), or the JSON form, the nesting or the size limit.
NAMES_WHAT = re.compile(
    r"(type|regulation|parameters)[.:]"
    r"|event (must be a JSON object|is not JSON-encodable: .+|is nested deeper than \d+ levels"
    r"|is \d+ bytes, larger than the limit of \d+)"
)


def assert_refusal(exc: InvalidEvent) -> None:
    message = str(exc)
    assert message.strip(), "empty refusal"
    assert message.isprintable(), f"not one line: {message!r}"
    assert len(message) <= 1000, f"{len(message)} characters: the payload leaked into it?"
    assert NAMES_WHAT.match(message), message


def assert_storable(payload: Any) -> None:
    """What is accepted can be carried as JSON by the broker and kept by Redis."""
    encoded = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    assert len(encoded.encode("utf-8")) <= DEFAULT_LIMIT


# -- 1a. the producer API ----------------------------------------------------------------


@FUZZ
@given(payload=events)
def test_validate_accepts_or_refuses_with_a_one_line_reason_never_anything_else(
    payload: Any,
) -> None:
    try:
        event = validate(payload)
    except InvalidEvent as exc:
        assert_refusal(exc)
        return
    assert isinstance(event, PreferenceEvent)
    assert_storable(payload)


@FUZZ
@given(payload=mutated(EVENTS) | json_values)
def test_enqueue_publishes_exactly_what_it_accepts_and_nothing_it_refuses(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch, payload: Any
) -> None:
    sent: list[list[Any]] = []

    def apply_async(args: list[Any], **_: Any) -> None:
        sent.append(args)

    monkeypatch.setattr(tasks.route, "apply_async", apply_async)
    try:
        task_id = enqueue(payload)
    except InvalidEvent as exc:
        assert_refusal(exc)
        assert sent == []
        return
    assert isinstance(task_id, str) and task_id
    assert sent == [[[payload]]]
    assert_storable(payload)


def test_the_producer_refuses_the_non_json_a_python_caller_can_hand_it() -> None:
    deep: Any = {}
    for _ in range(100_000):
        deep = {"a": deep}
    for payload, reason in [
        ({**EVENTS[0], "extra": math.nan}, "not JSON-encodable"),
        ({**EVENTS[0], "extra": "\ud800"}, "lone surrogate"),
        ({**EVENTS[0], "extra": deep}, "nested deeper than 64 levels"),
        ({**EVENTS[0], "extra": b"bytes"}, "not JSON-encodable"),
    ]:
        with pytest.raises(InvalidEvent, match=reason):
            validate(payload)


def test_the_nesting_limit_is_the_same_whatever_the_callers_stack() -> None:
    # The envelope is level 1, "extra" then holds lists down to an object at the limit.
    validate({**EVENTS[0], "extra": nest({}, MAX_DEPTH - 2)})
    with pytest.raises(InvalidEvent, match=f"^event is nested deeper than {MAX_DEPTH} levels$"):
        validate({**EVENTS[0], "extra": nest({}, MAX_DEPTH - 1)})


def test_a_refusal_quotes_neither_a_huge_nor_a_multi_line_payload_key_or_id() -> None:
    keyed = copy.deepcopy(EVENTS[0])
    newsletter = keyed["parameters"]["entity"]["consents"]["purposes"][0]
    newsletter["values"] = {"a\nb" * 1000: {"value": 3}}
    twice = copy.deepcopy(EVENTS[0])
    twice["parameters"]["entity"]["consents"]["purposes"] += [{"id": "x" * 10_000}] * 2

    with pytest.raises(InvalidEvent) as by_key:
        validate(keyed)
    with pytest.raises(InvalidEvent) as by_id:
        validate(twice)

    assert_refusal(by_key.value)
    assert str(by_key.value).startswith("parameters.entity.consents.purposes.0.values.'a\\nb")
    assert_refusal(by_id.value)
    assert str(by_id.value).startswith("parameters.entity.consents.purposes: duplicate id 'xxx")


# -- 1b. prefsync enqueue ---------------------------------------------------------------


def event_line(payload: Any) -> bytes:
    # ensure_ascii=False keeps U+2028 and U+0085 raw, as many producers write them; a lone
    # surrogate then becomes bytes that are not UTF-8, which is hostile input too.
    return json.dumps(payload, ensure_ascii=False).encode("utf-8", errors="surrogatepass")


other_lines = st.one_of(
    st.text(max_size=30).filter(lambda t: "\n" not in t).map(lambda t: t.encode()),
    st.binary(max_size=30).filter(lambda b: b"\n" not in b),
    st.sampled_from(
        [
            b"",
            b"   ",
            b"[1, 2",
            b'{"type": "caf\xe9"}',
            b"\xff\xfe",
            b"[" * 5000,
            b"1" * 5000,  # longer than Python converts to an int
            b"NaN",
        ]
    ),
)
lines = st.lists(mutated(EVENTS, max_depth=500).map(event_line) | other_lines, max_size=8)


def oracle(line: bytes) -> Any:
    """What the line should become: "blank", "invalid", or the payload to enqueue."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid"
    if not text.strip():
        return "blank"
    try:
        payload = json.loads(text)
        validate(payload)
    except (ValueError, RecursionError, InvalidEvent):
        return "invalid"
    return payload


@FUZZ
@given(
    first=mutated(EVENTS, max_depth=50).map(event_line),
    rest=lines.filter(lambda ls: any(oracle(line) != "blank" for line in ls)),
    newline=st.sampled_from([b"\n", b"\r\n"]),
)
def test_enqueue_jsonl_reports_each_invalid_line_by_number_and_enqueues_the_others(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch, first: bytes, rest: list[bytes], newline: bytes
) -> None:
    # A complete JSON value first and another line after it: the input cannot be read as
    # one JSON document, so it is JSON Lines.
    given_lines = [first, *rest]
    sent: list[Any] = []
    monkeypatch.setattr(tasks.route, "apply_async", lambda args, **_: sent.extend(args[0]))

    result = CliRunner().invoke(main, ["enqueue", "-"], input=newline.join(given_lines))

    expected = {number: oracle(line) for number, line in enumerate(given_lines, start=1)}
    invalid = {number for number, what in expected.items() if what == "invalid"}
    valid = [what for what in expected.values() if what not in ("invalid", "blank")]
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    reported = re.findall(r"^line (\d+): (.*)$", result.output, re.MULTILINE)
    assert {int(number) for number, _ in reported} == invalid, result.output[:3000]
    assert len(reported) == len(invalid)
    assert all(reason.strip() for _, reason in reported)
    assert sent == valid
    assert f"enqueued {len(valid)} event(s), {len(invalid)} invalid" in result.output
    assert result.exit_code == (1 if invalid else 0)


def test_enqueue_keeps_an_event_whole_across_unicode_line_separators(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # JSON allows U+2028, U+0085 and form feed raw inside a string; they end no line.
    payload = copy.deepcopy(EVENTS[0])
    payload["parameters"]["entity"]["regulation"] = "gdpr\u2028\x85\x0c"
    sent: list[Any] = []
    monkeypatch.setattr(tasks.route, "apply_async", lambda args, **_: sent.extend(args[0]))
    text = json.dumps(payload, ensure_ascii=False) + "\n" + json.dumps(EVENTS[1])

    result = CliRunner().invoke(main, ["enqueue", "-"], input=text.encode())

    assert result.exit_code == 0, result.output
    assert sent == [payload, EVENTS[1]]


def test_enqueue_refuses_a_line_that_is_not_utf8_and_enqueues_the_rest(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[Any] = []
    monkeypatch.setattr(tasks.route, "apply_async", lambda args, **_: sent.extend(args[0]))
    data = b"\n".join([json.dumps(EVENTS[0]).encode(), b'{"type": "caf\xe9"}', b"[" * 5000])

    result = CliRunner().invoke(main, ["enqueue", "-"], input=data)

    assert result.exit_code == 1
    assert "line 2: not UTF-8 text (byte 13)" in result.output
    assert "line 3: not valid JSON (nested too deeply)" in result.output
    assert "enqueued 1 event(s), 2 invalid" in result.output
    assert sent == [EVENTS[0]]


# -- 1c. the route task ------------------------------------------------------------------


def reset(harness: Harness) -> str:
    """A fresh Redis and broker for each generated payload, with one connector for the
    examples' tenant so that a valid event has somewhere to fan out to."""
    harness.rt.redis.flushall()
    harness.broker.published.clear()
    harness.broker.queue.clear()
    config = parse_config(BRAZE)
    harness.rt.configs.put(TENANT, config)
    return config.id


# Nesting stops at 200 levels here: the harness publishes through JSON (the outbox, its
# broker), which thousands of levels would break before the task ever ran; the producer
# refuses those itself (above).
@FUZZ
@given(payload=mutated(EVENTS, max_depth=200) | json_values)
def test_route_fans_out_or_dead_letters_every_payload_never_loses_one(
    harness: Harness, payload: Any
) -> None:
    connector_id = reset(harness)
    # The worker validates again, and must come to the producer's verdict.
    try:
        tenant: str | None = validate(payload).tenant
    except InvalidEvent:
        tenant = None

    harness.worker.send(route, [payload])
    [message] = harness.broker.queue
    harness.broker.queue.clear()
    run = harness.worker.execute(message)

    deliveries = [m for m in harness.broker.published if m.task == "prefsync.deliver"]
    dead_letters = harness.dead_letters()
    assert run.settled == "ack"
    assert harness.broker.retries() == []  # bad input is never retried
    if tenant is not None:
        assert run.state == states.SUCCESS
        # Another tenant has no connector here: routed to none, as designed.
        assert [m.args[1] for m in deliveries] == ([connector_id] if tenant == TENANT else [])
        assert dead_letters == []
    else:
        assert run.state == states.SUCCESS  # the message ended: its event is a dead letter
        assert deliveries == []
        [entry] = dead_letters
        assert entry.reason.startswith("invalid event: "), entry.reason
        assert entry.connector_id == ""
        assert harness.rt.recorder.counts()["dead_lettered"] == 1
    # Ended either way: nothing left for the outbox sweep to publish again.
    assert harness.rt.redis.hget(OUTBOX_ENTRIES, message.task_id) is None


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param("\ud800", id="lone-surrogate"),
        pytest.param({**EVENTS[0], "extra": nest({}, 250)}, id="250-levels-deep"),
    ],
)
def test_route_keeps_a_poison_payload_as_a_dead_letter_that_can_be_listed(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, payload: Any
) -> None:
    # Both were lost: pydantic could not write the first into the dead-letter store (the
    # failure handler's error was swallowed), nor read the second back, which then broke
    # every `prefsync dlq list`.
    reset(harness)
    monkeypatch.setattr(runtime_module, "_runtime", (os.getpid(), harness.rt))  # the CLI's

    harness.worker.send(route, [payload])
    harness.worker.drain()

    [entry] = harness.dead_letters()
    assert entry.reason.startswith("invalid event: ")
    assert entry.payload == payload
    listed = CliRunner().invoke(main, ["dlq", "list"])
    shown = CliRunner().invoke(main, ["dlq", "show", entry.id])
    assert (listed.exit_code, shown.exit_code) == (0, 0), (listed.output, shown.output)
    assert listed.output.startswith(f"{entry.id}\t")
    assert json.loads(shown.output)["payload"] == payload


# -- 2. the size limit -------------------------------------------------------------------


def oversized() -> tuple[dict[str, Any], int]:
    payload = copy.deepcopy(EVENTS[0])
    payload["note"] = "é" * (DEFAULT_LIMIT // 2)  # two UTF-8 bytes each
    size = len(json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode())
    assert size > DEFAULT_LIMIT
    return payload, size


def test_the_producer_refuses_an_event_over_the_default_limit_naming_size_and_limit(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload, size = oversized()
    sent: list[Any] = []
    monkeypatch.setattr(tasks.route, "apply_async", lambda args, **_: sent.append(args))

    with pytest.raises(InvalidEvent) as caught:
        enqueue(payload)

    assert str(caught.value) == f"event is {size} bytes, larger than the limit of {DEFAULT_LIMIT}"
    assert sent == []


def test_enqueue_refuses_an_oversized_line_naming_size_and_limit(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload, size = oversized()
    sent: list[Any] = []
    monkeypatch.setattr(tasks.route, "apply_async", lambda args, **_: sent.extend(args[0]))
    data = json.dumps(EVENTS[0]) + "\n" + json.dumps(payload, ensure_ascii=False)

    result = CliRunner().invoke(main, ["enqueue", "-"], input=data.encode())

    assert result.exit_code == 1
    assert f"line 2: event is {size} bytes, larger than the limit of {DEFAULT_LIMIT}" in (
        result.output
    )
    assert sent == [EVENTS[0]]


def test_route_dead_letters_an_oversized_event_naming_size_and_limit(harness: Harness) -> None:
    reset(harness)
    payload, size = oversized()

    harness.worker.send(route, [payload])
    runs = harness.worker.drain()

    assert [r.state for r in runs] == [states.SUCCESS]
    assert [m.task for m in harness.broker.published] == ["prefsync.route"]
    [entry] = harness.dead_letters()
    assert entry.reason == (
        f"invalid event: event is {size} bytes, larger than the limit of {DEFAULT_LIMIT}"
    )


# -- 3. connector configs ----------------------------------------------------------------

CREDENTIAL = "sk-CANARY-0123456789abcdef"  # long enough that masking shows it is gone
BREVO_LIKE = "xkeysib-" + "0123456789abcdef" * 4 + "-CANARY0123456789"  # longer than 40
credentials = st.sampled_from([CREDENTIAL, f"  {CREDENTIAL}\t", CREDENTIAL.lower(), BREVO_LIKE])


@st.composite
def configs(draw: st.DrawFn) -> Any:
    """A mutated example config whose credential is one of ours, sometimes also pasted
    into another field (or as a field name), as people do."""
    credential = draw(credentials)
    examples = copy.deepcopy(CONFIGS)
    for config in examples:
        options = config.get("authentication") or config["config"]
        options["api_key"] = credential
    raw = draw(mutated(examples, max_depth=50))
    if draw(st.booleans()):
        where = draw(st.sampled_from(list(paths(raw))))
        raw = put(raw, where, draw(st.sampled_from([credential, credential.strip().upper()])))
    if isinstance(raw, dict) and draw(st.booleans()):
        raw[credential] = None
    return raw


def given_credentials(raw: Any) -> list[str]:
    """Our credentials that the config still gives where a credential goes."""
    if not isinstance(raw, dict):
        return []
    options = [raw.get(part) for part in ("authentication", "properties", "config")]
    return [
        value.strip()
        for option in options
        if isinstance(option, dict)
        for name in ("api_key", "private_api_key")
        if isinstance(value := option.get(name), str) and "canary" in value.lower()
    ]


def masked(text: str, credentials: list[str]) -> str:
    """A credential pasted as a field name is shown masked, like anywhere else."""
    for credential in credentials:
        text = re.sub(re.escape(credential), mask(credential), text, flags=re.IGNORECASE)
    return text


def escaped(name: object) -> str:
    """A field name as a message shows it: unprintable characters escaped."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in str(name))


def assert_config_refusal(exc: InvalidConfig, raw: Any) -> None:
    lines = str(exc).split("\n")
    # Each problem, one per line, names its field: one of ours or a key the config has.
    roots = {"config", "id", "type_id", "mappings", "authentication", "properties"}
    if isinstance(raw, dict):
        roots |= {escaped(masked(str(key), given_credentials(raw))) for key in raw}
    for line in lines:
        assert any(line.startswith((f"{r}: ", f"{r}.", f"{r}[")) for r in roots), line
        assert line.rsplit(": ", 1)[-1].strip(), line


def assert_server_allowed(config: ConnectorConfig) -> None:
    """An accepted Braze config sends its key to a Braze REST endpoint, or to a host the
    operator allowed; whatever the server string was."""
    if config.type_id != "braze":
        return
    allowed = {f"https://{instance.rest}" for instance in INSTANCES}
    allowed |= {f"{scheme}://{host}" for scheme in ("http", "https") for host in ALLOW_HOSTS}
    assert config.options.server in allowed  # type: ignore[attr-defined]


@FUZZ
@given(raw=configs())
def test_a_config_is_accepted_or_refused_naming_fields_never_quoting_the_credential(
    raw: Any,
) -> None:
    try:
        config = parse_config(raw, allow_hosts=ALLOW_HOSTS)
    except InvalidConfig as exc:
        assert_config_refusal(exc, raw)
        for credential in given_credentials(raw):
            # Not even in part: a message that cut the key short would give most of it.
            assert credential[:20].lower() not in str(exc).lower()
        return
    assert_server_allowed(config)


servers = st.one_of(
    st.text(max_size=40),
    st.builds(
        "".join,
        st.lists(
            st.sampled_from(
                [
                    "https://",
                    "http://",
                    "rest.iad-01.braze.com",
                    "rest.fra-01.braze.eu",
                    "US-01",
                    ".",
                    "@",
                    ":",
                    "8443",
                    "/",
                    "\\",
                    "%2e",
                    "%40",
                    "evil.example",
                    "127.0.0.1",
                    "[::1]",
                    "[",
                    "#",
                    "?",
                    "user:pass@",
                    "\u0456",  # Cyrillic i
                    "\uff0e",  # fullwidth full stop
                    "\u212a",  # Kelvin sign, lower-cases to "k"
                    " ",
                    "\t",
                    "\n",
                    "\ud800",  # JSON's "\ud800": no UTF-8 form
                ]
            ),
            max_size=6,
        ),
    ),
)


@FUZZ
@given(server=servers)
def test_any_braze_server_string_is_a_known_endpoint_or_a_refusal_naming_the_field(
    server: str,
) -> None:
    raw = {
        "type_id": "braze",
        "authentication": {"api_key": CREDENTIAL, "server": server},
        "mappings": [{"id": "OPTED_IN", "value": "consents_purposes_newsletter_enabled"}],
    }
    try:
        config = parse_config(raw, allow_hosts=ALLOW_HOSTS)
    except InvalidConfig as exc:
        assert str(exc).startswith("authentication.server: "), str(exc)
        assert "\n" not in str(exc)
        return
    assert_server_allowed(config)


def test_a_lone_surrogate_anywhere_in_a_config_is_refused_naming_where() -> None:
    # pydantic cannot quote such a string in a validation error: it raised
    # UnicodeEncodeError from parse_config instead of InvalidConfig.
    raw = copy.deepcopy(BRAZE)
    raw["authentication"]["server"] = "\ud800"
    raw["mappings"][1]["id"] = "x\udfff"

    with pytest.raises(InvalidConfig) as caught:
        parse_config(raw)

    assert str(caught.value).split("\n") == [
        "authentication.server: not UTF-8 text (a lone surrogate)",
        "mappings[1].id: not UTF-8 text (a lone surrogate)",
    ]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            {"type_id": CREDENTIAL, "authentication": {"api_key": CREDENTIAL}},
            "type_id: unknown '…cdef' (known: braze, brevo, sendinblue)",
            id="key-as-type_id-of-unknown-connector",
        ),
        pytest.param(
            {"type_id": BREVO_LIKE, "config": {"api_key": BREVO_LIKE}},
            "type_id: unknown name of 89 characters (known: braze, brevo, sendinblue)",
            id="long-key-as-type_id-not-cut-short",
        ),
        pytest.param(
            {**BRAZE, "authentication": {"api_key": f" {CREDENTIAL} ", "server": f" {CREDENTIAL}"}},
            "authentication.server: …cdef is not a Braze REST endpoint",
            id="padded-key-as-server",
        ),
        pytest.param(
            {**BRAZE, "authentication": {"api_key": CREDENTIAL}, "properties": [], CREDENTIAL: 1},
            "…cdef: unknown field",
            id="key-as-field-name-without-a-usable-shape",
        ),
        pytest.param(
            {**BRAZE, "note\nmappings": 1},
            "note\\nmappings: unknown field",
            id="line-break-in-a-field-name",
        ),
        pytest.param(
            {**BRAZE, "authentication": {"api_key": "T"}},
            "authentication.server: field required",
            id="one-letter-key-leaves-messages-readable",
        ),
    ],
)
def test_config_refusals_mask_pasted_keys_and_stay_one_line_each(
    raw: dict[str, Any], expected: str
) -> None:
    with pytest.raises(InvalidConfig) as caught:
        parse_config(raw)

    lines = str(caught.value).split("\n")
    assert any(line.startswith(expected) for line in lines), lines
    assert "canary" not in str(caught.value).lower()


# tests/unit/connectors/test_config.py covers http, ".evil.example", a trailing dot, user info,
# a port and other IP addresses; these are the tricks it does not.
@pytest.mark.parametrize(
    ("server", "message"),
    [
        ("https://127.0.0.1", "not an IP address"),
        ("https://rest.iad-01.braze.com:8443/x", "must not name a port"),
        ("https://user:pass@rest.iad-01.braze.com", "must not contain user info"),
        ("https://rest.iad-01.braze.com@evil.example", "must not contain user info"),
        ("https://rest.iad-01.braze.com\\@evil.example", "must not contain user info"),
        ("https://evil.example\\rest.iad-01.braze.com", "is not a Braze REST endpoint"),
        ("https://rest.iad-01.braze.com\\.evil.example", "is not a Braze REST endpoint"),
        ("rest.iad-01.braze.com\\evil.example", "is not a Braze REST endpoint"),
        ("https://rest%2eiad-01.braze.com", "is not a Braze REST endpoint"),
        ("https://%72est.iad-01.braze.com", "is not a Braze REST endpoint"),
        ("https://rest.iad-01.braze.com%2f@evil.example", "must not contain user info"),
        ("https://rest.iad-01.braze.com%2eevil.example", "is not a Braze REST endpoint"),
        ("rest.iad-01.braze.com.", "must not end with a dot"),
        ("https://rest.iad-01.braze.com./", "must not end with a dot"),
        ("https://rest.iad-01.braze.com..", "must not end with a dot"),
        # Look-alikes: Cyrillic i, Cyrillic a, the first as punycode, a fullwidth and an
        # ideographic full stop.
        ("https://rest.\u0456ad-01.braze.com", "is not a Braze REST endpoint"),
        ("https://rest.iad-01.br\u0430ze.com", "is not a Braze REST endpoint"),
        ("https://rest.xn--ad-01-m2e.braze.com", "is not a Braze REST endpoint"),
        ("https://rest.iad-01.braze\uff0ecom", "is not a Braze REST endpoint"),
        ("https://rest.iad-01.braze.com\u3002", "is not a Braze REST endpoint"),
    ],
)
def test_braze_server_tricks_are_refused(server: str, message: str) -> None:
    raw = {
        "type_id": "braze",
        "authentication": {"api_key": CREDENTIAL, "server": server},
        "mappings": [{"id": "OPTED_IN", "value": "consents_purposes_newsletter_enabled"}],
    }

    with pytest.raises(InvalidConfig) as caught:
        parse_config(raw)

    assert str(caught.value).startswith("authentication.server: ")
    assert message in str(caught.value)
