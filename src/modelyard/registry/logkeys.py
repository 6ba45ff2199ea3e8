"""Encryption at rest of the prediction log's inputs: the keys, where they come from, and the one cipher.

What is encrypted: each logged input (``predictions.text``: the text after PII masking, or an image's
description) and each image sent back with feedback (``feedback_images.data``). Labels, scores, times and
API-key ids stay in clear (traffic, class mix and drift are computed by the database from them).

The cipher is AES-256-GCM (``cryptography``'s :class:`AESGCM`), chosen over Fernet/MultiFernet because:

* every ciphertext is stored with the id of the key that made it (column ``enc_key``), so a reader picks
  exactly one key instead of trying each one in turn, a rotation selects the rows still under an old key
  with one SQL condition, and a missing key is named in the error;
* the row's identity is bound as associated data (``predictions.text:<id>``, ``feedback_images.data:<sha>``),
  so a ciphertext copied onto another row does not decrypt: someone who can write the database cannot
  move one person's text onto another prediction;
* 256-bit keys, a 96-bit random nonce per value, and no timestamp or CBC padding overhead.

Where the keys come from, first match wins:

1. ``serve.log_key_file`` (the server) or an explicit ``key_file`` (:meth:`LogKeys.configure`);
2. ``$MODELYARD_LOG_KEY``: one or more keys (urlsafe base64 of 32 bytes), newest first, comma-separated;
3. ``$MODELYARD_LOG_KEY_FILE``: a file of keys, one per line, newest first (``#`` comments);
4. ``<store>/log.key``, the key file generated the first time something is logged without any key
   configured (mode 0600, announced with a warning).

The newest key encrypts, every configured key decrypts (plus ``<store>/log.key`` when it exists, so rows
written before you configured your own key stay readable until ``modelyard predictions rotate-key``).
A key file readable by other users is refused, as ssh refuses such a private key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import secrets
import stat
import threading
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from modelyard.registry.names import RegistryError

logger = logging.getLogger("modelyard.registry")

KEY_BYTES = 32
NONCE_BYTES = 12
ENV_KEY = "MODELYARD_LOG_KEY"
ENV_KEY_FILE = "MODELYARD_LOG_KEY_FILE"
DEFAULT_KEY_FILE = "log.key"
_WHERE = f"${ENV_KEY}, ${ENV_KEY_FILE} or serve.log_key_file"


class LogKeyError(RegistryError):
    """A log key is missing, malformed, unsafe, or does not decrypt a logged value (one line: which and the fix)."""


def new_key() -> str:
    """A fresh random key, urlsafe base64 (what ``$MODELYARD_LOG_KEY`` and key files hold)."""
    return base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def key_id(key: bytes) -> str:
    """The public id of a key (12 hex characters, derived from the key; stored with each ciphertext)."""
    return hmac.new(key, b"modelyard log key id", hashlib.sha256).hexdigest()[:12]


def parse_keys(text: str, source: str) -> list[bytes]:
    """Keys from the text of ``$MODELYARD_LOG_KEY`` or a key file: newest first, commas or lines, ``#`` comments.

    Raises:
        LogKeyError: An entry is not base64 of 32 bytes, or there is none.
    """
    entries = [e.strip() for line in text.splitlines() for e in line.split("#", 1)[0].split(",")]
    keys = []
    for n, entry in enumerate((e for e in entries if e), start=1):
        try:
            key = base64.b64decode(entry + "=" * (-len(entry) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != KEY_BYTES:
            raise LogKeyError(
                f"{source}: key {n} is not the base64 of {KEY_BYTES} bytes; "
                "make one with `modelyard predictions new-key`"
            )
        keys.append(key)
    if not keys:
        raise LogKeyError(f"{source} holds no key; make one with `modelyard predictions new-key`")
    return keys


def read_key_file(path: Path) -> list[bytes]:
    """The keys of a key file, after checking that only its owner can read it (POSIX).

    Raises:
        LogKeyError: Missing or unreadable file, readable by group or others, or malformed.
    """
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LogKeyError(f"log key file {path} does not exist; set {_WHERE} to an existing key file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise LogKeyError(f"log key file {path} cannot be read ({err})") from None
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise LogKeyError(
            f"log key file {path} is accessible to other users (mode {stat.S_IMODE(mode):o}); run `chmod 600 {path}`"
        )
    return parse_keys(text, f"log key file {path}")


def write_key_file(path: Path, keys: Sequence[bytes], exclusive: bool = False) -> None:
    """Write keys (newest first) to ``path`` with mode 0600, atomically (``exclusive``: fail if it exists).

    The file is written in full under a temporary name first, then linked (``exclusive``) or renamed into place,
    so a reader never sees a partial key file, and two processes generating one at once end up with one key.

    Raises:
        FileExistsError: ``exclusive`` and the file exists (another process made it first).
    """
    body = "# modelyard prediction-log keys, newest first (the first encrypts, all decrypt)\n" + "".join(
        base64.urlsafe_b64encode(k).decode("ascii") + "\n" for k in keys
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            os.link(tmp, path)  # atomic, and refuses an existing file
        else:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class LogKeyring:
    """Keys in effect: the newest encrypts, every one decrypts.

    Args:
        keys: Newest first (may be empty: nothing can be encrypted or decrypted).
        source: Where they came from (for messages).
        file: The key file they were read from, if any (``rotate-key`` writes a new key into it).
        decrypt_only: Further keys that only decrypt (``<store>/log.key`` when another source is configured).
    """

    def __init__(
        self, keys: Sequence[bytes], source: str, file: Path | None = None, decrypt_only: Sequence[bytes] = ()
    ) -> None:
        self.keys = list(keys)
        self.source = source
        self.file = file
        self._by_id = {key_id(k): AESGCM(k) for k in [*decrypt_only, *self.keys]}
        self.newest_id = key_id(self.keys[0]) if self.keys else None

    @property
    def ids(self) -> list[str]:
        """Ids of every key that decrypts."""
        return list(self._by_id)

    def encrypt(self, data: bytes, aad: str) -> tuple[str, bytes]:
        """``(key id, nonce + ciphertext + tag)`` of ``data`` under the newest key, bound to ``aad``."""
        if self.newest_id is None:
            raise LogKeyError(f"no log key configured to encrypt with; set {_WHERE}")
        nonce = os.urandom(NONCE_BYTES)
        return self.newest_id, nonce + self._by_id[self.newest_id].encrypt(nonce, data, aad.encode("utf-8"))

    def decrypt(self, kid: str, blob: bytes, aad: str) -> bytes:
        """The plaintext of a value stored under key ``kid``.

        Raises:
            LogKeyError: The key is not configured, or the value was altered or belongs to another row.
        """
        cipher = self._by_id.get(kid)
        if cipher is None:
            known = ", ".join(self.ids) or "none"
            raise LogKeyError(
                f"{aad} is encrypted with log key {kid}, which is not configured (keys in effect: {known}, "
                f"from {self.source}); add that key to {_WHERE}"
            )
        try:
            return cipher.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad.encode("utf-8"))
        except InvalidTag:
            raise LogKeyError(
                f"{aad} does not decrypt with log key {kid}: the stored value was altered or damaged"
            ) from None

    def encrypt_text(self, text: str, aad: str) -> tuple[str, str]:
        """``(key id, base64 ciphertext)`` of a text (what the ``text`` column holds)."""
        kid, blob = self.encrypt(text.encode("utf-8"), aad)
        return kid, base64.b64encode(blob).decode("ascii")

    def decrypt_text(self, kid: str, stored: str, aad: str) -> str:
        """The text behind a value of the ``text`` column; see :meth:`decrypt`."""
        try:
            blob = base64.b64decode(stored, validate=True)
        except (binascii.Error, ValueError):
            raise LogKeyError(f"{aad} is marked as encrypted with key {kid} but is not base64: damaged") from None
        return self.decrypt(kid, blob, aad).decode("utf-8")


class LogKeys:
    """The log keys of one registry, resolved when needed (the environment is read again at each use).

    Args:
        store: The registry's store directory (where ``log.key`` is generated).
    """

    def __init__(self, store: Path) -> None:
        self.default_file = Path(store) / DEFAULT_KEY_FILE
        self.key_file: Path | None = None
        self._lock = threading.Lock()
        self._cache: tuple[object, LogKeyring] | None = None

    def configure(self, key_file: Path | str | None) -> None:
        """Use this key file (``serve.log_key_file``) instead of the environment; ``None``: back to the defaults."""
        self.key_file = None if key_file is None else Path(key_file).expanduser().resolve()
        self._cache = None

    def child_env(self) -> dict[str, str]:
        """Environment for a child process (an admin job) that must read the same keys."""
        return {ENV_KEY_FILE: str(self.key_file)} if self.key_file is not None else {}

    def _signature(self) -> tuple[object, ...]:
        def mtime(p: Path | None) -> int | None:
            try:
                return p.stat().st_mtime_ns if p is not None else None
            except OSError:
                return None

        env_file = os.environ.get(ENV_KEY_FILE) or None
        files = (self.key_file, Path(env_file) if env_file else None, self.default_file)
        return (os.environ.get(ENV_KEY) or None, env_file, *files, *(mtime(f) for f in files))

    def _resolve(self) -> LogKeyring:
        env_key, env_file = os.environ.get(ENV_KEY) or None, os.environ.get(ENV_KEY_FILE) or None
        default = self.default_file
        if self.key_file is not None:
            keys, source, file = read_key_file(self.key_file), f"serve.log_key_file {self.key_file}", self.key_file
        elif env_key:
            keys, source, file = parse_keys(env_key, f"${ENV_KEY}"), f"${ENV_KEY}", None
        elif env_file:
            path = Path(env_file).expanduser().resolve()
            keys, source, file = read_key_file(path), f"${ENV_KEY_FILE} {path}", path
        elif default.exists():
            return LogKeyring(read_key_file(default), f"the registry's key file {default}", default)
        else:
            return LogKeyring([], f"nothing (no {_WHERE}, no {default})")
        extra = read_key_file(default) if default.exists() and file != default else []
        return LogKeyring(keys, source, file, decrypt_only=extra)

    def keyring(self) -> LogKeyring:
        """The keys in effect (possibly none: reading encrypted rows then fails with a clear error)."""
        with self._lock:
            sig = self._signature()
            if self._cache is None or self._cache[0] != sig:
                self._cache = (sig, self._resolve())
            return self._cache[1]

    def for_writing(self) -> LogKeyring:
        """The keys in effect; with none configured anywhere, ``<store>/log.key`` is generated first (mode 0600)."""
        ring = self.keyring()
        if ring.newest_id is not None:
            return ring
        try:
            write_key_file(self.default_file, [base64.urlsafe_b64decode(new_key())], exclusive=True)
            logger.warning(
                "prediction log: no log key configured, so logged inputs are encrypted with a new key generated "
                "in %s (mode 600). Keep it out of database backups, or configure your own key (%s).",
                self.default_file,
                _WHERE,
            )
        except FileExistsError:  # another process generated it first: use theirs
            pass
        return self.keyring()
