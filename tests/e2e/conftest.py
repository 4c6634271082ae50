"""Whole-system fixtures: a real kube-apiserver (shared per module) and operator processes.

The API server binary comes from `.ci/kube/build-apiserver.sh` (built and cached on first
use) unless `CREDITSYNC_KUBE_APISERVER` names one; nothing is skipped when a component is
missing: the fixture fails with the script's error instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.support import processes
from tests.support.kubecluster import KubeCluster

OPERATOR_NAMESPACE = "creditsync"
OPERATOR_ACCOUNT = "creditsync-operator"
CREDITSYNC = Path(sys.executable).parent / "creditsync"


@pytest.fixture(scope="module")
def kube() -> Iterator[KubeCluster]:
    """etcd + kube-apiserver on loopback, with a token for the operator's ServiceAccount."""
    cluster = KubeCluster()
    cluster.add_service_account(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT)
    with cluster:
        yield cluster


def operator_kubeconfig(cluster: KubeCluster) -> Path:
    return cluster.kubeconfig(f"sa-{OPERATOR_NAMESPACE}-{OPERATOR_ACCOUNT}")


class OperatorProcess:
    """`creditsync operator` as its own process, its output in a log file."""

    def __init__(self, name: str, log_dir: Path, env: Mapping[str, str],
                 args: tuple[str, ...] = ("--namespace", OPERATOR_NAMESPACE)) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [str(CREDITSYNC), "--log-text", "operator", *args],
            env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 40) -> str:
        return f"--- {self.name} (last {lines} lines) ---\n" + "\n".join(
            self.log().splitlines()[-lines:])

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int:
        code = processes.terminate(self.proc, timeout)
        self._log.close()
        return code
