"""Who may publish a model package: Ed25519 signatures over the manifest, and the trust policy
that loading a package enforces.

A package's ``manifest.json`` lists the sha256 of every other file, so one signature over the
manifest's bytes covers every byte that scoring reads. The exporter signs with a private key
(``pinrank keygen`` writes a pair); whoever loads a package (the service, ``pinrank feeds``,
``pinrank verify``) names the public keys it trusts. A package that is unsigned, or signed by a
key that is not trusted, is refused unless the policy explicitly allows unsigned packages (for
development, logged loudly); a signature that does not verify under a trusted key is always
refused. The signature file (:data:`SIGNATURE`) is JSON::

    {"algorithm": "ed25519", "key_id": "<16 hex: sha256 of the raw public key>",
     "signature": "<base64 of the 64-byte signature>"}

and the signed message is :data:`DOMAIN` followed by the manifest's bytes, so a signature made
for anything else never verifies as a package's.

Example::

    >>> key = generate_key()
    >>> signed = sign(key, b'{"format": "pinrank-model-package"}')
    >>> trust = Trust(keys=(key.public_key(),))
    >>> manifest = b'{"format": "pinrank-model-package"}'
    >>> trust.check(signed, manifest, "pkg") == key_id(key.public_key())
    True
    >>> trust.check(signed, manifest + b" ", "pkg")
    Traceback (most recent call last):
    ...
    pinrank.serving.signing.SignatureError: pkg: the signature by key ... does not match ...
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIGNATURE = "MANIFEST.sig"
ALGORITHM = "ed25519"
DOMAIN = b"pinrank-model-package signature v1\n"
MAX_SIGNATURE_BYTES = 4096
log = logging.getLogger(__name__)


class SignatureError(ValueError):
    """A package's signature is missing, malformed, untrusted or wrong; the message says which."""


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def key_id(public: Ed25519PublicKey) -> str:
    """16 hex digits naming a public key: the sha256 of its 32 raw bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def write_keypair(folder: str | Path, name: str = "signing") -> tuple[Path, Path]:
    """A new key pair as PEM files ``{name}.key`` (PKCS#8, mode 0600) and ``{name}.pub``;
    refuses to overwrite an existing private key."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    private, public = folder / f"{name}.key", folder / f"{name}.pub"
    key = generate_key()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM (PKCS#8) file."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (ValueError, TypeError) as err:
        raise SignatureError(f"{path}: not an unencrypted PEM private key ({err})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path}: a {type(key).__name__}, not an Ed25519 private key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM (SubjectPublicKeyInfo) file."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (ValueError, TypeError) as err:
        raise SignatureError(f"{path}: not a PEM public key ({err})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path}: a {type(key).__name__}, not an Ed25519 public key")
    return key


def sign(key: Ed25519PrivateKey, manifest: bytes) -> bytes:
    """The signature file's bytes for a manifest's bytes."""
    signature = key.sign(DOMAIN + manifest)
    record = {
        "algorithm": ALGORITHM,
        "key_id": key_id(key.public_key()),
        "signature": base64.b64encode(signature).decode(),
    }
    return json.dumps(record, indent=1).encode()


@dataclass(frozen=True)
class Trust:
    """What a loader accepts.

    Args:
        keys: the public keys whose signatures are trusted.
        allow_unsigned: accept a package with no signature, or one by a key not in ``keys``
            (development only: each such load is logged as a warning). A signature that fails
            under a trusted key is refused all the same.
        roots: folders a package must lie under (after resolving symlinks); empty: anywhere.
    """

    keys: tuple[Ed25519PublicKey, ...] = ()
    allow_unsigned: bool = False
    roots: tuple[Path, ...] = ()

    @classmethod
    def from_files(
        cls,
        key_files: Iterable[str | Path] = (),
        allow_unsigned: bool = False,
        roots: Sequence[str | Path] = (),
    ) -> Trust:
        keys = tuple(load_public_key(p) for p in key_files)
        return cls(keys, allow_unsigned, tuple(Path(r).resolve() for r in roots))

    def to_dict(self) -> dict[str, Any]:
        """Plain data (PEM public keys), to hand the same policy to another process."""
        pems = [
            k.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ).decode()
            for k in self.keys
        ]
        return {
            "keys": pems,
            "allow_unsigned": self.allow_unsigned,
            "roots": [str(r) for r in self.roots],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trust:
        keys = []
        for pem in d.get("keys", []):
            key = serialization.load_pem_public_key(pem.encode())
            if not isinstance(key, Ed25519PublicKey):
                raise SignatureError("trust policy: a key that is not Ed25519")
            keys.append(key)
        roots = tuple(Path(r) for r in d.get("roots", []))
        return cls(tuple(keys), bool(d.get("allow_unsigned", False)), roots)

    def with_roots(self, roots: Sequence[str | Path]) -> Trust:
        return Trust(self.keys, self.allow_unsigned, tuple(Path(r).resolve() for r in roots))

    def describe(self) -> str:
        ids = ", ".join(key_id(k) for k in self.keys) or "none"
        where = ", ".join(str(r) for r in self.roots) or "anywhere"
        unsigned = "ALLOWED" if self.allow_unsigned else "refused"
        return f"trusted keys [{ids}], unsigned packages {unsigned}, model roots [{where}]"

    def check_location(self, root: Path) -> None:
        """Refuse a (resolved) package folder outside every configured root."""
        if self.roots and not any(root == r or root.is_relative_to(r) for r in self.roots):
            roots = [str(r) for r in self.roots]
            raise SignatureError(f"{root}: outside the configured model roots {roots}")

    def check(self, signature: bytes | None, manifest: bytes, where: str) -> str | None:
        """The key id that signed ``manifest``, or ``None`` for an unverified package that the
        policy allows; raises SignatureError otherwise."""
        if not self.keys and not self.allow_unsigned:
            raise SignatureError(
                f"{where}: no trusted public keys are configured (pass --trusted-key KEY.pub, "
                "or --allow-unsigned for development)"
            )
        if signature is None:
            self._unverified(where, f"it is unsigned (no {SIGNATURE})")
            return None
        signer, raw = _parse(signature, where)
        key = {key_id(k): k for k in self.keys}.get(signer)
        if key is None:
            self._unverified(where, f"its signing key {signer} is not trusted")
            return None
        try:
            key.verify(raw, DOMAIN + manifest)
        except InvalidSignature:
            raise SignatureError(
                f"{where}: the signature by key {signer} does not match the manifest "
                "(the package was altered after signing)"
            ) from None
        return signer

    def _unverified(self, where: str, why: str) -> None:
        if not self.allow_unsigned:
            raise SignatureError(f"{where}: refused because {why}")
        log.warning("LOADING AN UNVERIFIED MODEL PACKAGE %s: %s (--allow-unsigned)", where, why)


def _parse(signature: bytes, where: str) -> tuple[str, bytes]:
    """The signer's key id and the raw signature of a signature record."""
    bad = SignatureError(f"{where}: {SIGNATURE} is not a valid signature record")
    if len(signature) > MAX_SIGNATURE_BYTES:
        raise bad
    try:
        record = json.loads(signature)
        raw = base64.b64decode(record["signature"], validate=True)
    except (ValueError, KeyError, TypeError):
        raise bad from None
    if (
        not isinstance(record, dict)
        or record.get("algorithm") != ALGORITHM
        or not isinstance(record.get("key_id"), str)
        or len(raw) != 64
    ):
        raise bad
    return str(record["key_id"]), raw


KEYS_ENV = "PINRANK_TRUSTED_KEYS"


def add_trust_arguments(parser: Any, roots: bool = False) -> None:
    """The trust flags every command that loads a package takes."""
    parser.add_argument(
        "--trusted-key",
        action="append",
        default=[],
        metavar="KEY.pub",
        help=f"a public key whose package signatures are trusted (repeatable; default: the "
        f"':'-separated paths in ${KEYS_ENV})",
    )
    parser.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="development only: also load unsigned packages, or ones signed by an untrusted key "
        "(logged as a warning on every load)",
    )
    if roots:
        parser.add_argument(
            "--model-root",
            action="append",
            default=[],
            help="a folder that packages must lie under, for the first load and every reload "
            "(repeatable; default: the folder holding the package served at start)",
        )


def trust_from_args(args: Any) -> Trust:
    keys = list(args.trusted_key) or [p for p in os.environ.get(KEYS_ENV, "").split(":") if p]
    return Trust.from_files(keys, args.allow_unsigned, getattr(args, "model_root", []) or [])
