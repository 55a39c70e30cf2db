"""The deployment's signing key: the one ``signing.key`` names, or one generated once.

A generated key is Ed25519 (deterministic signatures: the same image signs to the same bytes);
a given key may be Ed25519, ECDSA (cosign's P-256) or RSA, as an unencrypted PEM private key
readable by its owner only. The private half never leaves its 0600 file; what the rest of the
tool sees is the public half (``signing/signing.pub``) and its id.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Union

from apex_tools.core.errors import ApexError
from apex_tools.core.lazy import lazy_import
from apex_tools.core.state import atomic_write, write_if_changed

if TYPE_CHECKING:
    from cryptography import exceptions
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

    PrivateKey = Union[ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey]
else:  # loaded on first use: a re-run whose key is unchanged (the id cache below) never needs them
    exceptions = lazy_import("cryptography.exceptions")
    hashes = lazy_import("cryptography.hazmat.primitives.hashes")
    serialization = lazy_import("cryptography.hazmat.primitives.serialization")
    ec = lazy_import("cryptography.hazmat.primitives.asymmetric.ec")
    ed25519 = lazy_import("cryptography.hazmat.primitives.asymmetric.ed25519")
    padding = lazy_import("cryptography.hazmat.primitives.asymmetric.padding")
    rsa = lazy_import("cryptography.hazmat.primitives.asymmetric.rsa")

SIGNING_DIR = "signing"
PRIVATE_KEY = "signing.key"
PUBLIC_KEY = "signing.pub"
# "<sha256 of the private key file> <key id>": the id of a key file seen before, without parsing it.
KEY_ID_CACHE = "key-id"


class SigningError(ApexError):
    """The signing key is missing, unreadable, of an unknown kind, or readable by others."""


@dataclass(frozen=True)
class SigningKey:
    """A private key (kept out of repr) with its public half as PEM and its id."""

    private: PrivateKey = field(repr=False)
    public_pem: bytes
    source: str

    @property
    def key_id(self) -> str:
        """sha256 of the public key's DER: what records and provenance name the key by."""
        return _key_id(self.public_pem)

    def sign(self, data: bytes) -> bytes:
        """A signature over ``data`` as sigstore's verifiers take it (SHA-256 for ECDSA and RSA)."""
        key = self.private
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key.sign(data)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.sign(data, ec.ECDSA(hashes.SHA256()))
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())

    def verifies(self, data: bytes, signature: bytes) -> bool:
        """True when ``signature`` over ``data`` was made by this key."""
        public = self.private.public_key()
        try:
            if isinstance(public, ed25519.Ed25519PublicKey):
                public.verify(signature, data)
            elif isinstance(public, ec.EllipticCurvePublicKey):
                public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
            else:
                public.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        except exceptions.InvalidSignature:
            return False
        return True


def public_key_path(work_dir: Path) -> Path:
    """Where the public half of the deployment's key is kept (and the policy points)."""
    return Path(work_dir) / SIGNING_DIR / PUBLIC_KEY


def _public_pem(private: PrivateKey) -> bytes:
    return private.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)


