"""The configuration reference cannot drift from the code.

Every environment variable the code reads has a row in README.md's "## Configuration" table and
a line in `.env.example`; neither names a variable the code does not read, so a removed setting
does not linger in the docs. The variables are found where a reader would look:

- `Settings`' fields (the variables' names in lower case) and their aliases;
- the `${NAME...}` expansions of the Procfile and docker-compose.yml;
- the environment reads in the packages: `os.environ.get("NAME")`, `os.environ["NAME"]`,
  `os.getenv("NAME")` (the same on any `environ` or `env` mapping), with the name written out or
  held in a module constant, and calls to helpers that read a name they are given
  (`_seconds(environ, HEADER_TIMEOUT)`), and the fields of any other pydantic-settings class
  (`class _FormatOnly(BaseSettings)`, read before the whole `Settings` can be).

A setting that was replaced is refused at start-up (its message says to unset it): the README
says so in its row, and `.env.example` leaves it out, since copying it would stop the services.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import AliasChoices, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("webhooks", "worker", "bench")
VARIABLE = re.compile(r"[A-Z][A-Z0-9_]*")
# Names an environment mapping goes by in the packages: `os.environ`, `self.environ`, `env`.
ENVIRONMENT_MAPPINGS = {"environ", "env"}
# A WSGI request's `environ` holds CGI keys (PATH_INFO, REQUEST_METHOD), not configuration.
WSGI_ENVIRONMENT = "WSGIEnvironment"
# Read by the packages but no operator's business (tests' or the benchmark's own plumbing); each
# needs a comment saying why. Keep it small: anything an operator may set belongs in the docs.
NOT_CONFIGURATION = frozenset(
    {
        # The operating system's search path: `crmhook dev` and the benchmark put this
        # interpreter's directory first on it for their children.
        "PATH",
    }
)


# --- what the code reads -------------------------------------------------------------------


def field_variables(name: str, info: FieldInfo) -> tuple[str, ...]:
    """The variables that set one `Settings` field: its name, or its aliases when it has any."""
    alias = info.validation_alias or info.alias
    if isinstance(alias, AliasChoices):
        names = [choice for choice in alias.choices if isinstance(choice, str)]
    elif isinstance(alias, str):
        names = [alias]
    else:
        names = [name]
    return tuple(choice.upper() for choice in names)


def settings_groups() -> list[tuple[str, ...]]:
    """One tuple per `Settings` field: the variables that set it (aliases are one setting)."""
    return [field_variables(name, info) for name, info in Settings.model_fields.items()]


class _ArgumentsOnly(Settings):
    """`Settings` validated from its arguments alone: no environment, no `.env` file."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def is_refused(variable: str) -> bool:
    """Whether `Settings` refuses the variable whatever its value, telling the operator to
    unset it (a replaced setting, such as CIRCUIT_FAILURE_THRESHOLD)."""
    values: dict[str, Any] = {"redis_url": "redis://127.0.0.1:6379/0", variable.lower(): "1"}
    try:
        _ArgumentsOnly(**values)
    except ValidationError as exc:
        return any(f"unset {variable}" in error["msg"] for error in exc.errors())
    return False


def refused_variables() -> set[str]:
    return {name for group in settings_groups() for name in group if is_refused(name)}


def expansions(text: str) -> set[str]:
    """`${NAME}`, `${NAME:-default}`: what a shell or compose substitutes (`$${...}` is a
    literal `$` in compose, not a read)."""
    return set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", text))


@dataclass
class _Module:
    """One parsed module, with its string constants (`HEADER_TIMEOUT = "WEB_..."`)."""

    tree: ast.Module
    constants: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for node in self.tree.body:
            if (
                isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
            ):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        self.constants[target.id] = node.value.value

    def string(self, node: ast.expr | None) -> str | None:
        """The string `node` stands for: a literal or a module constant; else None."""
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name):
            return self.constants.get(node.id)
        return None


def _is_mapping(node: ast.expr, wsgi: set[str]) -> bool:
    if isinstance(node, ast.Name):
        return node.id in ENVIRONMENT_MAPPINGS and node.id not in wsgi
    return isinstance(node, ast.Attribute) and node.attr in ENVIRONMENT_MAPPINGS


def _key_read(node: ast.AST, wsgi: set[str]) -> ast.expr | None:
    """The key of an environment read (`environ.get(key)`, `environ[key]`, `getenv(key)`)."""
    if isinstance(node, ast.Call) and node.args:
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "get" and _is_mapping(func.value, wsgi):
            return node.args[0]
        if (isinstance(func, ast.Attribute) and func.attr == "getenv") or (
            isinstance(func, ast.Name) and func.id == "getenv"
        ):
            return node.args[0]
    if (
        isinstance(node, ast.Subscript)
        and isinstance(node.ctx, ast.Load)
        and _is_mapping(node.value, wsgi)
    ):
        return node.slice
    return None


