"""The image and the compose stack as production runs them, read as files (no Docker engine is
needed): the commands are the Procfile's, every variable they set is one the code reads and
`.env.example` documents, the stop grace periods cover the processes' own, Redis cannot lose
acknowledged work, only the proxy listens on the host's interfaces, and the final image holds
the installed wheels and the Procfile, runs as a non-root user and carries no build tools."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gunicorn.config
import pytest
import yaml

from worker.dev.procfile import Procfile
from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
# Read by the processes outside `Settings`: prometheus-client (the web's multiprocess
# metrics) and compose itself (the proxy's certificate directory).
READ_OUTSIDE_SETTINGS = {"PROMETHEUS_MULTIPROC_DIR", "TLS_CERT_DIR"}
BUILD_TOOLS = {"build-essential", "gcc", "g++", "make", "cc", "clang", "python3-dev"}
MONITORING = {"prometheus", "grafana"}
MAX_WORKER_STOP_SECONDS = 60.0
# What the image is built from; everything else stays out of the build context.
BUILD_CONTEXT = {"pyproject.toml", "README.md", "Procfile", "webhooks", "worker"}


# --- the Dockerfile -------------------------------------------------------------------------


@dataclass
class Instruction:
    name: str  # upper case: RUN, COPY...
    flags: dict[str, str]  # --mount=..., --from=...
    rest: str  # the arguments after the flags, as written

    def exec_form(self) -> list[str]:
        """The JSON (exec) form's argument list: `CMD ["crmhook", "run", "web"]`."""
        value = json.loads(self.rest)
        assert isinstance(value, list), self.rest
        return [str(item) for item in value]


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, name: str) -> list[Instruction]:
        return [i for i in self.instructions if i.name == name]


def logical_lines(text: str) -> list[str]:
    """The Dockerfile's instructions, one string each: comment lines dropped (also inside a
    continuation, as Docker does), `\\`-continued lines joined."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    assert not current, "the last instruction ends in a continuation"
    return lines


def parse_dockerfile(text: str) -> list[Stage]:
    stages: list[Stage] = []
    for line in logical_lines(text):
        name, _, rest = line.partition(" ")
        flags: dict[str, str] = {}
        rest = rest.strip()
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            key, _, value = flag[2:].partition("=")
            flags[key] = value
            rest = rest.strip()
        instruction = Instruction(name.upper(), flags, rest)
        if instruction.name == "FROM":
            words = rest.split()
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], alias))
        else:
            assert stages, f"{line!r} before the first FROM"
            stages[-1].instructions.append(instruction)
    return stages


def mount_options(instruction: Instruction) -> dict[str, str]:
    """`--mount=type=bind,from=builder,source=/wheels,target=/wheels` as a dict (`rw` → "")."""
    options = {}
    for part in instruction.flags.get("mount", "").split(","):
        key, _, value = part.partition("=")
        options[key] = value
    return options


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def image_cmd(final: Stage) -> list[str]:
    return final.all("CMD")[-1].exec_form()


def image_env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage.all("ENV"):
        for word in shlex.split(instruction.rest):
            key, _, value = word.partition("=")
            env[key] = value
    return env


# --- the compose file -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_text() -> str:
    return (ROOT / "docker-compose.yml").read_text()


@pytest.fixture(scope="module")
def services(compose_text: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(compose_text)["services"]
    return loaded


@pytest.fixture(scope="module")
def procfile() -> Procfile:
    return Procfile.load(ROOT / "Procfile")


def expansions(text: str) -> set[str]:
    """`${NAME}`, `${NAME:-default}`: what compose or a shell substitutes (`$${` is a literal)."""
    return set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", text))


def duration_seconds(value: str) -> float:
    """A compose duration: `35s`, `1m30s`, `1h`, `500ms`."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value)
    assert parts, f"not a duration: {value!r}"
    assert "".join(n + u for n, u in parts) == value, f"not a duration: {value!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def code_variables(procfile: Procfile) -> set[str]:
    """Variables the processes read: `Settings`' fields (and aliases), the Procfile's
    expansions, and the few read outside the settings."""
    names: set[str] = set()
    for name, info in Settings.model_fields.items():
        names.add(name.upper())
        alias = info.validation_alias
        for choice in getattr(alias, "choices", []):
            if isinstance(choice, str):
                names.add(choice.upper())
    for line in procfile.processes.values():
        names |= expansions(line)
    return names | READ_OUTSIDE_SETTINGS


