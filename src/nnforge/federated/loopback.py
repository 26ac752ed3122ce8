"""A real Flower deployment on one machine: a SuperLink and N SuperNodes as separate processes on 127.0.0.1, with
TLS (a throwaway CA made here) and SuperNode authentication (one P-384 key per node, registered with the
SuperLink before the node starts). What the tests start, and the quickest way to try ``--superlink``::

    with LoopbackFederation(nodes=3) as fed:
        federate_(model, data, FederatedConfig(clients=3, deployment=fed.deployment), spec=spec)
        fed.kill(2)  # SIGKILL one SuperNode: the next round goes on with the other two

Each process gets its own FLWR_HOME and log file in ``folder`` (kept when given, else a temporary one removed on
exit). Processes are stopped on exit (SIGTERM, then SIGKILL), started in their own process group so that the
ClientApp and ServerApp processes they spawn go with them.

A SuperNode that dies without a goodbye is noticed when its heartbeats stop: Flower 1.42's SuperNodes announce a
30 s interval and the SuperLink declares a node offline after two missed ones, so a killed node holds up its round
for 40-60 s. ``heartbeat_interval_s`` (Flower's bounds: 10 to 1800) makes the SuperNodes announce and keep a
shorter one; Flower has no option for it, so the SuperNodes then start through a small launcher that sets Flower's
``HEARTBEAT_DEFAULT_INTERVAL`` in their process before Flower's own ``flower-supernode`` entry point runs (and
refuses to start if this Flower has no such constant to set).
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from nnforge.federated._config import DeploymentConfig
from nnforge.federated._records import FederatedError
from nnforge.federated.deployment import flower_env, flwr, flwr_command, write_connection

__all__ = ["LoopbackFederation", "make_certificates"]

# ``python -c`` this, the interval, then flower-supernode's arguments: Flower's SuperNode with another heartbeat
# interval (the one it announces to the SuperLink when it activates and with every heartbeat, and the one its
# sender paces itself by). Flower 1.42 reads both from HEARTBEAT_DEFAULT_INTERVAL, imported into these modules.
_SUPERNODE_LAUNCHER = """\
import sys

import flwr.supercore.heartbeat as sender
import flwr.supernode.fleet_http_connection as connection

interval = float(sys.argv.pop(1))
for module in (sender, connection):
    if not hasattr(module, "HEARTBEAT_DEFAULT_INTERVAL"):
        sys.exit(f"nnforge loopback: {module.__name__} has no HEARTBEAT_DEFAULT_INTERVAL in this Flower version; "
                 "start LoopbackFederation without heartbeat_interval_s")
    module.HEARTBEAT_DEFAULT_INTERVAL = interval
from flwr.supernode.cli import flower_supernode

