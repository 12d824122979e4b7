"""Peers in virtual environments of their own (they pin their own Redis clients)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VENVS = HERE / ".venvs"
SCRIPTS = HERE / "peer_scripts"

#: name -> what pip installs into its environment (each has a script in peer_scripts/).
PEERS: dict[str, list[str]] = {
    "arq": ["arq==0.28.0"],
    "saq": ["saq[redis]==0.26.4", "typing_extensions"],
    "taskiq": ["taskiq==0.13.0", "taskiq-redis==1.2.4"],
    "streaq": ["streaq==7.2.0"],
}


def python_of(name: str) -> Path | None:
    """The peer's interpreter, creating its environment on first use; None if that fails."""
    venv = VENVS / name
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    if marker.exists():
        return python
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", *PEERS[name]],
            check=True,
            capture_output=True,
        )
    except subprocess.CalledProcessError as exc:
        print(f"  {name}: cannot install ({exc.stderr[-300:] if exc.stderr else exc})")
        return None
    marker.write_text("\n".join(PEERS[name]))
    return python


def version_of(name: str) -> str:
    return " ".join(PEERS[name])


def run_peer(name: str, url: str, mode: str, n: int, concurrency: int) -> dict[str, Any] | None:
    python = python_of(name)
    if python is None:
        return None
    out = subprocess.run(
        [str(python), str(SCRIPTS / f"{name}_bench.py"), url, mode, str(n), str(concurrency)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 and not lines:
        print(f"  {name} {mode}: failed: {out.stderr[-500:]}")
        return None
    result: dict[str, Any] = json.loads(lines[-1])
    return result