def example_variables() -> set[str]:
    """`NAME=` and `# NAME=` lines of `.env.example`."""
    text = (ROOT / ".env.example").read_text()
    return set(re.findall(r"^[ \t]*#?[ \t]*([A-Z][A-Z0-9_]*)=", text, re.M))


def host_ip(port: str | dict[str, Any]) -> str:
    """The host address a `ports` entry binds: "" for every interface."""
    if isinstance(port, dict):
        return str(port.get("host_ip", ""))
    parts = str(port).rsplit(":", 2)
    return parts[0] if len(parts) == 3 else ""


def volume_sources(service: dict[str, Any]) -> list[str]:
    sources = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            source = str(volume["source"])
        else:  # `source:target[:mode]`, where the source may be `${NAME:-default}`
            written = re.match(r"\$\{[^}]*\}|[^:]*", volume)
            assert written, volume
            source = written[0]
        # `${TLS_CERT_DIR:-./deploy/nginx/certs}` mounts its default unless told otherwise.
        default = re.fullmatch(r"\$\{[A-Z_]+:-(.+)\}", source)
        sources.append(default[1] if default else source)
    return sources


# --- (a) the commands are the Procfile's ----------------------------------------------------


def test_web_and_worker_run_the_procfile_entries(
    services: dict[str, Any], final: Stage, procfile: Procfile
) -> None:
    assert image_cmd(final) == ["crmhook", "run", "web"]
    assert "command" not in services["web"]  # the image's CMD
    assert services["worker"]["command"] == ["crmhook", "run", "worker"]
    built = {
        name: service.get("command", image_cmd(final))
        for name, service in services.items()
        if "build" in service
    }
    assert {name: argv[:2] for name, argv in built.items()} == {
        "web": ["crmhook", "run"],
        "worker": ["crmhook", "run"],
    }
    assert {argv[2] for argv in built.values()} == set(procfile.processes)


def test_the_image_runs_from_the_directory_holding_the_procfile(final: Stage) -> None:
    """`crmhook run` looks for the Procfile in the working directory (the installed package
    has none beside it)."""
    [workdir] = final.all("WORKDIR")
    assert workdir.rest == "/app"
    copied = [shlex.split(i.rest) for i in final.all("COPY") if "from" not in i.flags]
    assert ["Procfile", "./"] in copied or ["Procfile", "/app/"] in copied
    workdir_at = final.instructions.index(workdir)
    assert all(final.instructions.index(i) > workdir_at for i in final.all("COPY"))


# --- (b) every variable set is read and documented ------------------------------------------


def test_every_variable_compose_sets_or_reads_is_read_by_the_code_and_documented(
    services: dict[str, Any], compose_text: str, procfile: Procfile
) -> None:
    set_on_services = {
        key for name in ("web", "worker") for key in services[name].get("environment", {})
    }
    used = set_on_services | expansions(compose_text)
    assert {"LOG_FORMAT", "WORKER_SHUTDOWN_GRACE_SECONDS", "TLS_CERT_DIR"} <= used
    assert sorted(used - code_variables(procfile)) == []
    assert sorted(used - example_variables()) == [], ".env.example: add `# NAME=default`"


def test_logs_are_json_unless_the_operator_says_otherwise(
    services: dict[str, Any], final: Stage
) -> None:
    assert Settings.model_fields["log_format"].default == "json"
    assert image_env(final)["LOG_FORMAT"] == "json"
    assert image_env(final)["PYTHONUNBUFFERED"] == "1"
    for name in ("web", "worker"):
        assert services[name]["environment"]["LOG_FORMAT"] == "${LOG_FORMAT:-json}", name


