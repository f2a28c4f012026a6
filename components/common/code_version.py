"""Which code produced an artifact: part of every model's lineage and of the preprocessing hash."""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def code_version() -> str:
    """CODE_VERSION (baked into images at build time), else pyproject version + git short sha."""
    if os.environ.get("CODE_VERSION"):
        return os.environ["CODE_VERSION"]
    version = "0.0.0"
    pyproject = ROOT / "pyproject.toml"
    if pyproject.exists():
        import tomllib

        version = tomllib.loads(pyproject.read_text()).get("project", {}).get("version", version)
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                             capture_output=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{version}+{sha}" if sha else version
