"""A real, throwaway Kubernetes control plane (etcd + kube-apiserver v1.20) for tests.

``KubeCluster`` starts Debian's ``etcd`` and a kube-apiserver on 127.0.0.1, on free ports,
in a temporary directory holding its own CA, serving certificate, service-account signing
key, static token file, kubeconfig files and the logs of both processes. There is no
controller-manager, scheduler or kubelet: objects are stored and served, nothing runs.

Authentication is by static bearer tokens: ``admin`` (group ``system:masters``) plus any
added with ``add_token`` / ``add_service_account`` before ``start``. Authorization is RBAC.

Binaries: kube-apiserver from ``$CREDITSYNC_KUBE_APISERVER`` or the output of
``.ci/kube/build-apiserver.sh`` (which builds and caches it); kubectl and helm from the
directory ``$CREDITSYNC_KUBE_TOOLS`` or the output of ``.ci/kube/tools.sh``; etcd from PATH.

Extra tokens must be added before the cluster starts::

    cluster = KubeCluster()
    sa = cluster.add_service_account("creditsync", "operator")  # "sa-creditsync-operator"
    with cluster:
        kubectl(cluster, "get", "ns", check=True)  # as admin
        kubectl(cluster, "auth", "can-i", "list", "pods", kubeconfig=cluster.kubeconfig(sa))
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import http.client
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self, TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICE_CIDR = "10.0.0.0/24"
ISSUER = "https://kubernetes.default.svc"
LOG_TAIL_LINES = 40

_Check: TypeAlias = Callable[[], tuple[bool, str]]


class KubeClusterError(RuntimeError):
    """The cluster could not be started, or was used wrongly."""


@dataclass(frozen=True)
class Identity:
    """A static-token identity (its kubeconfig is ``KubeCluster.kubeconfig(name)``)."""

    name: str
    token: str
    user: str
    groups: tuple[str, ...]


def _run_script(script: str) -> str:
    """Run a ``.ci/kube`` script and return the path it prints (its last stdout line)."""
    path = REPO_ROOT / ".ci" / "kube" / script
    proc = subprocess.run(["bash", str(path)], capture_output=True, text=True, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise KubeClusterError(f"{path} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return lines[-1]


def find_apiserver() -> Path:
    """Path of kube-apiserver: ``$CREDITSYNC_KUBE_APISERVER`` or build-apiserver.sh's output."""
    path = Path(os.environ.get("CREDITSYNC_KUBE_APISERVER") or _run_script("build-apiserver.sh"))
    if not os.access(path, os.X_OK):
        raise KubeClusterError(f"kube-apiserver {path} is not executable")
    return path


def find_tools() -> Path:
    """Directory with kubectl and helm: ``$CREDITSYNC_KUBE_TOOLS`` or tools.sh's output."""
    path = Path(os.environ.get("CREDITSYNC_KUBE_TOOLS") or _run_script("tools.sh"))
    for tool in ("kubectl", "helm"):
        if not os.access(path / tool, os.X_OK):
            raise KubeClusterError(f"no executable {tool} in {path}")
    return path