def _functions(tree: ast.AST) -> Iterator[tuple[ast.FunctionDef | ast.AsyncFunctionDef, bool]]:
    """Every function in `tree`, and whether it is a method (its first parameter is bound)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    yield item, True
        elif isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    yield item, False


def _settings_fields(tree: ast.AST) -> Iterator[str]:
    """The fields of the pydantic-settings classes in `tree`, as variable names."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(
            ast.unparse(base).split(".")[-1] == "BaseSettings" for base in node.bases
        ):
            for item in node.body:
                if (
                    isinstance(item, ast.AnnAssign)
                    and isinstance(item.target, ast.Name)
                    and item.target.id != "model_config"
                    and not item.target.id.startswith("_")
                ):
                    yield item.target.id.upper()


def _outside_functions(node: ast.AST) -> Iterator[ast.AST]:
    """`node` and what it holds, functions' bodies left out (they are read with their
    parameters in view, by `_reads`)."""
    yield node
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            yield from _outside_functions(child)


def _reads(
    function: ast.FunctionDef | ast.AsyncFunctionDef,
) -> Iterator[tuple[ast.expr, list[str]]]:
    """The keys `function` reads from an environment, with its parameter names. Parameters
    annotated as a WSGI environment are requests, not the process environment."""
    params = [arg.arg for arg in [*function.args.posonlyargs, *function.args.args]]
    wsgi = {
        arg.arg
        for arg in [*function.args.posonlyargs, *function.args.args, *function.args.kwonlyargs]
        if arg.annotation is not None and WSGI_ENVIRONMENT in ast.unparse(arg.annotation)
    }
    for node in ast.walk(function):
        key = _key_read(node, wsgi)
        if key is not None:
            yield key, params


