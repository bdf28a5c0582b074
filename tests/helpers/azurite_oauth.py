"""Azurite over HTTPS with OAuth (``--oauth basic``): it then accepts ``Authorization: Bearer``
tokens whose claims look like Entra ID's for Storage (issuer https://sts.windows.net/…, audience
https://storage.azure.com, current), besides the account key. Bearer tokens need HTTPS, so it
serves a certificate of a test CA (tests/helpers/tls_certs.py). Its own process, stopped after."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from tests.helpers.localcloud import ensure
from tests.helpers.net import free_port
from tests.helpers.tls_certs import Authority

AZURITE_VERSION = "3.35.0"  # the local cloud's (scripts/localcloud), which installs it
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class HttpsAzurite:
    def __init__(self, directory: Path, authority: Authority) -> None:
        self.directory = directory
        self.authority = authority
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def account_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=https;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
                f"BlobEndpoint={self.account_url};")

    def start(self) -> HttpsAzurite:
        ensure("azure", "AZURE_STORAGE_CONNECTION_STRING")  # installs Azurite if need be
        exe = (Path.home() / ".cache" / "flowstore" / "azurite" / AZURITE_VERSION / "node_modules" / ".bin"
               / "azurite-blob")
        pem = self.authority.issue("127.0.0.1", server=True)
        (self.directory / "cert.pem").write_text(pem.cert)
        (self.directory / "key.pem").write_text(pem.key)
        self.port = free_port()
        log = open(self.directory / "azurite.log", "wb")
        self.proc = subprocess.Popen(
            [str(exe), "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--inMemoryPersistence", "--loose",
             "--skipApiVersionCheck", "--disableTelemetry", "--silent", "--oauth", "basic",
             "--cert", str(self.directory / "cert.pem"), "--key", str(self.directory / "key.pem")],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.directory)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                assert self.proc.poll() is None and time.monotonic() < deadline, \
                    (self.directory / "azurite.log").read_text()
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