def find_etcd() -> Path:
    """Path of Debian's etcd (package etcd-server)."""
    found = shutil.which("etcd") or shutil.which("etcd", path="/usr/bin")
    if found is None:
        raise KubeClusterError(
            "etcd not found: run .ci/kube/build-apiserver.sh (installs etcd-server) "
            "or apt-get install etcd-server"
        )
    return Path(found)


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 right now."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def _ensure_port_free(port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise KubeClusterError(
                f"refusing to start {what}: port 127.0.0.1:{port} is already in use ({exc}); "
                "is a previous cluster still running? Stop it or choose another port"
            ) from exc


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies, so no server outlives it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_pki(directory: Path) -> None:
    """CA, apiserver serving cert/key and the service-account signing key in ``directory``."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "creditsync-test-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    service_ip = ipaddress.IPv4Network(SERVICE_CIDR)[1]
    names: list[x509.GeneralName] = [
        x509.DNSName(n)
        for n in (
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        )
    ]
    names += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(service_ip)]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (directory / "ca.crt").write_bytes(_pem_cert(ca_cert))
    (directory / "apiserver.crt").write_bytes(_pem_cert(cert))
    (directory / "apiserver.key").write_bytes(_pem_key(key))
    (directory / "sa.key").write_bytes(_pem_key(sa_key))


class KubeCluster:
    """etcd + kube-apiserver on loopback; use as a context manager (or start()/stop())."""

    def __init__(
        self,
        *,
        apiserver_port: int | None = None,
        etcd_port: int | None = None,
        ready_timeout: float = 90.0,
        extra_apiserver_args: Sequence[str] = (),
    ) -> None:
        self.ready_timeout = ready_timeout
        self.extra_apiserver_args = tuple(extra_apiserver_args)
        self._want_ports = (apiserver_port, etcd_port)
        self._identities: dict[str, Identity] = {}
        self._tools: Path | None = None
        self._workdir: Path | None = None
        self._procs: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []
        self._port = 0
        self.add_token("admin", "admin", ["system:masters"])

    # ---- identities --------------------------------------------------------------------

    def add_token(self, name: str, user: str, groups: Sequence[str] = ()) -> str:
        """Register a bearer token for ``user`` in ``groups``; returns the token.

        Must be called before start(). ``name`` names the kubeconfig (``kubeconfig(name)``).
        """
        if self._workdir is not None:
            raise KubeClusterError("add tokens before the cluster starts")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or name in self._identities:
            raise KubeClusterError(f"bad or duplicate identity name {name!r}")
        if any("," in g or '"' in g for g in (user, *groups)):
            raise KubeClusterError("user and group names may not contain ',' or '\"'")
        token = secrets.token_hex(24)
        self._identities[name] = Identity(name, token, user, tuple(groups))
        return token

    def add_service_account(self, namespace: str, name: str) -> str:
        """Register a token for ServiceAccount ``namespace/name``; returns its identity name.

        The identity is named ``sa-<namespace>-<name>`` (for ``kubeconfig``/``token``).
        The ServiceAccount object itself is not created (RBAC matches on the user name).
        """
        key = f"sa-{namespace}-{name}"
        groups = [
            "system:serviceaccounts",
            f"system:serviceaccounts:{namespace}",
            "system:authenticated",
        ]
        self.add_token(key, f"system:serviceaccount:{namespace}:{name}", groups)
        return key

    def token(self, name: str) -> str:
        """The bearer token of identity ``name``."""
        return self._identities[name].token

    # ---- properties --------------------------------------------------------------------

    @property
    def workdir(self) -> Path:
        """The temporary directory (certs, tokens, kubeconfigs, logs); removed on stop."""
        if self._workdir is None:
            raise KubeClusterError("the cluster is not running")
        return self._workdir

    @property
    def server(self) -> str:
        """The API server URL, e.g. ``https://127.0.0.1:34567``."""
        self.workdir  # noqa: B018 - raises when not running
        return f"https://127.0.0.1:{self._port}"

    @property
    def ca_path(self) -> Path:
        """PEM file of the CA that signed the API server's certificate."""
        return self.workdir / "ca.crt"

    @property
    def admin_token(self) -> str:
        """Bearer token of ``admin`` (group ``system:masters``)."""
        return self.token("admin")

    @property
    def admin_kubeconfig(self) -> Path:
        """Kubeconfig file of the admin identity."""
        return self.kubeconfig("admin")

    def kubeconfig(self, name: str = "admin") -> Path:
        """Kubeconfig file of identity ``name`` (``admin`` or one added before start)."""
        if name not in self._identities:
            raise KubeClusterError(f"unknown identity {name!r}")
        return self.workdir / f"kubeconfig-{name}"

    @property
    def kubeconfigs(self) -> dict[str, Path]:
        """Kubeconfig file of every identity, by name."""
        return {name: self.kubeconfig(name) for name in self._identities}

    @property
    def tools_dir(self) -> Path:
        """Directory holding kubectl and helm."""
        if self._tools is None:
            self._tools = find_tools()
        return self._tools

    def logs(self) -> str:
        """The last lines of the etcd and kube-apiserver logs."""
        parts = []
        for name in ("etcd", "kube-apiserver"):
            tail = _tail(self.workdir / f"{name}.log")
            parts.append(f"--- {name}.log (last {LOG_TAIL_LINES} lines) ---\n{tail}")
        return "\n".join(parts)

    # ---- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start etcd and kube-apiserver and wait until the API server is ready."""
        if self._workdir is not None:
            raise KubeClusterError("the cluster is already running")
        apiserver, etcd = find_apiserver(), find_etcd()
        self._workdir = Path(tempfile.mkdtemp(prefix="creditsync-kube-"))
        try:
            self._start(apiserver, etcd)
        except BaseException:
            self.stop()
            raise

    def _start(self, apiserver: Path, etcd: Path) -> None:
        work = self.workdir
        want_api, want_etcd = self._want_ports
        free = iter(_free_ports(3))
        self._port = want_api or next(free)
        etcd_port, peer_port = want_etcd or next(free), next(free)

        etcd_url, peer_url = f"http://127.0.0.1:{etcd_port}", f"http://127.0.0.1:{peer_port}"
        _ensure_port_free(etcd_port, "etcd")
        _ensure_port_free(peer_port, "etcd")
        self._spawn(
            "etcd",
            [
                str(etcd),
                "--name=default",
                f"--data-dir={work / 'etcd-data'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                "--logger=zap",
                "--log-outputs=stderr",
            ],
        )
        self._wait("etcd", 30.0, lambda: self._etcd_healthy(etcd_port))

        _write_pki(work)
        lines = [
            f'{i.token},{i.user},{i.user},"{",".join(i.groups)}"' for i in self._identities.values()
        ]
        (work / "tokens.csv").write_text("\n".join(lines) + "\n")
        _ensure_port_free(self._port, "kube-apiserver")
        self._spawn(
            "kube-apiserver",
            [
                str(apiserver),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",  # else the host's IP lands in the endpoints
                f"--secure-port={self._port}",
                f"--tls-cert-file={work / 'apiserver.crt'}",
                f"--tls-private-key-file={work / 'apiserver.key'}",
                f"--token-auth-file={work / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={ISSUER}",
                f"--service-account-key-file={work / 'sa.key'}",
                f"--service-account-signing-key-file={work / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                *self.extra_apiserver_args,
            ],
        )
        self._wait("kube-apiserver /readyz", self.ready_timeout, self._ready)
        for ident in self._identities.values():
            self._write_kubeconfig(ident)

    def stop(self) -> None:
        """Stop both processes (apiserver first) and remove the temporary directory."""
        for _name, proc, log in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            log.close()
        self._procs.clear()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    # ---- helpers -----------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
        log = (self.workdir / f"{name}.log").open("wb")
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                preexec_fn=_die_with_parent,
            )
        except BaseException:
            log.close()
            raise
        self._procs.append((name, proc, log))

    def _wait(self, what: str, timeout: float, check: _Check) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            for name, proc, _log in self._procs:
                if proc.poll() is not None:
                    raise KubeClusterError(
                        f"{name} exited with code {proc.returncode} while waiting for {what}\n"
                        + self.logs()
                    )
            ok, last = check()
            if ok:
                return
            if time.monotonic() > deadline:
                raise KubeClusterError(
                    f"{what} not ready after {timeout:.0f}s (last answer: {last[:500]})\n"
                    + self.logs()
                )
            time.sleep(0.2)

    def _etcd_healthy(self, port: int) -> tuple[bool, str]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/health")
            body = conn.getresponse().read().decode(errors="replace")
        except OSError as exc:
            return False, str(exc)
        finally:
            conn.close()
        try:
            return json.loads(body).get("health") == "true", body
        except ValueError:
            return False, body

    def _get(self, path: str) -> tuple[int, str]:
        ctx = ssl.create_default_context(cafile=str(self.ca_path))
        conn = http.client.HTTPSConnection("127.0.0.1", self._port, timeout=5, context=ctx)
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {self.admin_token}"})
            resp = conn.getresponse()
            return resp.status, resp.read().decode(errors="replace")
        finally:
            conn.close()

    def _ready(self) -> tuple[bool, str]:
        try:
            status, body = self._get("/readyz")
            if status != 200 or body.strip() != "ok":
                return False, f"/readyz {status}: {body}"
            # The "default" namespace is created by a bootstrap loop shortly after readiness.
            status, body = self._get("/api/v1/namespaces/default")
            return status == 200, f"namespace default {status}: {body}"
        except (OSError, http.client.HTTPException) as exc:
            return False, str(exc)

    def _write_kubeconfig(self, ident: Identity) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "creditsync-test",
                    "cluster": {"server": self.server, "certificate-authority": str(self.ca_path)},
                }
            ],
            "users": [{"name": ident.name, "user": {"token": ident.token}}],
            "contexts": [
                {
                    "name": ident.name,
                    "context": {
                        "cluster": "creditsync-test",
                        "user": ident.name,
                        "namespace": "default",
                    },
                }
            ],
            "current-context": ident.name,
        }
        path = self.kubeconfig(ident.name)
        path.write_text(json.dumps(config, indent=2) + "\n")
        path.chmod(0o600)


