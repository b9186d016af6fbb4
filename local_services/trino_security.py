"""Security of the local Trino: HTTPS with a generated certificate, password logins, file-based
access control.

- TLS: a local certificate authority and a server certificate for 127.0.0.1 and localhost,
  generated on first start into <services_dir>/trino/secrets/ and renewed 30 days before they
  expire. Clients verify the server against ca.pem; nothing is trusted blindly.
- Users: an admin (`trino_user`, "lakehouse" by default) that registers tables and creates views,
  and an analyst (`trino_analyst_user`) that may only read. Their passwords come from the
  environment (LAKEHOUSE_TRINO_PASSWORD, LAKEHOUSE_TRINO_ANALYST_PASSWORD); unset, each is
  generated once and kept in secrets/passwords.json (mode 600), outside the repository. Trino
  gets only PBKDF2 hashes (its file password authenticator).
- Rules: infra/trino/etc/rules.json (rendered with the user names): who may read and write what.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lakehouse.settings import Settings

_PBKDF2_ITERATIONS = 10_000
_RENEW_BEFORE = dt.timedelta(days=30)
_VALIDITY = dt.timedelta(days=825)


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str


def secrets_dir(settings: Settings) -> Path:
    return settings.services_dir / "trino" / "secrets"


def ca_file(settings: Settings) -> Path:
    """The certificate authority clients verify the server against."""
    return secrets_dir(settings) / "ca.pem"


def server_pem(settings: Settings) -> Path:
    """The server's key and certificate chain, Trino's keystore (PEM)."""
    return secrets_dir(settings) / "server.pem"


def _private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as stream:
        stream.write(text)


def _stored(settings: Settings) -> dict[str, str]:
    """Generated secrets kept between starts: passwords not given by the environment, shared secret."""
    path = secrets_dir(settings) / "passwords.json"
    stored = json.loads(path.read_text()) if path.exists() else {}
    wanted = ["shared_secret", settings.trino_user, settings.trino_analyst_user]
    if any(name not in stored for name in wanted):
        for name in wanted:
            stored.setdefault(name, secrets.token_urlsafe(24))
        _private(path, json.dumps(stored, indent=2))
    return stored


def credentials(settings: Settings, role: str = "admin") -> Credentials:
    """The user and password of a role ("admin" or "analyst"): as configured, else generated once."""
    user, given = settings.trino_login(role)
    return Credentials(user, given or _stored(settings)[user])


def shared_secret(settings: Settings) -> str:
    return _stored(settings)["shared_secret"]


def pbkdf2_hash(password: str, *, salt: bytes | None = None, iterations: int = _PBKDF2_ITERATIONS) -> str:
    """Trino's PBKDF2 form: iterations:hex(salt):hex(PBKDF2-HMAC-SHA1), as Trino checks it."""
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha1", password.encode(), salt, iterations)
    return f"{iterations}:{salt.hex()}:{digest.hex()}"


def write_password_file(settings: Settings, path: Path) -> None:
    lines = [f"{item.user}:{pbkdf2_hash(item.password)}" for item in (credentials(settings, "admin"), credentials(settings, "analyst"))]
    _private(path, "\n".join(lines) + "\n")


def ensure_certificates(settings: Settings) -> None:
    """A CA and a server certificate for the loopback names, (re)generated when absent or expiring."""
    ca_path, server_path = ca_file(settings), server_pem(settings)
    if ca_path.exists() and server_path.exists():
        certificate = x509.load_pem_x509_certificate(server_path.read_bytes().split(b"-----END PRIVATE KEY-----")[-1].strip())
        if certificate.not_valid_after_utc - _RENEW_BEFORE > dt.datetime.now(dt.timezone.utc):
            return
    ca_pem, server_text = _generate_certificates()
    _private(ca_path, ca_pem)
    _private(server_path, server_text)


def _generate_certificates() -> tuple[str, str]:
    now = dt.datetime.now(dt.timezone.utc)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lakehouse (local)"), x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_certificate = (
        x509.CertificateBuilder()
        .subject_name(name("lakehouse local CA"))
        .issuer_name(name("lakehouse local CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_certificate = (
        x509.CertificateBuilder()
        .subject_name(name("localhost"))
        .issuer_name(ca_certificate.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_text = server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    chain = server_certificate.public_bytes(pem).decode() + ca_certificate.public_bytes(pem).decode()
    return ca_certificate.public_bytes(pem).decode(), key_text + chain
