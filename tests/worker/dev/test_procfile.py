"""The Procfile is the one definition of the process command lines: parsing it, finding it,
and every place that starts `web` or `worker` (dev runner, `crmhook run`, Docker, compose)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

import worker
from worker.cli import main
from worker.dev import procfile as procfile_module
from worker.dev.procfile import Procfile, child_environment, find, parse
from worker.dev.runner import DevStack
from worker.errors import ConfigError

ROOT = Path(__file__).parents[3]
VENV_BIN = os.path.dirname(sys.executable)


@pytest.fixture
def procfile() -> Procfile:
    return Procfile.load(ROOT / "Procfile")


def expand(line: str, **env: str) -> str:
    """The line as the shell would run it under `env`: its words after expansion."""
    echoed = subprocess.run(
        ["sh", "-c", "echo " + line],
        env={"PATH": os.defpath, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return echoed.stdout.strip()


def test_parse_skips_comments_and_blanks_and_splits_at_the_first_colon() -> None:
    text = """
# the web app
web: gunicorn --bind ${WEB_HOST:-0.0.0.0}:${PORT:-8000} 'webhooks:create_app()'

   # indented comment
worker:celery --app worker worker
"""
    assert parse(text) == {
        "web": "gunicorn --bind ${WEB_HOST:-0.0.0.0}:${PORT:-8000} 'webhooks:create_app()'",
        "worker": "celery --app worker worker",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("web gunicorn app", "Procfile:1: expected `name: command`"),
        ("web:", "Procfile:1: expected `name: command`"),
        ("web: a\nweb: b", "Procfile:2: 'web' is defined twice"),
    ],
)
def test_parse_refuses_what_is_not_an_entry(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(text)


def test_the_procfile_defines_web_and_worker(procfile: Procfile) -> None:
    assert set(procfile.processes) == {"web", "worker"}
    assert procfile.argv("worker") == ["sh", "-c", "exec " + procfile.processes["worker"]]


def test_an_unknown_name_lists_the_entries(procfile: Procfile) -> None:
    with pytest.raises(ConfigError, match=r"no 'beat' in .*Procfile; it defines: web, worker"):
        procfile.argv("beat")


def test_found_beside_the_source_tree_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "Procfile").write_text("web: elsewhere\n")
    monkeypatch.chdir(tmp_path)
    assert find() == ROOT / "Procfile"


def test_found_in_the_working_directory_for_an_installed_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site-packages"
    monkeypatch.setattr(worker, "__file__", str(site / "worker" / "__init__.py"))
    app = tmp_path / "app"
    app.mkdir()
    (app / "Procfile").write_text("web: gunicorn app\n")
    monkeypatch.chdir(app)
    assert find() == app / "Procfile"
    (app / "Procfile").unlink()
    with pytest.raises(ConfigError, match="no Procfile found") as raised:
        find()
    assert str(site / "Procfile") in str(raised.value)
    assert str(app / "Procfile") in str(raised.value)


def test_children_find_this_interpreters_scripts_first() -> None:
    env = child_environment({"PATH": "/usr/bin", "KEPT": "yes"})
    assert env == {"PATH": VENV_BIN + os.pathsep + "/usr/bin", "KEPT": "yes"}


def test_web_binds_all_interfaces_unless_host_says_otherwise(procfile: Procfile) -> None:
    assert "--bind 0.0.0.0:8000 " in expand(procfile.processes["web"])
    assert "--bind 127.0.0.1:5000 " in expand(
        procfile.processes["web"], WEB_HOST="127.0.0.1", PORT="5000"
    )


def dev_stack(**environ: str) -> DevStack:
    return DevStack(port=8123, sandbox_port=8765, concurrency=4, environ=environ)


def test_dev_runs_the_procfile_lines(procfile: Procfile) -> None:
    commands = dev_stack().commands(procfile)
    assert list(commands) == ["sandbox", "worker", "web"]
    assert commands["web"] == ["sh", "-c", "exec " + procfile.processes["web"]]
    assert commands["worker"] == ["sh", "-c", "exec " + procfile.processes["worker"]]
    assert "sandbox" not in dev_stack(CHILIPIPER_TRANSPORT="mcp").commands(procfile)


def test_dev_fills_the_procfile_lines_with_its_options(procfile: Procfile) -> None:
    env = dev_stack(WEB_HOST="0.0.0.0", PORT="9999", PATH="/usr/bin").environment("redis://x")
    assert env["PATH"].split(os.pathsep)[0] == VENV_BIN
    web = expand(procfile.processes["web"], **env)
    assert "--bind 127.0.0.1:8123 " in web
    assert "--workers 2 " in web
    assert "--concurrency 4 " in expand(procfile.processes["worker"], **env)


def test_dev_says_where_it_looked_for_a_missing_procfile(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(procfile_module, "candidates", lambda: [tmp_path / "Procfile"])
    assert dev_stack().run() == 2
    assert f"no Procfile found (looked for {tmp_path / 'Procfile'})" in capsys.readouterr().err


def test_run_becomes_the_procfile_entry(
    procfile: Procfile, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, list[str], dict[str, str]]] = []
    monkeypatch.setattr(os, "execvpe", lambda *args: calls.append(args))
    result = CliRunner().invoke(main, ["run", "worker"])
    assert result.exit_code == 0, result.output
    [(file, argv, env)] = calls
    assert (file, argv) == ("sh", procfile.argv("worker"))
    assert env["PATH"].split(os.pathsep)[0] == VENV_BIN


def test_run_refuses_an_unknown_name() -> None:
    result = CliRunner().invoke(main, ["run", "beat"])
    assert result.exit_code == 2
    assert "no 'beat' in" in result.output
    assert "it defines: web, worker" in result.output


def dockerfile_cmd() -> list[str]:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    cmd: list[str] = json.loads([line for line in lines if line.startswith("CMD ")][-1][4:])
    return cmd


def test_docker_and_compose_run_the_procfile_entries_by_name(procfile: Procfile) -> None:
    assert "Procfile" in next(
        line for line in (ROOT / "Dockerfile").read_text().splitlines() if "COPY" in line
    )
    assert dockerfile_cmd() == ["crmhook", "run", "web"]
    compose: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["worker"]["command"] == ["crmhook", "run", "worker"]
    assert "command" not in services["web"]  # the image's CMD
    run = {
        tuple(service.get("command", dockerfile_cmd()))
        for service in services.values()
        if "build" in service
    }
    assert run == {("crmhook", "run", name) for name in procfile.processes}