sys.argv[0] = "flower-supernode"
sys.exit(flower_supernode())
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_certificates(folder: Path, nodes: int) -> dict[str, Any]:
    """A CA, the SuperLink's certificate for 127.0.0.1/localhost signed by it, and ``nodes`` SuperNode key pairs
    (EC P-384 in OpenSSH format, as Flower's SuperNode authentication reads them)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    pem = serialization.Encoding.PEM

    def cert(subject: str, key: Any, issuer: Any, issuer_key: Any, ca: bool) -> Any:
        b = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
             .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            b = b.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                              content_commitment=False, key_encipherment=False,
                                              data_encipherment=False, key_agreement=False, encipher_only=False,
                                              decipher_only=False), critical=True)
        else:
            b = (b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                              x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                 critical=False)
                 .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
        return b.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nnforge loopback CA")])
    ca = cert("nnforge loopback CA", ca_key, ca_name, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP384R1())
    server = cert("localhost", server_key, ca_name, ca_key, ca=False)
    paths: dict[str, Any] = {"ca": folder / "ca.crt", "cert": folder / "server.pem", "key": folder / "server.key",
                             "nodes": []}
    paths["ca"].write_bytes(ca.public_bytes(pem))
    paths["cert"].write_bytes(server.public_bytes(pem))
    paths["key"].write_bytes(server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    paths["key"].chmod(0o600)
    for i in range(nodes):
        k = ec.generate_private_key(ec.SECP384R1())
        private, public = folder / f"node{i}_key", folder / f"node{i}_key.pub"
        private.write_bytes(k.private_bytes(pem, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
        private.chmod(0o600)
        public.write_bytes(k.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                       serialization.PublicFormat.OpenSSH) + b"\n")
        paths["nodes"].append((private, public))
    return paths


class LoopbackFederation:
    """A SuperLink and ``nodes`` SuperNodes on 127.0.0.1 (see the module's docstring). SuperNode ``i`` holds
    partition ``i``; ``deployment`` is the :class:`~nnforge.federated.DeploymentConfig` that reaches them.
    ``heartbeat_interval_s``: the SuperNodes' heartbeat interval (None: Flower's, 30 s; see the module's
    docstring)."""

    def __init__(self, nodes: int = 3, folder: str | Path | None = None, startup_timeout_s: float = 180.0,
                 heartbeat_interval_s: float | None = None) -> None:
        if nodes < 1:
            raise ValueError("LoopbackFederation needs at least one SuperNode")
        if heartbeat_interval_s is not None:
            from nnforge.federated._flower import require

            constant = require("flwr.common.constant")
            low, high = constant.HEARTBEAT_MIN_INTERVAL, constant.HEARTBEAT_MAX_INTERVAL
            if not low <= heartbeat_interval_s <= high:
                raise ValueError(f"heartbeat_interval_s {heartbeat_interval_s:g} is outside Flower's bounds "
                                 f"[{low:g}, {high:g}] (the SuperLink refuses a SuperNode announcing it)")
        self.heartbeat_interval_s = heartbeat_interval_s
        self.nodes = nodes
        self._tmp = None if folder is not None else tempfile.TemporaryDirectory(prefix="nnforge-loopback-")
        self.folder = Path(folder) if folder is not None else Path(self._tmp.name)  # type: ignore[union-attr]
        self.startup_timeout_s = startup_timeout_s
        self.port = 0
        self.superlink: subprocess.Popen[bytes] | None = None
        self.supernodes: list[subprocess.Popen[bytes] | None] = []
        self._certs: dict[str, Any] = {}

    @property
    def deployment(self) -> DeploymentConfig:
        return DeploymentConfig(superlink=f"127.0.0.1:{self.port}", root_certificates=str(self._certs["ca"]),
                                out_dir=str(self.folder / "out"))

    @property
    def cli_home(self) -> Path:
        return self.folder / "home" / "cli"

    def __enter__(self) -> LoopbackFederation:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        home = self.folder / "home" / name
        home.mkdir(parents=True, exist_ok=True)
        log = (self.folder / f"{name}.log").open("ab")
        return subprocess.Popen(args, env=flower_env(home), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.folder)

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._certs = make_certificates(self.folder / "certs", self.nodes)
        self.port = _free_port()
        c = self._certs
        self.superlink = self._spawn("superlink", [
            flwr_command("flower-superlink"), "--host", "127.0.0.1", "--port", str(self.port),
            "--ssl-ca-certfile", str(c["ca"]), "--ssl-certfile", str(c["cert"]), "--ssl-keyfile", str(c["key"]),
            "--enable-supernode-auth", "--disable-runtime-dependency-installation", "--isolation", "subprocess",
            "--database", str(self.folder / "state.db")])
        deadline = time.monotonic() + self.startup_timeout_s
        self._wait(deadline, self._healthy, "the SuperLink to answer /health")
        write_connection(self.cli_home, "nnforge", self.deployment)
        for i, (_, public) in enumerate(c["nodes"]):
            flwr(self.cli_home, "supernode", "register", str(public), "nnforge", "--name", f"node{i}")
        for i in range(self.nodes):
            self.supernodes.append(self._start_node(i))
        self._wait(deadline, lambda: self.online() >= self.nodes, f"{self.nodes} SuperNodes to come online")

    def _start_node(self, i: int) -> subprocess.Popen[bytes]:
        private, _ = self._certs["nodes"][i]
        return self._spawn(f"supernode{i}", self.supernode_command(private, i))

    def supernode_command(self, private_key: str | Path, partition: int, *, default_heartbeat: bool = False
                          ) -> list[str]:
        """The command line of a SuperNode holding ``partition`` that authenticates with ``private_key``: with this
        federation's ``heartbeat_interval_s``, or with ``default_heartbeat`` Flower's ``flower-supernode`` as
        installed (its own interval)."""
        program = [flwr_command("flower-supernode")]
        if self.heartbeat_interval_s is not None and not default_heartbeat:
            program = [sys.executable, "-c", _SUPERNODE_LAUNCHER, repr(float(self.heartbeat_interval_s))]
        return [*program, "--superlink", f"127.0.0.1:{self.port}",
                "--root-certificates", str(self._certs["ca"]), "--auth-supernode-private-key", str(private_key),
                "--node-config", f"partition-id={partition} num-partitions={self.nodes}", "--host", "127.0.0.1",
                "--port", str(_free_port()), "--isolation", "subprocess"]

    def _wait(self, deadline: float, ready: Any, what: str) -> None:
        while not ready():
            if self.superlink is not None and self.superlink.poll() is not None:
                raise FederatedError(f"the SuperLink exited ({self.superlink.returncode}) while waiting for {what}; "
                                     f"its log: {self.log('superlink')[-1500:]}")
            if time.monotonic() > deadline:
                raise FederatedError(f"timed out after {self.startup_timeout_s:g} s waiting for {what}; logs in "
                                     f"{self.folder}")
            time.sleep(0.5)

    def _healthy(self) -> bool:
        ctx = ssl.create_default_context(cafile=str(self._certs["ca"]))
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{self.port}/health", context=ctx, timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def online(self) -> int:
        """How many registered SuperNodes the SuperLink sees online now."""
        proc = flwr(self.cli_home, "supernode", "list", "nnforge", "--format", "json", check=False)
        try:
            return sum(n.get("status") == "online" for n in json.loads(proc.stdout)["nodes"])
        except (ValueError, KeyError, TypeError):
            return 0

    def log(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self, node: int, sig: int = signal.SIGKILL) -> None:
        """Stop SuperNode ``node`` the hard way (``SIGKILL``: no goodbye to the SuperLink, as a crash or a power cut)
        and the ClientApp it was running."""
        proc = self.supernodes[node]
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=30)

    def stop(self) -> None:
        procs = [p for p in (*self.supernodes, self.superlink) if p is not None]
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        end = time.monotonic() + 10
        for p in procs:
            try:
                p.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=10)
        for p in procs:  # what they spawned (flower-superexec, flwr-clientapp) shares their process group
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.superlink, self.supernodes = None, []
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
