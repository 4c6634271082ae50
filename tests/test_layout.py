"""The layout the architecture promises: plain folders, and layering enforced."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_source_folders_are_not_packages() -> None:
    # a top-level package named `operator` would shadow Python's standard library
    for folder in ("core", "api", "operator"):
        assert not (ROOT / folder / "__init__.py").exists(), folder
    import operator

    assert operator.__file__ is not None
    assert "site-packages" not in operator.__file__
    assert hasattr(operator, "itemgetter")


def test_layers_only_import_downwards() -> None:
    result = subprocess.run([str(Path(sys.executable).parent / "lint-imports")], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    contracts = (ROOT / "pyproject.toml").read_text().count("[[tool.importlinter.contracts]]")
    assert contracts >= 6
    assert f"{contracts} kept, 0 broken" in result.stdout
