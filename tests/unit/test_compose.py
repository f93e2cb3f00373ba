"""The Docker packaging: docker-compose.yml, Dockerfile, .env.example and what the README
and the pages of docs/ say about them.

No Docker engine runs in CI, so the compose file is loaded as YAML and checked for what the
delivery guarantee and the operators rely on; the commands its services run are resolved
against the code that has to answer them.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import shlex
import sys
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from worker.cli import main as cli_main
from worker.infra.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {
    "redis-acl", "redis", "admin", "worker", "worker-brevo", "ingress", "flower",
    "fake-destinations",
}  # fmt: skip
# Services that do one thing and exit: the ACL file, prefsync's functions loaded.
ONE_SHOT = {"redis-acl", "admin"}
# Each component's Redis user (worker.infra.redis_acl) and the service that uses it.
USERS = {"worker": "worker", "worker-brevo": "worker", "ingress": "producer", "flower": "flower"}
OBSERVABILITY = {"prometheus", "grafana"}  # profile "observability"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "prefsync.json"
# ${VAR}, ${VAR:-default}, ${VAR:?error}; "$${...}" is an escaped dollar, not a variable.
COMPOSE_VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")
REQUIRED_VARIABLE = re.compile(r"^\$\{([A-Z_][A-Z0-9_]*):\?[^}]*\}$")
# An image named by its digest: what is pulled cannot change under the same tag.
DIGEST = r"@sha256:[0-9a-f]{64}"


@pytest.fixture(scope="module")
def compose_text() -> str:
    return (ROOT / "docker-compose.yml").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def compose(compose_text: str) -> dict[str, Any]:
    return yaml.safe_load(compose_text)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def documentation(readme: str) -> str:
    """The README and every page of docs/: the reference sections moved there."""
    pages = sorted((ROOT / "docs").glob("*.md"))
    assert pages, "docs/ has no pages"
    return "\n".join([readme, *(page.read_text(encoding="utf-8") for page in pages)])


def argv(service: dict[str, Any]) -> list[str]:
    """The service's command as the container receives it (compose splits a string
    command the way a shell would)."""
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def dockerfile_of(service: dict[str, Any]) -> Path:
    build = service["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    return (ROOT / context / dockerfile).resolve()


def copied_sources(dockerfile: Path) -> list[str]:
    """What the Dockerfile's COPY lines take from the build context."""
    lines = dockerfile.read_text(encoding="utf-8").splitlines()
    return [source for line in lines if line.startswith("COPY ") for source in line.split()[1:-1]]


def option_value(args: list[str], name: str) -> str | None:
    """The value of ``--name value`` or ``--name=value`` in ``args``."""
    for index, arg in enumerate(args):
        if arg == name and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    return None


def env_example_text() -> str:
    return (ROOT / ".env.example").read_text(encoding="utf-8")


def env_example_names() -> set[str]:
    """Every NAME given in .env.example, set (NAME=...) or suggested (# NAME=...)."""
    return set(re.findall(r"^#?\s*([A-Za-z_][A-Za-z0-9_]*)=", env_example_text(), flags=re.M))


# -- the four services -----------------------------------------------------------------


def test_the_services_exist(services: dict[str, Any]) -> None:
    assert set(services) == SERVICES | OBSERVABILITY


