"""The `prefsync` command against fakeredis: connector configs (never a full credential in
the output), enqueue's per-event errors, and the dead-letter commands."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import responses
import structlog
from click.testing import CliRunner, Result

from tests.unit.test_producer import broker
from worker.cli import main
from worker.delivery.runtime import Runtime
from worker.infra.settings import get_settings
from worker.ingress.credentials import CredentialStore
from worker.queue import tasks
from worker.records.deadletter import Attempt

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
BRAZE_KEY = "braze-rest-key-abcdef-0123456789"
BREVO_KEY = "xkeysib-0123456789abcdef-WXYZ"


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[Any]]]:
    """Messages the CLI publishes, instead of a broker: (task name, args)."""
    return broker(monkeypatch)


def run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def braze_config() -> dict[str, Any]:
    config = json.loads((EXAMPLES / "connectors" / "braze.json").read_text())
    config["authentication"]["api_key"] = BRAZE_KEY
    return config


def brevo_config() -> dict[str, Any]:
    config = json.loads((EXAMPLES / "connectors" / "sendinblue.json").read_text())
    config["config"]["api_key"] = BREVO_KEY
    return config


def event() -> dict[str, Any]:
    return json.loads((EXAMPLES / "events" / "event-created.json").read_text())


# -- connectors ------------------------------------------------------------------------


def test_put_list_show_delete_never_print_a_credential_in_full(rt: Runtime) -> None:
    outputs = [
        run("connectors", "put", "acme", "-", input=json.dumps(braze_config())),
        run("connectors", "put", "acme", "-", "--id", "eu", input=json.dumps(brevo_config())),
        run("connectors", "list", "acme"),
        run("connectors", "show", "acme", "braze"),
        run("connectors", "show", "acme", "eu"),
    ]
    assert [r.exit_code for r in outputs] == [0] * 5
    text = "".join(r.output for r in outputs)
    assert BRAZE_KEY not in text and BREVO_KEY not in text
    assert "…6789" in text and "…WXYZ" in text  # the last 4 characters, for recognition
    listed = [line.split("\t") for line in outputs[2].output.splitlines()]
    assert [(row[0], row[1], row[-1]) for row in listed] == [
        ("braze", "braze", "api_key=…6789"),
        ("eu", "sendinblue", "api_key=…WXYZ"),
    ]
    shown = json.loads(outputs[3].output)
    assert shown["mappings"][0] == {
        "id": "OPTED_IN",
        "value": "consents_purposes_newsletter_enabled",
    }

    deleted = run("connectors", "delete", "acme", "eu")
    assert deleted.exit_code == 0
    assert rt.configs.ids("acme") == ["braze"]
    assert run("connectors", "delete", "acme", "eu").exit_code == 1


def test_a_refused_config_exits_non_zero_naming_the_field(rt: Runtime) -> None:
    config = braze_config()
    config["authentication"]["server"] = "https://rest.iad-01.braze.com.evil.example"
    del config["mappings"]

    refused = run("connectors", "put", "acme", "-", input=json.dumps(config))

    assert refused.exit_code == 1
    assert "authentication.server" in refused.output and "mappings" in refused.output
    assert BRAZE_KEY not in refused.output
    assert rt.configs.ids("acme") == []


# -- enqueue -----------------------------------------------------------------------------


def test_enqueue_jsonl_names_each_invalid_line_and_enqueues_the_rest(
    rt: Runtime, published: list
) -> None:
    no_tenant = event()
    del no_tenant["parameters"]["entity"]["organization_id"]
    lines = [json.dumps(event()), "", "[1, 2", json.dumps(no_tenant), json.dumps(event())]

    result = run("enqueue", "-", input="\n".join(lines))

    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("line ")]
    assert errors[0].startswith("line 3: not valid JSON")
    assert errors[1].startswith("line 4: ") and "organization_id" in errors[1]
    assert "enqueued 2 event(s), 2 invalid" in result.output
    assert published == [("prefsync.route", [[event(), event()]])]


def test_enqueue_sends_a_large_file_in_messages_of_100_and_names_its_invalid_lines(
    rt: Runtime, published: list
) -> None:
    payloads = []
    for n in range(250):
        payload = event()
        payload["parameters"]["entity"]["user"]["organization_user_id"] = f"u-{n}"
        payloads.append(payload)
    lines = [json.dumps(payload) for payload in payloads]
    lines[6] = "[1, 2"
    del payloads[149]["parameters"]["entity"]["organization_id"]
    lines[149] = json.dumps(payloads[149])
    valid = [payload for n, payload in enumerate(payloads) if n not in (6, 149)]

    result = run("enqueue", "-", input="\n".join(lines))

    assert result.exit_code == 1
    errors = result.stderr.splitlines()
    assert len(errors) == 2
    assert errors[0].startswith("line 7: not valid JSON")
    assert errors[1].startswith("line 150: ") and "organization_id" in errors[1]
    assert result.stdout.strip() == "enqueued 248 event(s), 2 invalid"
    assert published == [
        ("prefsync.route", [valid[:100]]),
        ("prefsync.route", [valid[100:200]]),
        ("prefsync.route", [valid[200:]]),
    ]


def test_enqueue_array_names_items_and_a_clean_file_exits_zero(
    rt: Runtime, published: list
) -> None:
    bad = run("enqueue", "-", input=json.dumps([event(), {"type": "nope"}]))
    assert bad.exit_code == 1
    assert "item 2: " in bad.output and "type" in bad.output
    good = run("enqueue", str(EXAMPLES / "events" / "user-updated.json"))
    assert good.exit_code == 0, good.output
    assert len(published) == 2


# -- dead letters ------------------------------------------------------------------------


def dead_letter(rt: Runtime, tenant: str, connector: str, at: float) -> str:
    payload = event()
    payload["parameters"]["entity"]["organization_id"] = tenant
    return rt.deadletters.add(
        tenant=tenant,
        connector_id=connector,
        user="jane.doe@example.com",
        event_key="k",
        payload=payload,
        attempts=[Attempt(at=at, status=503, error="Service Unavailable")],
        reason="gave up after 1 attempts: Service Unavailable",
        dead_lettered_at=at,
    ).id


def test_dlq_list_filters_and_counts_and_show_prints_json(rt: Runtime) -> None:
    a = dead_letter(rt, "acme", "braze", 1_700_000_000)
    dead_letter(rt, "acme", "sendinblue", 1_700_000_001)
    dead_letter(rt, "globex", "braze", 1_700_000_002)

    listed = run("dlq", "list", "--tenant", "acme", "--connector", "braze").output.splitlines()
    assert listed == [
        f"{a}\tacme\tbraze\tjane.doe@example.com\t"
        "gave up after 1 attempts: Service Unavailable\t2023-11-14T22:13:20+00:00",
        "1 dead letter(s)",
    ]
    assert run("dlq", "list").output.splitlines()[-1] == "3 dead letter(s)"
    shown = json.loads(run("dlq", "show", a).output)
    assert shown["attempts"] == [
        {"at": 1_700_000_000, "status": 503, "error": "Service Unavailable"}
    ]
    assert run("dlq", "show", "dl-nope").exit_code == 1


def test_dlq_replay_by_tenant_touches_only_that_tenant_and_removes_what_it_enqueued(
    rt: Runtime, published: list
) -> None:
    acme = dead_letter(rt, "acme", "braze", 1)
    globex = dead_letter(rt, "globex", "braze", 2)

    result = run("dlq", "replay", "--tenant", "acme")

    assert result.exit_code == 0
    assert [(name, args[1]) for name, args in published] == [("prefsync.deliver", "braze")]
    [replayed] = published[0][1][0]
    assert replayed["parameters"]["entity"]["organization_id"] == "acme"
    assert rt.deadletters.get(acme) is None
    assert rt.deadletters.get(globex) is not None


def test_dlq_replay_keeps_an_entry_whose_enqueue_fails(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = dead_letter(rt, "acme", "braze", 1)

    def broker_down(*_: Any, **__: Any):
        raise ConnectionError("broker unreachable")

    monkeypatch.setattr(tasks.deliver, "apply_async", broker_down)
    result = run("dlq", "replay", "--all")

    assert result.exit_code == 1
    assert f"{entry}: not replayed: ConnectionError: broker unreachable" in result.output
    assert rt.deadletters.get(entry) is not None


def test_dlq_purge_needs_ids_or_all(rt: Runtime) -> None:
    a = dead_letter(rt, "acme", "braze", 1)
    dead_letter(rt, "acme", "braze", 2)
    assert run("dlq", "purge").exit_code == 2
    assert run("dlq", "purge", a).output.strip() == "purged 1 dead letter(s)"
    assert run("dlq", "purge", "--all").output.strip() == "purged 1 dead letter(s)"
    assert rt.deadletters.count() == 0


@pytest.mark.parametrize("args", [("stats",), ("dlq", "list"), ("connectors", "list", "acme")])
def test_an_unreachable_redis_is_named_without_its_password(
    monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    from worker.delivery import runtime as runtime_module
    from worker.infra.settings import get_settings

    monkeypatch.setenv("PREFSYNC_REDIS_URL", "redis://:s3cret-pw@127.0.0.1:1/0")
    monkeypatch.setattr(runtime_module, "_runtime", None)
    get_settings.cache_clear()
    try:
        result = run(*args)
    finally:
        get_settings.cache_clear()

    assert result.exit_code == 2
    assert "nothing answers at redis://:***@127.0.0.1:1/0" in result.output
    assert "s3cret-pw" not in result.output


# -- errors a newcomer meets -----------------------------------------------------------------


def test_connectors_list_and_audit_of_an_unknown_tenant_say_so(rt: Runtime) -> None:
    listed = CliRunner().invoke(main, ["connectors", "list", "acme"])
    audited = CliRunner().invoke(main, ["audit", "acme"])

    assert listed.exit_code == 1 and "tenant 'acme' has no connectors" in listed.output
    assert audited.exit_code == 1
    assert "unknown tenant 'acme': no connectors and no audit entries" in audited.output


def test_audit_of_a_known_tenant_without_entries_says_so_and_succeeds(rt: Runtime) -> None:
    run("connectors", "put", "acme", "-", input=json.dumps(braze_config()))

    audited = CliRunner().invoke(main, ["audit", "acme"])

    assert audited.exit_code == 0
    assert "no audit entries for tenant 'acme' yet" in audited.output


def test_version_is_printed() -> None:
    from importlib.metadata import version

    assert run("--version").output == f"prefsync, version {version('prefsync')}\n"


@pytest.mark.parametrize(
    ("url", "error", "said"),
    [
        (
            "redis://:hunter2@db:6379/0",
            "AuthenticationError:invalid username-password pair or user is disabled.",
            "Redis at redis://:***@db:6379/0 refused the connection: the password is wrong",
        ),
        (
            "redis://db:6379/0",
            "AuthenticationError:NOAUTH Authentication required.",
            "it needs a password and none was given",
        ),
        ("redis://db:6379/42", "ResponseError:DB index is out of range", "has no database 42"),
        (
            "redis://nohost:6379/0",
            "ConnectionError:Error -2 connecting to nohost:6379. Name or service not known.",
            "unknown host in PREFSYNC_REDIS_URL: nohost",
        ),
    ],
)
def test_a_redis_that_refuses_us_is_named_as_such(url: str, error: str, said: str) -> None:
    import redis

    from worker.infra.redis_client import problem

    kind, _, text = error.partition(":")
    described = problem(url, getattr(redis.exceptions, kind)(text))

    assert described is not None and said in described
    assert "hunter2" not in described
    refused = redis.exceptions.ConnectionError("Error 111 connecting to db:6379. Refused.")
    assert problem(url, refused) is None  # "nothing answers", said by the caller


# -- what goes where: results on stdout, warnings and errors on stderr ------------------


@pytest.fixture
def unconfigured_logging() -> Iterator[None]:
    """structlog as a fresh `prefsync` process finds it (another test may configure it)."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture
def fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """The CLI reads PREFSYNC_* again: set them on the returned monkeypatch."""
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_json_on_stdout_parses_while_the_dev_key_warning_goes_to_stderr(
    rt: Runtime, unconfigured_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PREFSYNC_SECRET_KEYS", raising=False)
    assert run("connectors", "put", "acme", "-", input=json.dumps(braze_config())).exit_code == 0
    for cached in ("sealer", "configs"):  # a new process: the key is read, and warned about
        rt.__dict__.pop(cached, None)

    shown = run("connectors", "show", "acme", "braze")

    assert shown.exit_code == 0
    assert json.loads(shown.stdout)["id"] == "braze"
    assert shown.stderr.count("PREFSYNC_SECRET_KEYS is not set") == 1


@pytest.mark.parametrize(
    ("variable", "value", "line"),
    [
        (
            "PREFSYNC_LOG_LEVEL",
            "verbose",
            "error: PREFSYNC_LOG_LEVEL: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, "
            "not 'verbose'",
        ),
        (
            "PREFSYNC_REDIS_URL",
            "redis:/:hunter2@localhost:6379/0",
            "error: PREFSYNC_REDIS_URL: must start with redis://, rediss://, unix://, "
            "sentinel:// (it starts 'redis:/'), for example redis://localhost:6379/0",
        ),
    ],
)
@pytest.mark.parametrize("command", [["worker"], ["stats"], ["connectors", "list", "acme"]])
def test_a_bad_setting_is_one_line_naming_it_before_anything_starts(
    fresh_settings: pytest.MonkeyPatch, variable: str, value: str, line: str, command: list[str]
) -> None:
    fresh_settings.setenv(variable, value)

    result = run(*command)

    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [line]
    assert "hunter2" not in result.stderr


def test_a_misspelt_setting_is_warned_on_stderr_with_the_nearest_one(
    rt: Runtime, fresh_settings: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fresh_settings.setenv("PREFSYNC_AUDIT_MAXLN", "1000")

    result = run("connectors", "put", "acme", "-", input=json.dumps(braze_config()))

    assert result.exit_code == 0
    assert "MAXLN" not in result.stdout
    assert [record.getMessage() for record in caplog.records if record.levelname == "WARNING"] == [
        "PREFSYNC_AUDIT_MAXLN is not a prefsync setting and is ignored: did you mean "
        "PREFSYNC_AUDIT_MAXLEN?"
    ]


def test_a_local_http_server_is_refused_naming_prefsync_allow_hosts(rt: Runtime) -> None:
    config = braze_config()
    config["authentication"]["server"] = "http://127.0.0.1:8080"

    result = run("connectors", "put", "acme", "-", input=json.dumps(config))

    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "error: config refused: authentication.server: must use https:// and must not name a "
        "port, unless PREFSYNC_ALLOW_HOSTS lists 127.0.0.1:8080 (set it for the prefsync "
        "command and the worker alike)"
    ]


def test_a_mapping_id_one_letter_from_a_keyword_is_refused_unless_marked_custom(
    rt: Runtime,
) -> None:
    config = braze_config()
    config["mappings"][0]["id"] = "OPTED_IM"

    refused = run("connectors", "put", "acme", "-", input=json.dumps(config))
    config["mappings"][0]["custom"] = True
    stored = run("connectors", "put", "acme", "-", input=json.dumps(config))

    assert refused.exit_code == 1
    assert refused.stderr.splitlines() == [
        "error: config refused: mappings[0].id: 'OPTED_IM' is not a keyword: did you mean "
        "'OPTED_IN'? If it is a custom attribute of that name, add \"custom\": true to the "
        "mapping"
    ]
    assert stored.exit_code == 0
    assert json.loads(run("connectors", "show", "acme", "braze").stdout)["mappings"][0] == {
        "id": "OPTED_IM",
        "value": "consents_purposes_newsletter_enabled",
        "custom": True,
    }


def test_the_worker_says_which_redis_it_connected_to_with_the_password_masked(
    fresh_settings: pytest.MonkeyPatch,
) -> None:
    import fakeredis

    from worker.cli import worker as worker_cli
    from worker.infra import redis_client

    fresh_settings.setenv("PREFSYNC_REDIS_URL", "redis://:hunter2@127.0.0.1:6390/0")
    fresh_settings.setattr(redis_client, "connect", lambda *_, **__: fakeredis.FakeRedis())
    started: list[list[str]] = []
    fresh_settings.setattr(worker_cli.os, "execvp", lambda _, argv: started.append(argv))

    result = run("worker")

    assert result.exit_code == 0 and started
    assert result.stderr.splitlines() == [
        "Redis at redis://:***@127.0.0.1:6390/0 (PREFSYNC_REDIS_URL)"
    ]


# -- pmp and bidirectional connectors ----------------------------------------------------

PMP_KEY, PMP_SECRET = "didomi-key-0123456789abcd", "didomi-secret-0123456789abcd"


def pmp_credentials() -> str:
    raw = json.loads((EXAMPLES / "pmp" / "didomi.json").read_text())
    return json.dumps({**raw, "api_key": PMP_KEY, "api_secret": PMP_SECRET})


def bidirectional_config() -> dict[str, Any]:
    config = json.loads((EXAMPLES / "connectors" / "sendinblue-bidirectional.json").read_text())
    config["authentication"]["private_api_key"] = BREVO_KEY
    return config


def test_pmp_put_show_delete_never_print_a_secret(rt: Runtime) -> None:
    put = run("pmp", "put", "acme", "-", input=pmp_credentials())
    assert put.exit_code == 0, put.output
    assert (
        "stored PMP credentials (didomi, https://api.didomi.io/v1) for tenant 'acme'" in put.output
    )
    shown = run("pmp", "show", "acme")
    assert json.loads(shown.output)["api_secret"] == "…abcd"
    assert rt.pmp.get("acme").api_secret.get_secret_value() == PMP_SECRET
    assert PMP_SECRET.encode() not in rt.redis.hget("prefsync:pmp:credentials", "acme")
    assert run("pmp", "delete", "acme").exit_code == 0
    missing = run("pmp", "show", "acme")
    assert missing.exit_code == 1 and "has no PMP credentials" in missing.output
    for output in (put.output, shown.output):
        assert PMP_KEY not in output and PMP_SECRET not in output


def test_pmp_put_refuses_naming_the_field(rt: Runtime) -> None:
    other_tenant = run("pmp", "put", "globex", "-", input=pmp_credentials())
    assert other_tenant.exit_code == 1
    assert "organization_id: must be the tenant's id ('globex')" in other_tenant.output
    private = json.dumps({**json.loads(pmp_credentials()), "api_url": "https://10.1.2.3/v1"})
    refused = run("pmp", "put", "acme", "-", input=private)
    assert refused.exit_code == 1
    assert "api_url: must name a host, not an IP address" in refused.output
    for output in (other_tenant.output, refused.output):
        assert PMP_KEY not in output and PMP_SECRET not in output
    assert not rt.pmp.has("globex") and not rt.pmp.has("acme")


def test_bidirectional_needs_pmp_credentials_and_keeps_them(rt: Runtime) -> None:
    refused = run("connectors", "put", "acme", "-", input=json.dumps(bidirectional_config()))
    assert refused.exit_code == 1
    assert "bidirectional: true needs the tenant's PMP credentials" in refused.output
    assert rt.configs.ids("acme") == []
    run("pmp", "put", "acme", "-", input=pmp_credentials())
    stored = run("connectors", "put", "acme", "-", input=json.dumps(bidirectional_config()))
    assert stored.exit_code == 0, stored.output
    assert json.loads(run("connectors", "show", "acme", "brevo-main").output)["bidirectional"]
    kept = run("pmp", "delete", "acme")
    assert kept.exit_code == 1 and "bidirectional connectors (brevo-main)" in kept.output
    run("connectors", "delete", "acme", "brevo-main")
    assert run("pmp", "delete", "acme").exit_code == 0


def test_reencrypt_seals_pmp_credentials_again(rt: Runtime) -> None:
    run("pmp", "put", "acme", "-", input=pmp_credentials())
    result = run("connectors", "reencrypt")
    assert "re-encrypted 0 tenant(s)' PMP credentials, 1 already under the first key" in (
        result.output
    )


def two_way(rt: Runtime, config: dict[str, Any]) -> None:
    run("pmp", "put", "acme", "-", input=pmp_credentials())
    stored = run("connectors", "put", "acme", "-", input=json.dumps(config))
    assert stored.exit_code == 0, stored.output


def test_link_registers_one_brevo_webhook_however_often_it_runs(
    rt: Runtime, mocked: responses.RequestsMock
) -> None:
    two_way(rt, bidirectional_config())
    hooks = "https://api.brevo.com/v3/webhooks"
    mocked.get(f"{hooks}?type=marketing", json={"webhooks": []})
    created = mocked.post(hooks, json={"id": 7}, status=201)
    first = run("connectors", "link", "acme", "brevo-main", "--url", "https://in.example/")
    assert first.exit_code == 0, first.output
    assert (
        "Brevo webhook 7 sends unsubscribed and spam to https://in.example/signals/brevo-main"
        in (first.output)
    )
    body = json.loads(created.calls[0].request.body)
    assert body["events"] == ["unsubscribed", "spam"] and body["type"] == "marketing"
    client_id = body["url"].removeprefix("https://").split(":")[0]
    assert body["url"].endswith("@in.example/signals/brevo-main")
    assert [c.client_id for c in CredentialStore(rt.redis, 3600).list("acme")] == [client_id]
    assert BREVO_KEY not in first.output and ":pss_" not in first.output

    mocked.replace(
        responses.GET, f"{hooks}?type=marketing", json={"webhooks": [{"id": 7, "url": body["url"]}]}
    )
    again = run("connectors", "link", "acme", "brevo-main", "--url", "https://in.example")
    assert again.exit_code == 0 and "already sends to" in again.output
    assert created.call_count == 1 and len(CredentialStore(rt.redis, 3600).list("acme")) == 1


def test_link_keeps_no_credential_when_brevo_refuses_the_webhook(
    rt: Runtime, mocked: responses.RequestsMock
) -> None:
    two_way(rt, bidirectional_config())
    hooks = "https://api.brevo.com/v3/webhooks"
    mocked.get(f"{hooks}?type=marketing", json={"webhooks": []})
    mocked.post(hooks, json={"code": "unauthorized", "message": "Key not found"}, status=401)
    refused = run("connectors", "link", "acme", "brevo-main", "--url", "https://in.example")
    assert refused.exit_code == 1 and "Brevo refused the webhook" in refused.output
    assert CredentialStore(rt.redis, 3600).list("acme") == []


def test_link_prints_the_braze_campaign_and_template(rt: Runtime) -> None:
    two_way(rt, {**braze_config(), "bidirectional": True})
    printed = run("connectors", "link", "acme", "braze", "--url", "https://in.example")
    assert printed.exit_code == 0, printed.output
    assert "Webhook URL:  https://in.example/signals/braze" in printed.output
    assert "Authorization: Basic " in printed.output
    assert '"email_subscribe": "{{subscribed_state.${email_global}}}"' in printed.output
    assert "Re-eligibility: ON" in printed.output and '"REST API"' in printed.output


def test_link_refuses_a_connector_that_does_not_listen(rt: Runtime) -> None:
    run("connectors", "put", "acme", "-", input=json.dumps(braze_config()))
    refused = run("connectors", "link", "acme", "braze", "--url", "https://in.example")
    assert refused.exit_code == 1 and "not bidirectional" in refused.output
    assert run("connectors", "link", "acme", "nope", "--url", "https://in.example").exit_code == 1
    plain = run("connectors", "link", "acme", "braze", "--url", "http://in.example")
    assert plain.exit_code == 2 and "--url: must be" in plain.output