def environment_reads(sources: Iterable[str]) -> set[str]:
    """The variable names the given Python sources read from the environment."""
    modules = [_Module(ast.parse(source)) for source in sources]
    found: set[str] = set()
    # name -> position among the caller's arguments, for helpers that read a parameter.
    helpers: dict[str, tuple[int, str]] = {}
    for module in modules:
        found.update(_settings_fields(module.tree))
        for node in _outside_functions(module.tree):
            key = module.string(_key_read(node, set()))
            if key is not None:
                found.add(key)
        for function, is_method in _functions(module.tree):
            for key_node, params in _reads(function):
                key = module.string(key_node)
                if key is not None:
                    found.add(key)
                elif isinstance(key_node, ast.Name) and key_node.id in params:
                    bound = 1 if is_method and params else 0
                    position = params.index(key_node.id) - bound
                    helpers[function.name] = (position, key_node.id)
    for module in modules:
        for node in ast.walk(module.tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if called not in helpers:
                continue
            position, keyword = helpers[called]
            argument = node.args[position] if 0 <= position < len(node.args) else None
            for given in node.keywords:
                if given.arg == keyword:
                    argument = given.value
            name = module.string(argument)
            if name is not None:
                found.add(name)
    return {name for name in found if VARIABLE.fullmatch(name)}


def package_sources() -> Iterator[str]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path.read_text()


@dataclass(frozen=True)
class CodeVariables:
    """What the code reads, grouped: each group is one setting (aliases share a group)."""

    groups: list[tuple[str, ...]]
    refused: set[str]

    @property
    def names(self) -> set[str]:
        return {name for group in self.groups for name in group}


def code_variables() -> CodeVariables:
    groups = settings_groups()
    known = {name for group in groups for name in group}
    outside = (
        expansions((ROOT / "Procfile").read_text())
        | expansions((ROOT / "docker-compose.yml").read_text())
        | environment_reads(package_sources())
    ) - NOT_CONFIGURATION
    groups += [(name,) for name in sorted(outside - known)]
    return CodeVariables(groups, refused_variables())


# --- what the docs name --------------------------------------------------------------------


def configuration_section(readme: str) -> str:
    """README.md from "## Configuration" to the next second-level heading."""
    match = re.search(r"^## Configuration[ \t]*\n(.*?)(?=^## |\Z)", readme, re.M | re.S)
    assert match, 'README.md has no "## Configuration" section'
    return match.group(1)


def readme_variables(section: str) -> set[str]:
    """The variables the section's table documents: the backquoted names in each row's first
    cell (`SCALEKIT_CLIENT_ID`, `SCALEKIT_CLIENT_SECRET`); prose may mention them freely."""
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("|"):
            first = line.strip("|").split("|", 1)[0]
            names |= set(re.findall(r"`([A-Z][A-Z0-9_]*)`", first))
    return names


def example_variables(example: str) -> set[str]:
    """`NAME=` and `# NAME=` lines of `.env.example`."""
    return set(re.findall(r"^[ \t]*#?[ \t]*([A-Z][A-Z0-9_]*)=", example, re.M))


@pytest.fixture(scope="module")
def code() -> CodeVariables:
    return code_variables()


@pytest.fixture(scope="module")
def readme() -> set[str]:
    return readme_variables(configuration_section((ROOT / "README.md").read_text()))


@pytest.fixture(scope="module")
def example() -> set[str]:
    return example_variables((ROOT / ".env.example").read_text())


# --- the checks ----------------------------------------------------------------------------


def test_the_readme_documents_every_variable_the_code_reads(
    code: CodeVariables, readme: set[str]
) -> None:
    missing = sorted(code.names - readme)
    assert not missing, (
        'README.md\'s "## Configuration" table has no row for: '
        + ", ".join(missing)
        + " (give each its default and meaning; aliases and refused settings included)"
    )


def test_the_example_lists_every_setting(code: CodeVariables, example: set[str]) -> None:
    missing = sorted(
        " or ".join(group) for group in code.groups if not set(group) & (example | code.refused)
    )
    assert not missing, (
        ".env.example has no `NAME=` or `# NAME=` line for: "
        + ", ".join(missing)
        + " (comment out optional ones, with their default)"
    )


def test_the_readme_names_only_variables_the_code_reads(
    code: CodeVariables, readme: set[str]
) -> None:
    stale = sorted(readme - code.names)
    assert not stale, (
        'README.md\'s "## Configuration" table documents variables the code does not read: '
        + ", ".join(stale)
    )


def test_the_example_names_only_variables_the_services_accept(
    code: CodeVariables, example: set[str]
) -> None:
    stale = sorted(example - code.names)
    assert not stale, ".env.example names variables the code does not read: " + ", ".join(stale)
    refused = sorted(example & code.refused)
    assert not refused, (
        ".env.example names settings that stop the services at start-up (replaced): "
        + ", ".join(refused)
    )


def test_the_exclusions_are_still_read() -> None:
    """An exclusion for a variable the code no longer reads is dead weight: drop it."""
    read = environment_reads(package_sources())
    assert sorted(NOT_CONFIGURATION - read) == []


# --- the finders find ----------------------------------------------------------------------


def test_the_code_scan_finds_reads_outside_settings(code: CodeVariables) -> None:
    """Reads from each source the scan covers: the Procfile, compose, a literal read in the
    packages, and a name held in a constant and passed to a reading helper."""
    assert {
        "PORT",
        "WORKER_CONCURRENCY",
        "TLS_CERT_DIR",
        "PROMETHEUS_MULTIPROC_DIR",
        "WEB_HEADER_TIMEOUT_SECONDS",
        "WEB_BODY_TIMEOUT_SECONDS",
    } <= code.names
    assert ("SCALEKIT_ENV_URL", "SCALEKIT_ENVIRONMENT_URL") in code.groups


def test_a_replaced_setting_is_refused_and_a_live_one_is_not() -> None:
    assert is_refused("CIRCUIT_FAILURE_THRESHOLD")
    assert not is_refused("CIRCUIT_WINDOW_CALLS")  # "1" is below its minimum: not "unset"
    assert not is_refused("CELERY_BROKER_URL")


def test_environment_reads_follow_constants_and_helpers_and_skip_requests_and_writes() -> None:
    source = """
import os
from os import getenv
from wsgiref.types import WSGIEnvironment

TIMEOUT = "A_TIMEOUT"
LITERAL = os.environ.get("A_LITERAL", "1")
INDEXED = os.environ["AN_INDEX"]

def seconds(environ, name):
    return environ.get(name, "")

def port():
    return getenv("A_PORT") or seconds(os.environ, TIMEOUT)

class Stack:
    def given(self, name):
        return self.environ.get(name)

    def banner(self, env):
        env["A_WRITE"] = "1"
        env.setdefault("A_DEFAULT", "1")
        return self.given(name="A_GIVEN"), env["AN_ENV"]

def app(environ: WSGIEnvironment, start_response):
    return environ.get("PATH_INFO"), environ["wsgi.input"]

class _Early(pydantic_settings.BaseSettings):
    model_config = SettingsConfigDict(env_file=".env")
    a_format: str = "json"
"""
    assert environment_reads([source]) == {
        "A_LITERAL",
        "AN_INDEX",
        "A_PORT",
        "A_TIMEOUT",
        "A_GIVEN",
        "AN_ENV",
        "A_FORMAT",
    }


def test_the_readme_reader_takes_first_cells_and_the_example_reader_commented_lines() -> None:
    section = configuration_section(
        "## Set up\n| `NOT_HERE` | x |\n## Configuration\n\nProse names `PROSE_ONLY`.\n\n"
        "| variable | default | meaning |\n|---|---|---|\n"
        "| `ONE`, `TWO_2` | `1` | see `IN_MEANING` |\n## Next\n| `AFTER` | x |\n"
    )
    assert readme_variables(section) == {"ONE", "TWO_2"}
    example = "# Mentions CIRCUIT_WINDOW_CALLS in prose.\nA=1\n# B_B=2\n  #C=\nd=4\n"
    assert example_variables(example) == {"A", "B_B", "C"}