def test_every_service_restarts_by_itself(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service.get("restart") == "no"
            continue
        assert service.get("restart") in ("always", "unless-stopped", "on-failure"), name


def test_every_long_running_service_has_a_healthcheck(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if name not in ONE_SHOT:
            assert service.get("healthcheck"), name


def test_the_admin_loads_prefsyncs_functions_before_the_workers_start(
    services: dict[str, Any],
) -> None:
    admin = services["admin"]
    assert argv(admin) == ["prefsync", "redis-acl", "--load-functions"]
    assert environment(admin)["PREFSYNC_REDIS_URL"].startswith("redis://admin:")
    assert admin["depends_on"]["redis"]["condition"] == "service_healthy"
    for name in ("worker", "worker-brevo"):
        condition = services[name]["depends_on"]["admin"]["condition"]
        assert condition == "service_completed_successfully"


def test_redis_keeps_every_message_within_a_memory_bound_and_knows_only_its_acl_users(
    services: dict[str, Any],
) -> None:
    redis = services["redis"]
    args = argv(redis)
    name, _, tag = redis["image"].partition(":")
    assert name == "redis" and re.fullmatch(rf"\d+\.\d+\.\d+{DIGEST}", tag), "a pinned version"
    assert args[0] == "redis-server"
    # Redis is the only copy of queued messages (docs/vendors.md#celery-on-redis).
    assert option_value(args, "--appendonly") == "yes"
    assert option_value(args, "--appendfsync") == "everysec"
    assert option_value(args, "--maxmemory-policy") == "noeviction"
    assert option_value(args, "--maxmemory")
    # No password on its command line: the users and their password hashes are in the
    # ACL file the redis-acl service wrote before Redis started.
    assert "--requirepass" not in args
    acl = option_value(args, "--aclfile")
    assert acl and any(str(v).split(":")[1] == acl.rsplit("/", 1)[0] for v in redis["volumes"])
    assert redis["depends_on"]["redis-acl"]["condition"] == "service_completed_successfully"


def test_the_acl_file_is_written_by_prefsync_redis_acl_from_required_passwords(
    services: dict[str, Any],
) -> None:
    writer = services["redis-acl"]
    assert "prefsync redis-acl > /acl/users.acl" in " ".join(argv(writer))
    env = environment(writer)
    for component in ("WORKER", "PRODUCER", "FLOWER", "ADMIN"):
        password = REQUIRED_VARIABLE.match(env[f"REDIS_{component}_PASSWORD"])
        assert password and password.group(1) == f"REDIS_{component}_PASSWORD"
    assert "PREFSYNC_SECRET_KEYS" not in env


def test_the_stack_refuses_to_start_without_keys_sealing_the_connector_keys(
    compose: dict[str, Any],
) -> None:
    env = compose["x-prefsync-env"]
    keys = REQUIRED_VARIABLE.match(env["PREFSYNC_SECRET_KEYS"])
    assert keys and keys.group(1) == "PREFSYNC_SECRET_KEYS"
    assert "PREFSYNC_SECRET_KEYS" in env_example_names()
    assert re.search(r"^PREFSYNC_SECRET_KEYS=", env_example_text(), flags=re.M) is None


def test_redis_data_lives_in_a_named_volume(
    services: dict[str, Any], compose: dict[str, Any]
) -> None:
    mounts = [str(v).split(":") for v in services["redis"]["volumes"]]
    named = [source for source, target, *_ in mounts if target == "/data"]
    assert named, "nothing is mounted on /data, where redis:7 keeps its AOF"
    assert named[0] in (compose.get("volumes") or {}), "the /data volume is not a named volume"


def test_redis_healthcheck_pings_without_any_password(services: dict[str, Any]) -> None:
    redis = services["redis"]
    test = redis["healthcheck"]["test"]
    command = test if isinstance(test, str) else " ".join(test)
    assert "redis-cli" in command and "ping" in command.lower()
    # The default user is off: NOAUTH is an answer, so no password needs to be here.
    assert "NOAUTH" in command and "PASSWORD" not in command
    assert not any("PASSWORD" in key for key in environment(redis))


def test_worker_is_built_from_the_dockerfile_and_runs_prefsync_worker(
    services: dict[str, Any],
) -> None:
    worker = services["worker"]
    assert dockerfile_of(worker) == ROOT / "Dockerfile"
    assert argv(worker)[:2] == ["prefsync", "worker"]


def test_worker_command_options_are_options_of_prefsync_worker(
    services: dict[str, Any],
) -> None:
    # Every --option the compose file passes must be one `prefsync worker` declares, or it
    # would silently go on to Celery (the command forwards unknown options).
    declared = {
        opt for param in cli_main.commands["worker"].params for opt in param.opts
    }  # fmt: skip
    passed = [arg.split("=")[0] for arg in argv(services["worker"])[2:] if arg.startswith("-")]
    assert passed, "the worker command sets no concurrency or log level"
    assert set(passed) <= declared
    assert {"--concurrency", "--loglevel"} <= set(passed)


def test_worker_waits_for_a_healthy_redis(services: dict[str, Any]) -> None:
    for name in ("worker", "flower"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name


def test_prefsync_worker_command_exists() -> None:
    result = CliRunner().invoke(cli_main, ["worker", "--help"])
    assert result.exit_code == 0, result.output
    assert "--concurrency" in result.output
    assert "--loglevel" in result.output


def test_each_component_reaches_redis_as_its_own_user(services: dict[str, Any]) -> None:
    for service, user in USERS.items():
        url = environment(services[service])["PREFSYNC_REDIS_URL"]
        match = re.fullmatch(r"redis://(?P<user>\w+):(?P<password>[^@]+)@redis:6379/\d+", url)
        assert match and match["user"] == user, (service, url)
        password = REQUIRED_VARIABLE.match(match["password"])
        assert password and password.group(1) == f"REDIS_{user.upper()}_PASSWORD"
    # Flower needs no key to open connector configs it may not even read.
    assert "PREFSYNC_SECRET_KEYS" not in environment(services["flower"])


# -- hardening -------------------------------------------------------------------------

# The secrets each service is given: only those it uses.
SECRETS = ("PREFSYNC_SECRET_KEYS", "PREFSYNC_USER_HASH_KEY")
# The admin is the operator's CLI too (`docker compose run --rm admin prefsync …`): it
# seals the configs it stores and names people by their keyed hash.
NEEDS_SECRETS = {"worker", "worker-brevo", "admin"}


def test_only_the_workers_and_the_admin_get_the_sealing_and_user_hash_keys(
    services: dict[str, Any],
) -> None:
    for name, service in services.items():
        given = {secret for secret in SECRETS if secret in environment(service)}
        assert given == (set(SECRETS) if name in NEEDS_SECRETS else set()), name


def test_only_the_ingress_publishes_a_port_beyond_loopback(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for port in service.get("ports", []):
            if name == "ingress":
                continue
            assert str(port).startswith("127.0.0.1:"), (name, port)
    (ingress_port,) = services["ingress"]["ports"]
    assert str(ingress_port).endswith(":8000")


def test_every_service_drops_capabilities_and_privileges_on_a_read_only_root(
    services: dict[str, Any],
) -> None:
    for name, service in services.items():
        assert service.get("cap_drop") == ["ALL"], name
        assert service.get("security_opt") == ["no-new-privileges:true"], name
        assert service.get("read_only") is True, name


def test_a_read_only_service_writes_only_to_its_volumes_and_tmpfs(
    services: dict[str, Any],
) -> None:
    # The worker's heartbeat file is in /tmp (PREFSYNC_HEARTBEAT_FILE's default).
    assert Settings().heartbeat_file.startswith("/tmp/")
    for name in ("worker", "worker-brevo"):
        assert "/tmp" in services[name]["tmpfs"], name
    # Flower's database and the ACL file are on their volumes.
    assert any(str(v).endswith(":/data") for v in services["flower"]["volumes"])
    assert any(str(v).endswith(":/acl") for v in services["redis-acl"]["volumes"])


def test_redis_runs_as_its_own_user_needing_no_capability(services: dict[str, Any]) -> None:
    # Its entrypoint switches from root to the redis user only when started as root,
    # which needs capabilities cap_drop takes away.
    assert services["redis"]["user"] == "999:999"


def test_every_image_is_pinned_by_digest(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if "image" in service and "build" not in service:
            assert re.search(rf":[\w.-]+{DIGEST}$", service["image"]), (name, service["image"])
    for dockerfile in (ROOT / "Dockerfile", ROOT / "tests" / "fakes" / "Dockerfile"):
        froms = re.findall(r"^FROM (\S+)", dockerfile.read_text(encoding="utf-8"), re.M)
        assert froms and all(re.search(rf"{DIGEST}$", image) for image in froms), dockerfile


def test_flower_publishes_5555_with_basic_auth_and_a_persistent_db(
    services: dict[str, Any],
) -> None:
    flower = services["flower"]
    args = argv(flower)
    assert args[:4] == ["celery", "-A", "worker", "flower"]
    assert option_value(args, "--port") == "5555"
    # Loopback only: plain HTTP with basic auth is not for the open network.
    assert [str(p) for p in flower["ports"]] == ["127.0.0.1:5555:5555"]
    auth = (
        option_value(args, "--basic-auth")
        or option_value(args, "--basic_auth")
        or environment(flower).get("FLOWER_BASIC_AUTH")
    )
    assert auth is not None, "Flower would be open to anyone who reaches port 5555"
    assert re.fullmatch(r"\$\{FLOWER_USER[^}]*\}:\$\{FLOWER_PASSWORD[^}]*\}", auth), auth
    assert option_value(args, "--persistent") == "True"
    db = option_value(args, "--db") or ""
    mounted = [str(v).split(":")[1] for v in flower["volumes"]]
    assert any(db.startswith(f"{target.rstrip('/')}/") for target in mounted), (db, mounted)


def test_flower_comes_with_the_image() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    ops = pyproject["project"]["optional-dependencies"]["ops"]
    assert any(re.match(r"flower\b", requirement) for requirement in ops)
    dockerfile = (ROOT / "Dockerfile").read_text()
    # The image installs what requirements-image.lock pins, Flower included, and copies it
    # in first.
    assert re.search(r"pip install --require-hashes -r requirements-image\.lock", dockerfile)
    assert re.search(r"COPY [^\n]*requirements-image\.lock", dockerfile)
    assert "flower" in pins("requirements-image.lock")


def test_flower_uses_the_worker_image_and_fake_destinations_an_image_of_its_own(
    services: dict[str, Any],
) -> None:
    assert services["flower"]["image"] == services["worker"]["image"]
    fake = services["fake-destinations"]
    assert fake["image"] != services["worker"]["image"]
    # Built from the repository with tests/fakes' own Dockerfile: no prefsync code in it.
    assert dockerfile_of(fake) == ROOT / "tests" / "fakes" / "Dockerfile"
    copied = [source.rstrip("/") for source in copied_sources(dockerfile_of(fake))]
    assert "tests/__init__.py" in copied and "tests/fakes" in copied
    assert not any(source == "worker" or source.startswith("worker/") for source in copied)


def test_fake_destinations_is_a_demo_only_service(services: dict[str, Any]) -> None:
    fake = services["fake-destinations"]
    assert fake["profiles"] == ["demo"]
    assert argv(fake)[:3] == ["python", "-m", "tests.fakes.destinations"]
    for name in SERVICES - {"fake-destinations"}:
        assert "profiles" not in services[name], f"{name} would not start by default"
    for name in OBSERVABILITY:
        assert services[name]["profiles"] == ["observability"], name


def test_fake_destinations_accepts_its_command_and_listens_on_every_interface(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the module the container runs, with its server and signal waits stubbed
    destinations = importlib.import_module("tests.fakes.destinations")
    started: list[tuple[Any, ...]] = []

    class Recorder:
        url = "http://stub"

        def __init__(self, *args: Any) -> None:
            started.append(args)

        def start(self) -> Recorder:
            return self

        def stop(self) -> None:
            pass

    monkeypatch.setattr(destinations, "FakeDestinations", Recorder)
    monkeypatch.setattr(destinations.signal, "signal", lambda *a: None)
    monkeypatch.setattr(destinations.signal, "pause", lambda: None)

    # When it runs with the compose file's arguments
    destinations.main(argv(services["fake-destinations"])[3:])

    # Then it serves on 0.0.0.0 (other containers reach it) and the port the demo names
    host, port = started[0][:2]
    assert host == "0.0.0.0"
    assert f"fake-destinations:{port}" in env_example_text()


# -- secrets ---------------------------------------------------------------------------


def test_every_password_is_a_required_variable_never_a_literal(
    services: dict[str, Any], compose_text: str
) -> None:
    for name, service in services.items():
        for key, value in environment(service).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|BASIC_AUTH|API_KEY", key):
                # Nothing but variables (and the ":" of user:password) may remain.
                literal = COMPOSE_VARIABLE.sub("", re.sub(r"\$\{[^}]*\}", "", value))
                assert literal in ("", ":"), f"{name}.{key} holds a literal secret"
                for variable in re.findall(r"\$\{[^}]*\}", value):
                    assert REQUIRED_VARIABLE.match(variable), f"{name}.{key}: {variable}"
    for password in re.findall(r"redis://\w*:([^@]*)@", compose_text):
        assert REQUIRED_VARIABLE.match(password), password
    # An example .env leaves every password empty: compose then refuses to start.
    for name in re.findall(r"^(\w*PASSWORD)=(.*)$", env_example_text(), flags=re.M):
        assert name[1] == "", f"{name[0]} has a placeholder value in .env.example"


def test_every_compose_variable_is_in_env_example(compose_text: str) -> None:
    used = set(COMPOSE_VARIABLE.findall(compose_text))
    assert {"REDIS_WORKER_PASSWORD", "FLOWER_USER", "FLOWER_PASSWORD"} <= used
    assert used - env_example_names() == set()


def test_env_example_offers_the_demo_settings() -> None:
    names = env_example_names()
    assert {"PREFSYNC_ALLOW_HOSTS", "PREFSYNC_SENDINBLUE_API_URL"} <= names
    text = env_example_text()
    assert re.search(r"^#\s*PREFSYNC_ALLOW_HOSTS=fake-destinations:8080$", text, re.M)
    assert re.search(
        r"^#\s*PREFSYNC_SENDINBLUE_API_URL=http://fake-destinations:8080/v3$", text, re.M
    )


def test_image_runs_as_a_non_root_user_without_secrets() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    lines = [
        line.strip()
        for line in dockerfile.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert re.fullmatch(rf"FROM python:3\.11\.\d+-slim-\w+{DIGEST}", lines[0]), (
        "a pinned base image"
    )
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert not re.search(r"^(ENV|ARG)\b.*(PASSWORD|API_KEY|SECRET)", dockerfile, re.M)
    assert re.search(r'^CMD \["prefsync", "worker"\]$', dockerfile, re.M)
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".env", ".venv", ".git"} <= set(ignored)


def test_the_worker_image_ships_no_test_or_bench_code() -> None:
    copied = [source.rstrip("/") for source in copied_sources(ROOT / "Dockerfile")]
    assert "worker" in copied
    assert not any(source.split("/")[0] in ("tests", "bench") for source in copied), copied


def test_the_fake_destinations_image_runs_as_a_non_root_user_what_compose_runs(
    services: dict[str, Any],
) -> None:
    fake = services["fake-destinations"]
    lines = dockerfile_of(fake).read_text(encoding="utf-8").splitlines()
    froms = [line for line in lines if line.startswith("FROM ")]
    assert froms and all(
        re.fullmatch(rf"FROM python:3\.11\.\d+-slim-\w+{DIGEST}", f) for f in froms
    )
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    (cmd,) = [line for line in lines if line.startswith("CMD ")]
    assert json.loads(cmd.removeprefix("CMD ")) == argv(fake)


def test_the_fake_destinations_image_needs_nothing_but_the_standard_library() -> None:
    # Its image installs no package: every import of tests/fakes is the standard library's
    # or tests/fakes' own.
    for path in sorted((ROOT / "tests" / "fakes").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or name.startswith("tests.fakes"), (
                    f"{path.name} imports {name}"
                )


# -- the README tells the same story ---------------------------------------------------


def test_readme_opens_with_make_run_and_make_test(readme: str) -> None:
    first_screen = "\n".join(readme.splitlines()[:40])
    assert "make run" in first_screen
    assert "make test" in first_screen
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^run:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


def test_docs_names_the_compose_ports_and_commands(documentation: str) -> None:
    for text in (
        "5555",
        "docker compose up",
        "docker compose --profile demo up",
        "python -m tests.fakes.destinations",
        "cp .env.example .env",
    ):
        assert text in documentation, text


def readme_code(readme: str) -> str:
    """The README's code: fenced blocks and `inline` spans, where commands are shown."""
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", readme, flags=re.M | re.S)
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", readme, flags=re.M | re.S)
    return "\n".join([*fenced, *re.findall(r"`([^`\n]+)`", prose)])


def test_every_prefsync_command_in_the_docs_exists(documentation: str) -> None:
    ctx = click.Context(cli_main)
    code = readme_code(documentation)
    # A command starts a line or follows .venv/bin/ or `docker compose exec [-T] worker`.
    shown = re.findall(
        r"(?:^\s*|\.venv/bin/|exec (?:-T )?worker )prefsync ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?",
        code,
        flags=re.M,
    )
    assert len(shown) >= 10
    for name, sub in shown:
        command = cli_main.get_command(ctx, name)
        assert command is not None, f"prefsync {name}"
        if isinstance(command, click.Group):
            assert command.get_command(ctx, sub) is not None, f"prefsync {name} {sub}"


def test_docs_lists_every_setting_with_its_default(documentation: str) -> None:
    for name, field in Settings.model_fields.items():
        env = f"PREFSYNC_{name.upper()}"
        rows = [line for line in documentation.splitlines() if line.startswith(f"| `{env}`")]
        assert rows, f"{env} is missing from the configuration table (docs/operations.md)"
        default = field.default
        if isinstance(default, tuple):
            shown = ",".join(f"{v:g}" for v in default) if default else "(empty)"
        else:
            shown = str(default)
        assert shown in rows[0], f"{env}: the documentation does not show its default {shown!r}"


def layout_tree(text: str) -> set[str]:
    """The files a ```text tree names, as paths: two spaces of indent a level; a folder's
    own line stands for its __init__.py."""
    block = text.split("## Layout", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    stack: list[str] = []
    listed: set[str] = set()
    for line in block.splitlines():
        match = re.match(r"^( *)([\w./]+)", line)
        if not match:
            continue
        depth, name = len(match.group(1)) // 2, match.group(2)
        stack[depth:] = [name.rstrip("/")]
        if name.endswith(".py"):
            listed.add("/".join(stack))
        elif name.endswith("/"):
            listed.add("/".join([*stack, "__init__.py"]))
    return listed


def test_the_layout_names_every_worker_module_and_no_other() -> None:
    text = (ROOT / "docs" / "development.md").read_text(encoding="utf-8")
    listed = {path for path in layout_tree(text) if path.startswith("worker/")}
    present = {path.relative_to(ROOT).as_posix() for path in (ROOT / "worker").rglob("*.py")}
    assert present - listed == set(), "modules missing from docs/development.md's layout"
    assert listed - present == set(), "docs/development.md's layout names modules that are gone"


# -- the ingress and the observability profile -----------------------------------------


def test_ingress_serves_port_8000_and_is_healthy_only_when_ready(
    services: dict[str, Any],
) -> None:
    ingress = services["ingress"]
    args = argv(ingress)
    assert args[:2] == ["prefsync", "serve"]
    declared = {opt for param in cli_main.commands["serve"].params for opt in param.opts}
    assert {arg for arg in args[2:] if arg.startswith("-")} <= declared
    assert option_value(args, "--host") == "0.0.0.0"  # other containers and the host reach it
    assert option_value(args, "--port") == "8000"
    assert any(str(p).endswith(":8000") for p in ingress["ports"])
    test = " ".join(ingress["healthcheck"]["test"])
    assert "http://127.0.0.1:8000/readyz" in test
    assert ingress["depends_on"]["redis"]["condition"] == "service_healthy"
    assert environment(ingress)["PREFSYNC_REDIS_URL"].startswith("redis://producer:")


def test_prometheus_scrapes_the_ingress_and_grafana_is_provisioned_from_the_repo(
    services: dict[str, Any],
) -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["ingress:8000"]
    mounts = {str(v).split(":")[0]: str(v).split(":")[1] for v in services["prometheus"]["volumes"]}
    assert mounts["./deploy/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    grafana = {str(v).split(":")[0]: str(v).split(":")[1] for v in services["grafana"]["volumes"]}
    for source in grafana:
        assert not source.startswith("./") or (ROOT / source).exists(), source
    provider = yaml.safe_load((ROOT / "deploy" / "grafana" / "dashboards.yml").read_text())
    assert grafana["./deploy/grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    sources = yaml.safe_load((ROOT / "deploy" / "grafana" / "datasources.yml").read_text())
    assert sources["datasources"][0]["url"] == "http://prometheus:9090"


def test_the_dashboard_shows_throughput_latency_backlog_dead_letters_and_429s() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("throughput", "latency", "backlog", "dead letters", "429"):
        assert topic in titles, topic
    legends = [t["legendFormat"] for p in dashboard["panels"] for t in p["targets"]]
    assert {"p50", "p99"} <= set(legends)
    assert "queued in {{queue}}" in legends  # the backlog by queue (prefsync_queue_depth)


def test_every_metric_the_dashboard_queries_is_in_a_real_metrics_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given an ingress in process on fakeredis, that answered one webhook (a 401),
    from prometheus_client.parser import text_string_to_metric_families
    from starlette.testclient import TestClient

    from tests.unit.conftest import install_runtime
    from worker.ingress.app import create_app

    rt = install_runtime(monkeypatch, Settings())
    with TestClient(create_app(rt.settings)) as http:
        assert http.post("/webhooks", json={}).status_code == 401
        # when /metrics is asked,
        answer = http.get("/metrics")

    # then every series the dashboard queries is in the answer.
    assert answer.status_code == 200
    samples = {
        sample.name
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\b(prefsync_[a-z_]+)", target["expr"])
    }
    assert len(queried) >= 9
    assert queried - samples == set()


def test_the_lock_file_pins_every_dependency_pyproject_names() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    wanted += project["optional-dependencies"]["ops"]
    pinned = {
        line.split("==")[0].lower().replace("_", "-")
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    for requirement in wanted:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("_", "-")
        assert name in pinned, f"{name} is not pinned in requirements.lock (make lock)"


def pins(lock: str) -> dict[str, tuple[str, int]]:
    """Each package a lock file pins: its version and how many file hashes it names."""
    found: dict[str, tuple[str, int]] = {}
    for entry in re.split(r"\n(?=[A-Za-z0-9])", (ROOT / lock).read_text()):
        if "==" in entry and not entry.startswith("#"):
            name, version = re.match(r"([A-Za-z0-9_.-]+)==([^\s\\;]+)", entry).groups()
            found[name.lower().replace("_", "-")] = (version, entry.count("--hash=sha256:"))
    return found


def test_the_lock_files_pin_with_hashes_and_the_image_lock_agrees() -> None:
    full, image = pins("requirements.lock"), pins("requirements-image.lock")
    assert all(hashes for _, hashes in full.values()), "make lock: --generate-hashes"
    assert all(hashes for _, hashes in image.values())
    # The image's versions are the development machines' ones, without the test tools.
    assert {name: full[name][0] for name in image} == {n: v for n, (v, _) in image.items()}
    assert {"flower", "celery"} <= set(image)
    assert not {"pytest", "fakeredis", "ruff", "hypothesis", "responses"} & set(image)


def test_install_and_image_check_the_hashes() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "pip install --quiet --require-hashes -r requirements.lock" in makefile
    assert "pip install --quiet --no-deps -e ." in makefile
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "pip install --require-hashes -r requirements-image.lock" in dockerfile
    assert "pip install --no-deps ." in dockerfile


def test_worker_healthcheck_runs_prefsync_worker_health(services: dict[str, Any]) -> None:
    # Liveness: a worker that stops consuming is seen; it exits by itself and its restart
    # policy brings a new one.
    worker = services["worker"]
    assert worker["healthcheck"]["test"] == ["CMD", "prefsync", "worker-health"]
    assert worker["restart"] in ("always", "unless-stopped")
    assert "worker-health" in cli_main.commands
