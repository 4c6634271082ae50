"""Rendering the Helm chart for tests: `helm template`, `helm lint`, parsed manifests.

helm comes from `.ci/kube/tools.sh` (or `$CREDITSYNC_KUBE_TOOLS`), as for the cluster tests;
it runs with its own cache and config directories so that nothing of the user's leaks in.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.support.kubecluster import find_tools

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "creditsync"
DEPLOY = ROOT / "deploy"
VALUES_DIR = Path(__file__).resolve().parent / "values"
# the values files every rendering test runs over: name → file
VALUES = {path.stem: path for path in sorted(VALUES_DIR.glob("*.yaml"))}
NAMESPACE = "creditsync"
RELEASE = "creditsync"

Manifest = dict[str, Any]


def _env() -> dict[str, str]:
    home = Path(tempfile.gettempdir()) / f"creditsync-helm-{os.getuid()}"
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env.update({"HOME": str(home), "HELM_CACHE_HOME": str(home / "cache"),
                "HELM_CONFIG_HOME": str(home / "config"), "HELM_DATA_HOME": str(home / "data")})
    return env


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    """Run helm without a cluster."""
    return subprocess.run([str(find_tools() / "helm"), *args], capture_output=True, text=True,
                          env=_env(), timeout=120, check=False)


def _value_args(values: Iterable[Path], sets: Sequence[str]) -> list[str]:
    args = []
    for path in values:
        args += ["-f", str(path)]
    for item in sets:
        args += ["--set", item]
    return args


def template(*values: Path, sets: Sequence[str] = (), namespace: str = NAMESPACE,
             release: str = RELEASE, extra: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """`helm template` (hooks and the test pod included)."""
    return helm("template", release, str(CHART), "--namespace", namespace,
                *_value_args(values, sets), *extra)


def render(*values: Path, sets: Sequence[str] = (), namespace: str = NAMESPACE,
           release: str = RELEASE, extra: Sequence[str] = ()) -> list[Manifest]:
    """The rendered manifests, parsed; fails with helm's message when rendering fails."""
    done = template(*values, sets=sets, namespace=namespace, release=release, extra=extra)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def lint(*values: Path, sets: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    return helm("lint", "--strict", str(CHART), *_value_args(values, sets))


def find(manifests: Iterable[Manifest], kind: str, name: str | None = None) -> Manifest:
    """The one manifest of `kind` (and `name`)."""
    found = [m for m in manifests
             if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def kinds(manifests: Iterable[Manifest]) -> list[str]:
    return sorted(m["kind"] for m in manifests)


def is_hook(manifest: Manifest) -> bool:
    return "helm.sh/hook" in manifest["metadata"].get("annotations", {})
