"""Real etcd servers for tests: one member or a cluster, on 127.0.0.1, optionally over TLS.

Each cluster gets free ports, its own directory (data, logs, certificates) and a unique
cluster token; members are started as child processes and stopped by the PID this module
started, never by name.  etcd is Debian's ``etcd-server`` (/usr/bin/etcd, 3.4).

The members run with revision auto-compaction, as docs/operations.md tells operators to,
so the tests see etcd configured the way it is run.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ETCD = "/usr/bin/etcd"
HOST = "127.0.0.1"
START_TIMEOUT = 30.0  # seconds for a member to report healthy
AUTO_COMPACTION_RETENTION = 10000  # revisions


def free_port() -> int:
    """A port nobody listens on now (the kernel's choice; etcd binds it moments later)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class TlsFiles:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""

    cacert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _write_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return key


def make_tls(directory: Path) -> TlsFiles:
    """A fresh CA and the certificates it signs, valid for a day."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = _write_key(directory / "ca.key")
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ovs-overlay test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
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
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def issue(name: str, *usage: x509.ObjectIdentifier) -> None:
        key = _write_key(directory / f"{name}.key")
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage(list(usage)), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        (directory / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    # etcd 3.4's JSON gateway dials etcd's own gRPC server with the server certificate as
    # its client certificate, so with --client-cert-auth the server certificate must allow
    # client authentication too ("certificate specifies an incompatible key usage").
    issue("server", ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
    issue("client", ExtendedKeyUsageOID.CLIENT_AUTH)
    return TlsFiles(
        directory / "ca.crt",
        directory / "server.crt",
        directory / "server.key",
        directory / "client.crt",
        directory / "client.key",
    )


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    proc: subprocess.Popen | None = None


class EtcdCluster:
    """``size`` etcd members on 127.0.0.1, started on construction; ``stop()`` kills every
    member this object started and removes its directory."""

    def __init__(self, size: int = 1, *, tls: bool = False):
        if not Path(ETCD).is_file():
            raise RuntimeError(
                f"{ETCD} is missing; install Debian's etcd-server (quickstart.sh does)"
            )
        self.dir = Path(tempfile.mkdtemp(prefix="ovo-etcd-"))
        self.tls = make_tls(self.dir / "tls") if tls else None
        self.token = self.dir.name
        self.members = [Member(f"m{i}", free_port(), free_port()) for i in range(size)]
        try:
            for i in range(size):
                self._launch(i)
            for i in range(size):
                self.wait_healthy(i)
        except BaseException:
            self.stop()
            raise

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def client_url(self, i: int) -> str:
        return f"{self.scheme}://{HOST}:{self.members[i].client_port}"

    @property
    def endpoints(self) -> str:
        return ",".join(f"{HOST}:{m.client_port}" for m in self.members)

    def url(self, *, client_cert: bool = True, timeout: float | None = None) -> str:
        """The store URL (store.open_kv) for every member."""
        options = []
        if self.tls:
            options.append(f"cacert={self.tls.cacert}")
            if client_cert:
                options += [f"cert={self.tls.client_cert}", f"key={self.tls.client_key}"]
        if timeout is not None:
            options.append(f"timeout={timeout}")
        return f"etcd://{self.endpoints}" + ("?" + "&".join(options) if options else "")

    def _launch(self, i: int) -> None:
        m = self.members[i]
        peers = ",".join(f"{p.name}=http://{HOST}:{p.peer_port}" for p in self.members)
        args = [
            ETCD,
            f"--name={m.name}",
            f"--data-dir={self.dir / m.name}",
            f"--listen-client-urls={self.client_url(i)}",
            f"--advertise-client-urls={self.client_url(i)}",
            f"--listen-peer-urls=http://{HOST}:{m.peer_port}",
            f"--initial-advertise-peer-urls=http://{HOST}:{m.peer_port}",
            f"--initial-cluster={peers}",
            f"--initial-cluster-token={self.token}",
            "--initial-cluster-state=new",
            "--auto-compaction-mode=revision",
            f"--auto-compaction-retention={AUTO_COMPACTION_RETENTION}",
        ]
        if self.tls:
            args += [
                f"--cert-file={self.tls.server_cert}",
                f"--key-file={self.tls.server_key}",
                f"--trusted-ca-file={self.tls.cacert}",
                "--client-cert-auth",
            ]
        log = open(self.dir / f"{m.name}.log", "ab")  # noqa: SIM115 (the child keeps it)
        try:
            m.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        finally:
            log.close()

    def wait_healthy(self, i: int) -> None:
        """Until member ``i`` answers /health with a leader (startup is not under test)."""
        m = self.members[i]
        kwargs = {}
        if self.tls:
            kwargs = {
                "verify": str(self.tls.cacert),
                "cert": (str(self.tls.client_cert), str(self.tls.client_key)),
            }
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if m.proc is None or m.proc.poll() is not None:
                raise RuntimeError(f"etcd {m.name} exited; see {self.dir / m.name}.log")
            with contextlib.suppress(requests.RequestException, ValueError):
                r = requests.get(self.client_url(i) + "/health", timeout=1, **kwargs)
                if r.json().get("health") == "true":
                    return
            time.sleep(0.05)
        raise RuntimeError(f"etcd {m.name} not healthy in {START_TIMEOUT}s; see its log")

    def kill(self, i: int) -> None:
        """SIGKILL member ``i`` (the process this object started) and reap it."""
        proc = self.members[i].proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self.members[i].proc = None

    def restart(self, i: int) -> None:
        """Start member ``i`` again on its data directory and wait until it is healthy."""
        self.kill(i)
        self._launch(i)
        self.wait_healthy(i)

    def stop(self) -> None:
        for i in range(len(self.members)):
            self.kill(i)
        shutil.rmtree(self.dir, ignore_errors=True)
