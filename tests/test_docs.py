"""The README documents every setting the code reads, and the example file names only real ones."""

from __future__ import annotations

import re
from pathlib import Path

from webhooks.serving import DEFAULTS
from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [name.upper() for name in Settings.model_fields if name.upper() not in readme]
    assert missing == []


def test_the_example_environment_names_only_real_settings() -> None:
    example = (ROOT / ".env.example").read_text()
    named = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", example, re.MULTILINE))
    known = {name.upper() for name in Settings.model_fields} | {"SCALEKIT_ENVIRONMENT_URL"}
    assert named
    assert named <= known, named - known


def test_every_variable_the_procfile_and_the_web_server_read_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    procfile = re.findall(r"\$\{(\w+)", (ROOT / "Procfile").read_text())
    missing = [name for name in [*procfile, *DEFAULTS, "TLS_CERT_DIR"] if name not in readme]
    assert missing == []
