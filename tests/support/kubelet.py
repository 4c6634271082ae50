"""What a kubelet and the Job controller would do, done by hand for the test API server.

The test cluster has no controller-manager and no kubelet: a Deployment never gets pods and
a Job never runs. `ContainerRun` runs one container of a rendered pod spec as a local
process instead, the way a node would: the image's entry point (`creditsync`) with the
container's `args`, the container's `command` when it has one (`python` is this
interpreter), and exactly the container's environment — literal values, `secretKeyRef`s
read from the API server, ConfigMap volumes written to a local directory that stands in
for the mount path. `localize` rewrites addresses that only exist inside a cluster
(`0.0.0.0` listeners, Service DNS names) to loopback ones.

`complete_job` and `finish_pod` write the status a controller or kubelet would, so that
Helm, which waits for hook Jobs and test pods, sees them finish.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

from tests.support import processes
from tests.support.kubecluster import KubeCluster, kubectl

BIN = Path(sys.executable).parent
ENTRYPOINT = str(BIN / "creditsync")  # deploy/Dockerfile's ENTRYPOINT
COMMANDS = {"python": sys.executable, "creditsync": ENTRYPOINT}


class PodError(AssertionError):
    """The pod spec asks for something a node could not give it."""


def get_json(cluster: KubeCluster, *args: str) -> dict[str, Any]:
    """`kubectl get ... -o json` as admin, parsed."""
    done = kubectl(cluster, "get", *args, "-o", "json")
    if done.returncode != 0:
        raise PodError(f"kubectl get {' '.join(args)}: {done.stderr.strip()}")
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def container(pod_spec: Mapping[str, Any], name: str) -> dict[str, Any]:
    for found in pod_spec["containers"]:
        if found["name"] == name:
            return dict(found)
    raise PodError(f"the pod has no container {name!r}")


def container_port(spec: Mapping[str, Any], port: int | str) -> int:
    """A probe's or Service's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    for found in spec.get("ports", []):
        if found.get("name") == port:
            return int(found["containerPort"])
    raise PodError(f"container {spec['name']} has no port named {port!r}")


class ContainerRun:
    """One container of `pod_spec` in namespace `namespace`, as a local process."""

    def __init__(
        self,
        cluster: KubeCluster,
        namespace: str,
        pod_spec: Mapping[str, Any],
        name: str,
        workdir: Path,
        *,
        localize: Mapping[str, str] | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.spec = container(pod_spec, name)
        self.name = name
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        mounts = self._mount_volumes(cluster, namespace, pod_spec)
        self.argv = self._argv(localize or {})
        self.env = {
            "PATH": f"{BIN}:/usr/bin:/bin",
            "HOME": str(workdir),
            "LANG": "C.UTF-8",
            **self._env(cluster, namespace, mounts),
            **(extra_env or {}),
        }
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    # ---- what a node would do -----------------------------------------------------

    def _argv(self, localize: Mapping[str, str]) -> list[str]:
        command = self.spec.get("command") or ["creditsync"]
        argv = [COMMANDS.get(command[0], command[0]), *command[1:], *self.spec.get("args", [])]
        for inside, outside in localize.items():
            argv = [arg.replace(inside, outside) for arg in argv]
        return argv

    def _mount_volumes(self, cluster: KubeCluster, namespace: str,
                       pod_spec: Mapping[str, Any]) -> dict[str, Path]:
        """ConfigMap volumes written under `workdir`; returns mount path → local directory."""
        volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
        mounts: dict[str, Path] = {}
        for mount in self.spec.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            local = self.workdir / "volumes" / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            if "configMap" in volume:
                data = get_json(cluster, "-n", namespace, "configmap",
                                volume["configMap"]["name"]).get("data", {})
                for key, text in data.items():
                    (local / key).write_text(text)
            elif "emptyDir" not in volume:
                raise PodError(f"volume {mount['name']}: only configMap and emptyDir are run")
            mounts[mount["mountPath"]] = local
        return mounts

    def _env(self, cluster: KubeCluster, namespace: str,
             mounts: Mapping[str, Path]) -> dict[str, str]:
        env: dict[str, str] = {}
        secrets: dict[str, dict[str, str] | None] = {}
        for var in self.spec.get("env", []):
            if "value" in var:
                value = str(var["value"])
                for inside, local in sorted(mounts.items(), key=lambda m: -len(m[0])):
                    if value.startswith(inside + "/"):
                        value = str(local) + value[len(inside):]
                        break
                env[var["name"]] = value
                continue
            ref = var["valueFrom"]["secretKeyRef"]
            if ref["name"] not in secrets:
                done = kubectl(cluster, "-n", namespace, "get", "secret", ref["name"], "-o", "json")
                secrets[ref["name"]] = (json.loads(done.stdout).get("data", {})
                                        if done.returncode == 0 else None)
            data = secrets[ref["name"]]
            if data is not None and ref["key"] in data:
                env[var["name"]] = base64.b64decode(data[ref["key"]]).decode()
            elif not ref.get("optional"):
                raise PodError(f"{var['name']}: secret {ref['name']} has no key {ref['key']} "
                               "(the pod would not start: CreateContainerConfigError)")
        return env

    # ---- the process -----------------------------------------------------------------

    def start(self) -> Self:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        return self

    def run(self, timeout: float = 120.0) -> int:
        """Run to completion (a Job's or a test pod's container); returns the exit code."""
        self.start()
        assert self.proc is not None
        return self.proc.wait(timeout)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, lines: int = 40) -> str:
        return f"--- {self.name} (last {lines} lines) ---\n" + "\n".join(
            self.log().splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, as a kubelet stopping the pod sends; SIGKILL after `timeout`."""
        if self.proc is None:
            return None
        return processes.terminate(self.proc, timeout)


def patch_status(cluster: KubeCluster, namespace: str, kind: str, name: str,
                 status: Mapping[str, Any]) -> None:
    done = kubectl(cluster, "-n", namespace, "patch", kind, name, "--subresource=status",
                   "--type=merge", "-p", json.dumps({"status": status}))
    if done.returncode != 0:
        raise PodError(f"cannot write the status of {kind} {name}: {done.stderr.strip()}")


def complete_job(cluster: KubeCluster, namespace: str, name: str, succeeded: bool) -> None:
    """What the Job controller writes when the Job's pod has finished."""
    now = _now()
    condition = {"type": "Complete" if succeeded else "Failed", "status": "True",
                 "lastProbeTime": now, "lastTransitionTime": now}
    patch_status(cluster, namespace, "job", name, {
        "conditions": [condition], "startTime": now,
        **({"succeeded": 1, "completionTime": now} if succeeded else {"failed": 1})})


def finish_pod(cluster: KubeCluster, namespace: str, name: str, exit_code: int) -> None:
    """What the kubelet writes when a `restartPolicy: Never` pod's container has exited."""
    patch_status(cluster, namespace, "pod", name,
                 {"phase": "Succeeded" if exit_code == 0 else "Failed"})


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
