"""Local development keys: a stand-in for the marketplace's signing key, and the app's secrets.

`creditsync run --dev` creates them in `./.creditsync-dev/` (git-ignored) when missing and
serves with them; `creditsync dev webhook|token` sign with them (through `wix.sign_event`
and `tokens.sign`, the same formats the API verifies). Never use them in production.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from creditsync import config

DEFAULT_DIR = Path(".creditsync-dev")
PRIVATE_KEY = "wix-private.pem"
PUBLIC_KEY = "wix-public.pem"
APP_SECRET = "app-secret"  # noqa: S105 (a file name)
ADMIN_TOKEN = "admin-token"  # noqa: S105 (a file name)


class DevKeysMissingError(FileNotFoundError):
    """No development keys yet; the message says how to create them."""


@dataclass(frozen=True)
class DevKeys:
    directory: Path
    private_pem: str
    public_pem: str
    app_secret: str
    admin_token: str

    @property
    def private_key(self) -> rsa.RSAPrivateKey:
        key = serialization.load_pem_private_key(self.private_pem.encode(), password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        return key

    def apply(self, settings: config.Settings) -> config.Settings:
        """`settings` with these keys as its secrets."""
        return settings.replace(wix_public_key=self.public_pem, app_secret=self.app_secret,
                                admin_token=self.admin_token)


def generate_private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def public_pem(key: rsa.RSAPrivateKey) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def load(directory: Path = DEFAULT_DIR) -> DevKeys:
    """The keys in `directory`; `DevKeysMissingError` if `creditsync run --dev` never ran there."""
    try:
        return DevKeys(
            directory=directory,
            private_pem=(directory / PRIVATE_KEY).read_text(),
            public_pem=(directory / PUBLIC_KEY).read_text(),
            app_secret=(directory / APP_SECRET).read_text().strip(),
            admin_token=(directory / ADMIN_TOKEN).read_text().strip(),
        )
    except FileNotFoundError as exc:
        raise DevKeysMissingError(
            f"no development keys in {directory.resolve()}: run `creditsync run --dev` there "
            "first (it creates them)"
        ) from exc


def ensure(directory: Path = DEFAULT_DIR) -> tuple[DevKeys, bool]:
    """Load the keys, creating whichever are missing; True when anything was created."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    created = False
    if not (directory / ".gitignore").exists():
        (directory / ".gitignore").write_text("*\n")
    if not (directory / PRIVATE_KEY).exists():
        key = generate_private_key()
        _write_secret(directory / PRIVATE_KEY, private_pem(key))
        (directory / PUBLIC_KEY).write_text(public_pem(key))
        created = True
    elif not (directory / PUBLIC_KEY).exists():
        private = load_private(directory)
        (directory / PUBLIC_KEY).write_text(public_pem(private))
        created = True
    for name in (APP_SECRET, ADMIN_TOKEN):
        if not (directory / name).exists():
            _write_secret(directory / name, secrets.token_urlsafe(32) + "\n")
            created = True
    return load(directory), created


def load_private(directory: Path) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key((directory / PRIVATE_KEY).read_bytes(),
                                             password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
