"""The architecture, as rules the code can break: imports run one way and in no circle, and
only the key module spells a Redis key."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PACKAGES = ("webhooks", "worker")


def modules() -> dict[str, Path]:
    """Every module of our packages by dotted name (`worker.store` for its __init__)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> Iterator[str]:
    """The modules of ours that `name` imports, anywhere in the file (functions included):
    `from a.b import c` names `a.b.c` when that is a module, else `a.b`."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                if candidate in known:
                    yield candidate
                elif node.module in known:
                    yield node.module


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: set(imports(name, path, known)) - {name} for name, path in found.items()}


def cycle_in(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the list of modules around it, or None."""
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> list[str] | None:
        if name in trail:
            return [*trail[trail.index(name) :], name]
        if name in done:
            return None
        for target in sorted(edges.get(name, ())):
            found = visit(target, [*trail, name])
            if found:
                return found
        done.add(name)
        return None

    for name in sorted(edges):
        found = visit(name, [])
        if found:
            return found
    return None


def test_the_worker_never_imports_the_web_edge() -> None:
    offenders = sorted(
        f"{name} imports {target}"
        for name, targets in graph().items()
        if name.startswith("worker")
        for target in targets
        if target.startswith("webhooks")
    )
    assert offenders == []


def test_there_is_no_import_cycle() -> None:
    assert cycle_in(graph()) is None


@pytest.mark.parametrize(
    ("edges", "cycle"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]),
        ({"a": {"b"}, "b": {"c"}, "c": {"b"}}, ["b", "c", "b"]),
    ],
)
def test_the_cycle_finder_finds_cycles(edges: dict[str, set[str]], cycle: list[str]) -> None:
    assert cycle_in(edges) == cycle


def test_domain_rules_need_no_redis_celery_or_http() -> None:
    """The pure layer stays pure: tests call it with no server at all."""
    forbidden = re.compile(r"^(redis|celery|kombu|httpx|flask|worker\.(store|tasks|chilipiper))")
    offenders = []
    for name, path in modules().items():
        if not name.startswith("worker.domain"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [f"{name} imports {t}" for t in targets if forbidden.match(t)]
    assert offenders == []


def test_only_the_key_module_spells_a_redis_key() -> None:
    spelled = sorted(
        str(path.relative_to(ROOT))
        for path in modules().values()
        if re.search(r"crmhook:|\bPREFIX\}:", path.read_text())
    )
    assert spelled == ["worker/store/keys.py"]