def test_web_metrics_add_up_its_processes_in_a_fresh_directory(services: dict[str, Any]) -> None:
    web = services["web"]
    directory = web["environment"]["PROMETHEUS_MULTIPROC_DIR"]
    assert directory in web["tmpfs"]  # empty at each start, never shared with a past run


# --- (c) stop grace periods -----------------------------------------------------------------


def test_the_worker_gets_its_shutdown_grace_and_a_margin(services: dict[str, Any]) -> None:
    worker = services["worker"]
    default = Settings.model_fields["worker_shutdown_grace_seconds"].default
    compose_default = re.fullmatch(
        r"\$\{WORKER_SHUTDOWN_GRACE_SECONDS:-([\d.]+)\}",
        worker["environment"]["WORKER_SHUTDOWN_GRACE_SECONDS"],
    )
    assert compose_default, "compose passes WORKER_SHUTDOWN_GRACE_SECONDS with its default"
    assert float(compose_default[1]) == default
    stop = duration_seconds(worker["stop_grace_period"])
    assert default < stop <= MAX_WORKER_STOP_SECONDS


def test_web_gets_gunicorns_graceful_timeout(services: dict[str, Any], procfile: Procfile) -> None:
    argv = shlex.split(procfile.line("web"))
    graceful = (
        float(argv[argv.index("--graceful-timeout") + 1])
        if "--graceful-timeout" in argv
        else float(gunicorn.config.GracefulTimeout.default)
    )
    assert graceful >= 30
    assert duration_seconds(services["web"]["stop_grace_period"]) >= graceful


def test_durations_are_read_as_compose_writes_them() -> None:
    assert duration_seconds("35s") == 35
    assert duration_seconds("1m30s") == 90
    assert duration_seconds("1h") == 3600
    with pytest.raises(AssertionError):
        duration_seconds("35")


# --- (d) Redis --------------------------------------------------------------------------------


def test_redis_keeps_every_acknowledged_write_and_never_evicts(services: dict[str, Any]) -> None:
    redis = services["redis"]
    argv = redis["command"]
    options = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert argv[0] == "redis-server"
    assert options["--appendonly"] == "yes"
    assert options["--appendfsync"] == "always"
    assert options["--maxmemory-policy"] == "noeviction"
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert redis["healthcheck"]["test"][1:] == ["redis-cli", "ping"]
    for name in ("web", "worker"):
        assert services[name]["depends_on"]["redis"] == {"condition": "service_healthy"}, name
        assert services[name]["environment"]["REDIS_URL"].startswith("redis://redis:6379/")


def test_the_worker_is_healthy_when_it_serves_its_metrics(
    services: dict[str, Any], final: Stage
) -> None:
    worker = services["worker"]
    port = worker["environment"]["WORKER_METRICS_PORT"]
    assert worker["expose"] == [port]
    check = " ".join(worker["healthcheck"]["test"])
    assert f"urlopen('http://127.0.0.1:{port}/metrics'" in check  # python: no curl in slim
    exposed = {word for i in final.all("EXPOSE") for word in i.rest.split()}
    assert {port, services["web"]["environment"]["PORT"]} <= exposed


# --- (e) what listens on the host -----------------------------------------------------------


def test_only_the_proxy_listens_on_every_interface(services: dict[str, Any]) -> None:
    everywhere = {
        name
        for name, service in services.items()
        for port in service.get("ports", [])
        if host_ip(port) != "127.0.0.1"
    }
    assert everywhere == {"proxy"}
    assert "ports" not in services["web"]
    assert "ports" not in services["worker"]
    assert [host_ip(p) for name in MONITORING for p in services[name]["ports"]] == [
        "127.0.0.1",
        "127.0.0.1",
    ]
    assert host_ip("80:80") == ""
    assert host_ip("127.0.0.1:3000:3000") == "127.0.0.1"


def test_monitoring_starts_only_when_asked(services: dict[str, Any]) -> None:
    with_profile = {name for name, service in services.items() if "profiles" in service}
    assert with_profile == MONITORING
    for name in MONITORING:
        assert services[name]["profiles"] == ["monitoring"]
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")


# --- (f) the mounted files are in the repository ---------------------------------------------


