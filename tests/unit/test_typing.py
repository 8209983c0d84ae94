"""The code type-checks (STYLE.md: type hints everywhere, mypy clean).

The plugins are installed under other package names than their folders
(``plugins/function`` is ``ktracecli_function``), so mypy reads them through a
tree of links that names each folder as its package.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"ktracecli": ROOT / "ktracecli", **{f"ktracecli_{p.name}": p for p in (ROOT / "plugins").iterdir()
                                                if (p / "__init__.py").exists()}}


def test_mypy_is_clean(tmp_path: Path) -> None:
    tree = tmp_path / "src"
    tree.mkdir()
    for name, folder in PACKAGES.items():
        (tree / name).symlink_to(folder)
    args = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
            "--cache-dir", str(tmp_path / "cache"), "--no-error-summary"]
    for name in PACKAGES:
        args += ["-p", name]
    proc = subprocess.run(args, cwd=tree, env={"MYPYPATH": str(tree), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
