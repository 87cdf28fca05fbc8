"""How production runs `web`: the Procfile's gunicorn line, and compose's TLS proxy in front of
it (deploy/nginx/nginx.conf), read as files: no Docker engine or nginx is needed."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from worker.dev.procfile import Procfile
from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
NGINX_CONF = ROOT / "deploy" / "nginx" / "nginx.conf"
# nginx variables that carry the query string (the webhook token travels there); plus $arg_*.
QUERY_VARIABLES = {"request", "request_uri", "args", "query_string", "is_args", "http_referer"}


def web_argv() -> list[str]:
    return shlex.split(Procfile.load(ROOT / "Procfile").line("web"))


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_web_runs_gevent_workers_without_preloading_the_app() -> None:
    argv = web_argv()
    assert option(argv, "--worker-class") == "gevent"
    assert option(argv, "--keep-alive") == "${WEB_HEADER_TIMEOUT_SECONDS:-5}"  # header timeout
    assert argv[-1] == "webhooks.serving:create_app()"  # the body timeout
    # Preloading would build the Celery and Redis clients in the master, before gevent patches.
    assert "--preload" not in argv
    assert "--threads" not in argv


def test_web_access_log_prints_the_path_never_the_query_string() -> None:
    argv = web_argv()
    assert option(argv, "--access-logfile") == "-"
    atoms = re.findall(r"%\(([^)]+)\)s", option(argv, "--access-logformat"))
    # remote address, time, method, path without query, protocol, status, size, duration
    assert atoms == ["h", "t", "m", "U", "H", "s", "b", "M"]


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] = field(default_factory=list)

    def all(self, name: str) -> list[Directive]:
        """Every directive called `name` in this block and the blocks inside it."""
        found = [d for d in self.block if d.name == name]
        return found + [hit for d in self.block for hit in d.all(name)]

    def one(self, name: str) -> Directive:
        [directive] = [d for d in self.block if d.name == name]
        return directive


def parse_nginx(text: str) -> Directive:
    """nginx's configuration grammar: `name arg…;` or `name arg… { … }`, `#` comments,
    quoted arguments."""
    tokens = re.findall(r"#[^\n]*|'[^']*'|\"[^\"]*\"|[{};]|[^\s{};]+", text)
    root = Directive("main", [])
    stack: list[Directive] = [root]
    words: list[str] = []
    for token in tokens:
        if token.startswith("#"):
            continue
        if token in (";", "{"):
            directive = Directive(words[0], words[1:])
            stack[-1].block.append(directive)
            if token == "{":
                stack.append(directive)
            words = []
        elif token == "}":
            stack.pop()
        else:
            words.append(token.strip("'\""))
    assert len(stack) == 1, "unbalanced braces"
    assert not words, "a directive without its semicolon"
    return root


@pytest.fixture
def nginx() -> Directive:
    return parse_nginx(NGINX_CONF.read_text())


@pytest.fixture
def compose() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    return services


def test_only_the_proxy_is_published_and_it_forwards_to_webs_port(
    compose: dict[str, Any], nginx: Directive
) -> None:
    web, proxy = compose["web"], compose["proxy"]
    assert "ports" not in web
    assert web["expose"] == [web["environment"]["PORT"]] == ["8000"]
    assert proxy["ports"] == ["80:80", "443:443"]
    assert [d.args for d in nginx.all("set")] == [["$web", "http://web:8000"]]
    assert [d.args for d in nginx.all("proxy_pass")] == [["$web"]]
    assert proxy["depends_on"]["web"] == {"condition": "service_healthy"}


def test_the_proxy_reads_this_configuration_and_a_mounted_certificate(
    compose: dict[str, Any], nginx: Directive
) -> None:
    mounts = {}
    for volume in compose["proxy"]["volumes"]:
        read_only = re.fullmatch(r"(.+):(/[^:]+):ro", volume)
        assert read_only, volume
        mounts[read_only[2]] = read_only[1]
    assert mounts["/etc/nginx/nginx.conf"] == "./deploy/nginx/nginx.conf"
    assert mounts["/etc/nginx/certs"] == "${TLS_CERT_DIR:-./deploy/nginx/certs}"
    assert (ROOT / "deploy" / "nginx" / "certs").is_dir()
    https = next(s for s in nginx.all("server") if s.one("listen").args[:2] == ["443", "ssl"])
    assert https.one("ssl_certificate").args == ["/etc/nginx/certs/tls.crt"]
    assert https.one("ssl_certificate_key").args == ["/etc/nginx/certs/tls.key"]


def test_plain_http_is_redirected_to_https(nginx: Directive) -> None:
    http = next(s for s in nginx.all("server") if s.one("listen").args[0] == "80")
    assert http.one("return").args == ["301", "https://$host/"]  # no query echoed back


def test_the_proxy_logs_no_query_string(nginx: Directive) -> None:
    formats = {d.args[0]: "".join(d.args[1:]) for d in nginx.all("log_format")}
    assert list(formats) == ["crmhook"]
    line = formats["crmhook"]
    assert '"$request_method $uri $server_protocol"' in line
    variables = set(re.findall(r"\$\{?(\w+)", line))
    assert not variables & QUERY_VARIABLES
    assert not [name for name in variables if name.startswith("arg_")]
    # An access_log without a format would use nginx's "combined", which prints $request.
    assert [d.args for d in nginx.all("access_log")] == [["/dev/stdout", "crmhook"]]
    # nginx puts the raw request line in error lines up to level `error`.
    assert [d.args for d in nginx.all("error_log")] == [["/dev/stderr", "crit"]]


def megabytes(size: str) -> int:
    units = {"k": 1024, "m": 1024 * 1024}
    return int(size[:-1]) * units[size[-1].lower()] if size[-1].isalpha() else int(size)


def test_the_proxy_buffers_whole_requests_and_bounds_slow_clients(nginx: Directive) -> None:
    http = nginx.one("http")
    assert [d.args for d in nginx.all("proxy_request_buffering")] == [["on"]]
    for timeout in ("client_header_timeout", "client_body_timeout", "send_timeout"):
        assert http.one(timeout).args == ["10s"], timeout
    default_max_body = Settings.model_fields["max_body_bytes"].default
    assert megabytes(http.one("client_max_body_size").args[0]) == default_max_body
    # The whole body fits the in-memory buffer: nothing goes to a temporary file.
    assert megabytes(http.one("client_body_buffer_size").args[0]) == default_max_body