def test_every_mounted_deploy_path_exists(services: dict[str, Any]) -> None:
    mounted = [
        source
        for service in services.values()
        for source in volume_sources(service)
        if source.startswith("./")
    ]
    assert {
        "./deploy/prometheus/prometheus.yml",
        "./deploy/prometheus/alerts.yml",
        "./deploy/grafana/provisioning",
        "./deploy/grafana/dashboards",
        "./deploy/nginx/nginx.conf",
        "./deploy/nginx/certs",
    } <= set(mounted)
    missing = [source for source in mounted if not (ROOT / source).exists()]
    assert missing == []


# --- (g) the image ----------------------------------------------------------------------------


def test_the_image_is_built_in_two_stages_from_wheels(stages: list[Stage]) -> None:
    builder, final = stages[0], stages[-1]
    assert len(stages) == 2
    assert builder.name == "builder"
    assert builder.base == final.base == "python:3.11-slim"
    assert any("pip wheel --wheel-dir /wheels ." in i.rest for i in builder.all("RUN"))
    [install] = [i for i in final.all("RUN") if "pip install" in i.rest]
    assert "--no-index --find-links /wheels crmhook" in install.rest
    # The wheels are mounted for that one step: no layer of the image holds them.
    assert mount_options(install) == {
        "type": "bind",
        "from": "builder",
        "source": "/wheels",
        "target": "/wheels",
    }
    assert not [i for i in final.all("COPY") + final.all("ADD") if "from" in i.flags]
    assert image_env(final)["PIP_NO_CACHE_DIR"] == "1"


def test_the_final_image_has_no_build_tools_and_no_tests(final: Stage) -> None:
    for run in final.all("RUN"):
        words = set(re.split(r"[\s;&|]+", run.rest))
        assert not words & {"apt-get", "apt", "apk"}, run.rest  # nothing installed from the OS
        assert not words & BUILD_TOOLS, run.rest
    copied = [word for i in final.all("COPY") + final.all("ADD") for word in shlex.split(i.rest)]
    assert not [word for word in copied if "test" in word]
    assert copied == ["Procfile", "./"]


def test_the_final_image_runs_as_a_system_user_with_a_home(final: Stage) -> None:
    [user] = final.all("USER")
    uid = user.rest.split(":")[0]
    assert uid not in {"root", "0"}
    last_run = max(final.instructions.index(run) for run in final.all("RUN"))
    assert final.instructions.index(user) > last_run
    [useradd] = [i for i in final.all("RUN") if "useradd" in i.rest]
    command = useradd.rest[useradd.rest.index("useradd") :].split("&&")[0].split()
    assert "--system" in command
    assert command[command.index("--uid") + 1] == uid == "10001"
    assert "--create-home" in command  # HOME exists: nothing writes to /


def test_the_build_context_holds_only_what_the_image_is_built_from(stages: list[Stage]) -> None:
    """`.dockerignore` leaves everything out (the .venv, .git, .env, TLS keys, tests) except
    what the builder mounts (the project) and the final stage copies."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"
    included = {pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")}
    assert included == BUILD_CONTEXT
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["readme"] in included
    for stage in stages:
        for copy in stage.all("COPY"):
            if "from" not in copy.flags:
                assert set(shlex.split(copy.rest)[:-1]) <= included, copy.rest
    [mounted] = [i for i in stages[0].all("RUN") if "pip wheel" in i.rest]
    assert mount_options(mounted) == {"type": "bind", "target": "/src", "rw": ""}


def test_the_dockerfile_parser_joins_continuations_and_skips_comments() -> None:
    [stage] = parse_dockerfile(
        "# syntax=docker/dockerfile:1\n"
        "FROM python:3.11-slim AS base\n"
        "RUN --mount=type=bind,target=/x a \\\n"
        "    # a comment inside the continuation\n"
        "    && b\n"
        'CMD ["x", "y"]\n'
    )
    assert stage.name == "base"
    [run] = stage.all("RUN")
    assert run.flags == {"mount": "type=bind,target=/x"}
    assert run.rest.split() == ["a", "&&", "b"]
    assert stage.all("CMD")[0].exec_form() == ["x", "y"]
