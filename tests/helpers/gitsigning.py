"""Keys that sign git commits and tags in tests, as developers sign them: an SSH key
(``gpg.format=ssh``) or an OpenPGP key in a GNUPGHOME of its own. Each knows what a verify
Secret holds for it (an ``allowed_signers`` line, an armored public key) and the git settings
that make ``git commit-tree -S`` / ``git tag -s`` sign with it."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class SSHSigner:
    """An ed25519 SSH key (``ssh-keygen -t ed25519``) for `principal`."""

    key_file: Path
    principal: str

    @classmethod
    def create(cls, directory: Path, principal: str) -> SSHSigner:
        directory.mkdir(parents=True, exist_ok=True)
        key = directory / f"ssh-{principal.split('@')[0]}"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", principal, "-f", str(key)], check=True)
        return cls(key, principal)

    @property
    def public_key(self) -> str:
        return Path(f"{self.key_file}.pub").read_text().strip()

    @property
    def fingerprint(self) -> str:
        out = subprocess.run(["ssh-keygen", "-l", "-f", f"{self.key_file}.pub"], capture_output=True, text=True,
                             check=True).stdout
        return out.split()[1]  # SHA256:…

    def allowed_signers(self) -> str:
        """This key's line of git's allowed-signers file."""
        return f'{self.principal} namespaces="git" {self.public_key}\n'

    def git_config(self) -> dict[str, str]:
        return {"gpg.format": "ssh", "user.signingkey": str(self.key_file)}

    def env(self) -> dict[str, str]:
        return {}


@dataclasses.dataclass(frozen=True)
class GPGSigner:
    """An ed25519 OpenPGP key for ``Name <email>``, in a private GNUPGHOME."""

    home: Path
    fingerprint: str
    uid: str

    @classmethod
    def create(cls, directory: Path, name: str, email: str) -> GPGSigner:
        home = directory / f"gnupg-{email.split('@')[0]}"
        home.mkdir(parents=True, mode=0o700, exist_ok=True)
        env = {**os.environ, "GNUPGHOME": str(home)}
        uid = f"{name} <{email}>"
        subprocess.run(["gpg", "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", "",
                        "--quick-gen-key", uid, "ed25519", "sign", "never"], env=env, check=True, capture_output=True)
        out = subprocess.run(["gpg", "--batch", "--list-keys", "--with-colons", email], env=env, capture_output=True,
                             text=True, check=True).stdout
        fingerprint = next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))
        return cls(home, fingerprint, uid)

    def armored(self) -> str:
        """The public key as ``gpg --armor --export`` writes it (what a ``*.asc`` key holds)."""
        return subprocess.run(["gpg", "--batch", "--armor", "--export", self.fingerprint],
                              env={**os.environ, "GNUPGHOME": str(self.home)}, capture_output=True, text=True,
                              check=True).stdout

    def git_config(self) -> dict[str, str]:
        return {"gpg.format": "openpgp", "user.signingkey": self.fingerprint}

    def stop_agent(self) -> None:
        """Stop the gpg-agent signing started for this GNUPGHOME (it would outlive the test)."""
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "gpg-agent"], capture_output=True,
                       check=False)

    def env(self) -> dict[str, str]:
        return {"GNUPGHOME": str(self.home)}


Signer = SSHSigner | GPGSigner


def signing_args(signer: Signer | None) -> tuple[list[str], dict[str, str]]:
    """The ``git -c`` options and environment that make git sign with `signer` (nothing for None)."""
    if signer is None:
        return [], {}
    options = [arg for key, value in signer.git_config().items() for arg in ("-c", f"{key}={value}")]
    return options, signer.env()
