"""Throwaway X.509 material for TLS tests: a CA, a server certificate for 127.0.0.1 and a client
certificate signed by it, all PEM text (cryptography)."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import ssl
from collections.abc import Mapping
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.helpers.tcp_proxy import TcpProxy


@dataclasses.dataclass(frozen=True)
class Pem:
    cert: str
    key: str


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
          *, ca: bool = False, server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer or (name, key)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        loopback = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
        builder = builder.add_extension(x509.SubjectAlternativeName([loopback]), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclasses.dataclass(frozen=True)
class Authority:
    """A CA that issues server and client certificates."""

    name: x509.Name
    key: ec.EllipticCurvePrivateKey
    cert_pem: str

    @classmethod
    def create(cls, common_name: str = "flowstore test CA") -> Authority:
        key = _key()
        cert = _cert(common_name, key, None, ca=True)
        return cls(cert.subject, key, cert.public_bytes(serialization.Encoding.PEM).decode())

    def issue(self, common_name: str, *, server: bool = False) -> Pem:
        key = _key()
        cert = _cert(common_name, key, (self.name, self.key), server=server)
        return Pem(cert.public_bytes(serialization.Encoding.PEM).decode(), _pem_key(key))


def tls_daemon(docker_env: Mapping[str, str], authority: Authority, tmp_path: Path) -> TcpProxy:
    """The daemon behind TLS that requires a client certificate from `authority` (dockerd --tlsverify)."""
    server = authority.issue("docker daemon", server=True)
    (tmp_path / "server.pem").write_text(server.cert + server.key)
    (tmp_path / "ca.pem").write_text(authority.cert_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tmp_path / "ca.pem"))
    context.load_cert_chain(str(tmp_path / "server.pem"))
    context.verify_mode = ssl.CERT_REQUIRED
    host, port = docker_env["docker_host"].removeprefix("tcp://").rsplit(":", 1)
    return TcpProxy(host, int(port), tls=context).start()