def _load(path: Path) -> PrivateKey:
    hint = "give signing.key as an unencrypted PEM private key (Ed25519, ECDSA P-256 or RSA), mode 0600"
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise SigningError(f"signing key {path}: cannot read it ({exc.strerror})", hint) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SigningError(f"signing key {path}: readable by others (mode {stat.S_IMODE(mode):04o})",
                           f"chmod 600 {path}")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        # The message of cryptography names the format problem, never the key's bytes.
        raise SigningError(f"signing key {path}: not a usable PEM private key ({exc})", hint) from None
    if not isinstance(key, (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise SigningError(f"signing key {path}: a {type(key).__name__} cannot sign images", hint)
    return key


def ensure_key(work_dir: Path, configured: str = "") -> tuple[SigningKey, bool]:
    """The deployment's key (``configured`` path, else ``work_dir/signing/signing.key``, generated
    once with mode 0600) and whether it was generated now; its public half is written beside."""
    folder = Path(work_dir) / SIGNING_DIR
    generated = False
    if configured:
        path = Path(configured).expanduser()
    else:
        path = folder / PRIVATE_KEY
        if not path.exists():
            private = ed25519.Ed25519PrivateKey.generate()
            folder.mkdir(parents=True, exist_ok=True)
            os.chmod(folder, 0o700)
            atomic_write(path, private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()), mode=0o600)
            generated = True
    key = _load(path)
    public = _public_pem(key)
    write_if_changed(folder / PUBLIC_KEY, public)
    _remember_id(work_dir, path, public)
    return SigningKey(key, public, str(path)), generated


def public_pem_of(work_dir: Path, configured: str = "") -> bytes | None:
    """The public half of the key ``ensure_key`` would use, writing nothing; None: not generated yet."""
    path = Path(configured).expanduser() if configured else Path(work_dir) / SIGNING_DIR / PRIVATE_KEY
    if not configured and not path.exists():
        return None
    return _public_pem(_load(path))


def _remember_id(work_dir: Path, path: Path, public_pem: bytes) -> None:
    line = f"{hashlib.sha256(path.read_bytes()).hexdigest()} {_key_id(public_pem)}\n"
    write_if_changed(Path(work_dir) / SIGNING_DIR / KEY_ID_CACHE, line)


def _seen_id(work_dir: Path, path: Path) -> str | None:
    """The id ``signing/key-id`` records for the key file at ``path``, when the file is the one
    recorded (same sha256, still mode 0600); None otherwise."""
    with contextlib.suppress(OSError, ValueError):
        digest, key_id = (Path(work_dir) / SIGNING_DIR / KEY_ID_CACHE).read_text().split()
        if not path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO) and \
                hashlib.sha256(path.read_bytes()).hexdigest() == digest:
            return key_id
    return None


def seen_public_pem(work_dir: Path, configured: str = "") -> bytes | None:
    """``signing/signing.pub`` when it is the public half of the key ``ensure_key`` would use, known
    without loading that key: the key file is the one ``signing/key-id`` records and the .pub's
    key hashes to the recorded id. None: load the key (``ensure_key``)."""
    path = Path(configured).expanduser() if configured else Path(work_dir) / SIGNING_DIR / PRIVATE_KEY
    key_id = _seen_id(work_dir, path)
    if key_id is None:
        return None
    with contextlib.suppress(OSError, ValueError):  # binascii.Error is a ValueError
        public = (Path(work_dir) / SIGNING_DIR / PUBLIC_KEY).read_bytes()
        # The DER of a PEM is its base64 body: hashed here without the cryptography library.
        body = b"".join(line for line in public.splitlines() if line and not line.startswith(b"-----"))
        if "sha256:" + hashlib.sha256(base64.b64decode(body, validate=True)).hexdigest() == key_id:
            return public
    return None


def key_id_of(work_dir: Path, configured: str = "", remember: bool = False) -> str | None:
    """The id of the key ``ensure_key`` would use; None: not generated yet.

    A key file seen before (same sha256, still mode 0600) is not parsed again: its id comes from
    ``signing/key-id`` (written by ``ensure_key``, or here with ``remember``; else nothing is
    written). Any other key is loaded and checked in full.
    """
    path = Path(configured).expanduser() if configured else Path(work_dir) / SIGNING_DIR / PRIVATE_KEY
    if not configured and not path.exists():
        return None
    key_id = _seen_id(work_dir, path)
    if key_id is not None:
        return key_id
    public = public_pem_of(work_dir, configured)
    if public is not None and remember:
        with contextlib.suppress(OSError):  # only a cache: no signing/ folder yet, a read-only dir
            _remember_id(work_dir, path, public)
    return _key_id(public) if public is not None else None


def _key_id(public_pem: bytes) -> str:
    der = serialization.load_pem_public_key(public_pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()
