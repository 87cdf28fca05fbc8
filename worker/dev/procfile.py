"""The Procfile is the one definition of the `web` and `worker` command lines.

`crmhook dev`, `crmhook run` (the Docker image's CMD and docker-compose's worker) and the tests
start their processes from its lines, as honcho, foreman or Heroku do, so a flag changed there
changes everywhere. Settings the lines leave open (`$WEB_HOST`, `$PORT`, `$WEB_CONCURRENCY`,
`$WORKER_CONCURRENCY`) are passed in the environment.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import worker
from worker.errors import ConfigError

FILENAME = "Procfile"
# As honcho reads it: the name is everything before the first colon (commands contain colons).
ENTRY = re.compile(r"^(?P<name>[A-Za-z0-9_-]+):\s*(?P<line>\S.*)$")


def candidates() -> list[Path]:
    """Where the Procfile may be: beside the package's source tree (a checkout or an editable
    install), then the working directory (an image that copies it next to the app)."""
    return [Path(worker.__file__).resolve().parent.parent / FILENAME, Path.cwd() / FILENAME]


def find() -> Path:
    """The first Procfile of `candidates()`; a ConfigError naming every place looked at."""
    places = candidates()
    for path in places:
        if path.is_file():
            return path
    looked = ", ".join(str(path) for path in places)
    raise ConfigError(f"no {FILENAME} found (looked for {looked})")


def parse(text: str, source: str = FILENAME) -> dict[str, str]:
    """`{name: command line}`; blank lines and `#` comments are skipped, anything else that is
    not `name: command` is an error rather than a silently missing process."""
    processes: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = ENTRY.match(stripped)
        if match is None:
            raise ConfigError(f"{source}:{number}: expected `name: command`, got {stripped!r}")
        if match["name"] in processes:
            raise ConfigError(f"{source}:{number}: {match['name']!r} is defined twice")
        processes[match["name"]] = match["line"]
    return processes


@dataclass(frozen=True)
class Procfile:
    path: Path
    processes: dict[str, str]

    @classmethod
    def load(cls, path: Path | None = None) -> Procfile:
        """The given Procfile, or the one `find()` finds."""
        path = path or find()
        return cls(path, parse(path.read_text(encoding="utf-8"), str(path)))

    def line(self, name: str) -> str:
        """The command line of entry `name`; a ConfigError listing the entries if unknown."""
        try:
            return self.processes[name]
        except KeyError:
            names = ", ".join(sorted(self.processes))
            raise ConfigError(f"no {name!r} in {self.path}; it defines: {names}") from None

    def argv(self, name: str) -> list[str]:
        """Run entry `name` as Procfile runners do: the shell expands `${PORT:-8000}` and the
        like, then `exec` replaces it, so the started pid is the server itself and signals
        (Ctrl-C, SIGTERM from a supervisor) reach it directly."""
        return ["sh", "-c", "exec " + self.line(name)]


def child_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """`environ` (default: ours) with the running interpreter's directory first on PATH, so
    the lines' `gunicorn` and `celery` are this virtualenv's even when it is not activated
    (`.venv/bin/crmhook dev`)."""
    env = dict(os.environ if environ is None else environ)
    path = env.get("PATH", os.defpath)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + path
    return env