def _tool_env(cluster: KubeCluster) -> dict[str, str]:
    home = cluster.workdir / "tool-home"
    env = dict(os.environ)
    env.update(
        {
            "HOME": str(home),
            "HELM_CACHE_HOME": str(home / "helm-cache"),
            "HELM_CONFIG_HOME": str(home / "helm-config"),
            "HELM_DATA_HOME": str(home / "helm-data"),
        }
    )
    env.pop("KUBECONFIG", None)
    return env


def kubectl(
    cluster: KubeCluster,
    *args: str,
    kubeconfig: Path | None = None,
    input: str | None = None,
    check: bool = False,
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Run kubectl against ``cluster`` (admin kubeconfig unless ``kubeconfig`` is given)."""
    argv = [
        str(cluster.tools_dir / "kubectl"),
        f"--kubeconfig={kubeconfig or cluster.admin_kubeconfig}",
        *args,
    ]
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        input=input,
        check=check,
        timeout=timeout,
        env=_tool_env(cluster),
    )


def helm(
    cluster: KubeCluster,
    *args: str,
    kubeconfig: Path | None = None,
    check: bool = False,
    timeout: float = 300.0,
) -> subprocess.CompletedProcess[str]:
    """Run helm against ``cluster`` with its own HOME/cache dirs inside the cluster's workdir."""
    argv = [
        str(cluster.tools_dir / "helm"),
        f"--kubeconfig={kubeconfig or cluster.admin_kubeconfig}",
        *args,
    ]
    return subprocess.run(
        argv, capture_output=True, text=True, check=check, timeout=timeout, env=_tool_env(cluster)
    )
