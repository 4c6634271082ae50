"""What a kubelet and the Job controller would do, done by hand for the test API server.

The test cluster has no controller-manager and no kubelet: a Deployment never gets pods and
a Job never runs. `ContainerRun` runs one container of a rendered pod spec as a local
process instead, the way a node would: the image's entry point (`creditsync`) with the
container's `args`, the container's `command` when it has one (`python` is this
interpreter), and exactly the container's environment — literal values, `secretKeyRef`s
read from the API server, ConfigMap and projected volumes written to a local directory
that stands in for the mount path. `localize` rewrites addresses that only exist inside a
cluster (`0.0.0.0` listeners, Service DNS names) to loopback ones.

The Kubernetes API token goes only where the pod spec puts it. A projected volume's
`serviceAccountToken` is a bound token from the API server's TokenRequest API for the pod's
ServiceAccount, as the kubelet asks for it; unless the pod (or its ServiceAccount) turns
`automountServiceAccountToken` off, every container gets such a volume at
/var/run/secrets/kubernetes.io/serviceaccount, as the ServiceAccount admission plugin adds
it. A client in a pod finds the API server through that directory (token, ca.crt,
namespace) and `KUBERNETES_SERVICE_HOST`; a local process cannot have files at that path,
so a container that mounts it gets instead a `KUBECONFIG` naming the same server and the
local copies of exactly those files. A container without the mount gets no credentials.

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
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"  # in-cluster config
DEFAULT_TOKEN_SECONDS = 3600  # a projected serviceAccountToken's default expirationSeconds
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


def with_admitted_token(cluster: KubeCluster, namespace: str,
                        pod_spec: Mapping[str, Any]) -> dict[str, Any]:
    """`pod_spec` as the ServiceAccount admission plugin stores it: unless the pod or its
    ServiceAccount turns `automountServiceAccountToken` off, a `kube-api-access` projected
    token volume, mounted into every container that has nothing at SERVICE_ACCOUNT_DIR."""
    spec = dict(pod_spec)
    automount = spec.get("automountServiceAccountToken")
    if automount is None:
        account = get_json(cluster, "-n", namespace, "serviceaccount",
                           spec.get("serviceAccountName", "default"))
        automount = account.get("automountServiceAccountToken", True)
    if not automount:
        return spec
    spec["volumes"] = [*spec.get("volumes", []), {"name": "kube-api-access", "projected": {
        "sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
            {"configMap": {"name": "kube-root-ca.crt",
                           "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {
                "apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}}]
    mount = {"name": "kube-api-access", "mountPath": SERVICE_ACCOUNT_DIR, "readOnly": True}
    spec["containers"] = [
        c if any(m["mountPath"] == SERVICE_ACCOUNT_DIR for m in c.get("volumeMounts", []))
        else {**c, "volumeMounts": [*c.get("volumeMounts", []), mount]}
        for c in spec["containers"]]
    return spec


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
        pod_spec = with_admitted_token(cluster, namespace, pod_spec)
        self.spec = container(pod_spec, name)
        self.name = name
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.mounts = self._mount_volumes(cluster, namespace, pod_spec)
        self.argv = self._argv(localize or {})
        self.env = {
            "PATH": f"{BIN}:/usr/bin:/bin",
            "HOME": str(workdir),
            "LANG": "C.UTF-8",
            **self._in_cluster_config(cluster),
            **self._env(cluster, namespace, self.mounts),
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
        """ConfigMap, projected and emptyDir volumes written under `workdir`; returns mount
        path → local directory."""
        volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
        mounts: dict[str, Path] = {}
        for mount in self.spec.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            local = self.workdir / "volumes" / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            if "configMap" in volume:
                _write_config_map(cluster, namespace, volume["configMap"], local)
            elif "projected" in volume:
                for source in volume["projected"]["sources"]:
                    self._project(cluster, namespace, pod_spec, source, local)
            elif "emptyDir" not in volume:
                raise PodError(f"volume {mount['name']}: only configMap, projected and "
                               "emptyDir are run")
            mounts[mount["mountPath"]] = local
        return mounts

    def _project(self, cluster: KubeCluster, namespace: str, pod_spec: Mapping[str, Any],
                 source: Mapping[str, Any], local: Path) -> None:
        """One source of a projected volume, as the kubelet writes it."""
        if "serviceAccountToken" in source:
            wanted = source["serviceAccountToken"]
            args = ["-n", namespace, "create", "token",
                    pod_spec.get("serviceAccountName", "default"),
                    f"--duration={wanted.get('expirationSeconds', DEFAULT_TOKEN_SECONDS)}s"]
            if wanted.get("audience"):
                args.append(f"--audience={wanted['audience']}")
            done = kubectl(cluster, *args)  # the kubelet's TokenRequest
            if done.returncode != 0:
                raise PodError(f"no token for the pod's ServiceAccount: {done.stderr.strip()}")
            (local / wanted["path"]).write_text(done.stdout.strip())
        elif "configMap" in source:
            _write_config_map(cluster, namespace, source["configMap"], local)
        elif "downwardAPI" in source:
            for item in source["downwardAPI"]["items"]:
                field = item.get("fieldRef", {}).get("fieldPath")
                if field != "metadata.namespace":
                    raise PodError(f"downwardAPI {item['path']}: only metadata.namespace is run")
                (local / item["path"]).write_text(namespace)
        else:
            raise PodError(f"projected source {sorted(source)}: only serviceAccountToken, "
                           "configMap and downwardAPI are run")

    def _in_cluster_config(self, cluster: KubeCluster) -> dict[str, str]:
        """`KUBECONFIG` for a container that mounts SERVICE_ACCOUNT_DIR: what in-cluster
        configuration reads there, and the API server `KUBERNETES_SERVICE_HOST` names."""
        local = self.mounts.get(SERVICE_ACCOUNT_DIR)
        if local is None:
            return {}
        missing = [f for f in ("token", "ca.crt", "namespace") if not (local / f).is_file()]
        if missing:
            raise PodError(f"{SERVICE_ACCOUNT_DIR} lacks {', '.join(missing)}: in-cluster "
                           "configuration would fail")
        path = self.workdir / "in-cluster.kubeconfig"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "in-cluster",
            "clusters": [{"name": "in-cluster", "cluster": {
                "server": cluster.server, "certificate-authority": str(local / "ca.crt")}}],
            "users": [{"name": "in-cluster", "user": {"tokenFile": str(local / "token")}}],
            "contexts": [{"name": "in-cluster", "context": {
                "cluster": "in-cluster", "user": "in-cluster",
                "namespace": (local / "namespace").read_text()}}]}, indent=2))
        return {"KUBECONFIG": str(path)}

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


def _write_config_map(cluster: KubeCluster, namespace: str, ref: Mapping[str, Any],
                      local: Path) -> None:
    """A configMap volume or projected source: its `items`, or every key."""
    done = kubectl(cluster, "-n", namespace, "get", "configmap", ref["name"], "-o", "json")
    if done.returncode != 0:
        if ref.get("optional"):
            return
        raise PodError(f"configmap {ref['name']}: {done.stderr.strip()} (the pod would not "
                       "start: its volume cannot be mounted)")
    data: dict[str, str] = json.loads(done.stdout).get("data", {})
    items = ref.get("items") or [{"key": key, "path": key} for key in data]
    for item in items:
        if item["key"] not in data:
            raise PodError(f"configmap {ref['name']} has no key {item['key']}")
        (local / item["path"]).write_text(data[item["key"]])


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
