"""Client API keys: a file of `client-name:key` lines, reloaded when it changes.

The file is usually a mounted Kubernetes Secret, which the kubelet updates by swapping a symlink
(`..data`) to a new directory: the path stays the same, the file it resolves to changes. Each
lookup therefore stats the path (following links) and re-reads the file when its device, inode,
size or modification time differ from the last read. A file that turns unreadable or invalid
after start keeps the last good keys (and logs why), so a half-written update never locks every
client out. Keys are compared in constant time; only client names ever reach logs and metrics.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CLIENT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_CLIENT_NAME = re.compile(CLIENT_NAME_PATTERN)
MIN_KEY_CHARS = 16
BEARER = "bearer"


class KeysFileError(ValueError):
    """The keys file cannot be used; the message names the line, never a key."""


@dataclass(frozen=True)
class _Entry:
    client: str
    digest: bytes  # SHA-256 of the key: equal-length inputs for compare_digest


def parse_keys(text: str) -> tuple[_Entry, ...]:
    """The entries of a keys file; blank lines and `#` comments are skipped.

    A client may have several keys (to rotate without a gap); one key names one client.
    """
    entries: list[_Entry] = []
    seen: dict[bytes, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        client, colon, key = line.partition(":")
        client, key = client.strip(), key.strip()
        if not colon or not _CLIENT_NAME.match(client):
            raise KeysFileError(
                f"line {number}: expected `client-name:key` with a client name of letters, "
                "digits, `.`, `_` and `-` (at most 64)"
            )
        if len(key) < MIN_KEY_CHARS or any(c.isspace() for c in key):
            raise KeysFileError(
                f"line {number} (client {client}): the key must be at least {MIN_KEY_CHARS} "
                "characters without spaces"
            )
        digest = hashlib.sha256(key.encode()).digest()
        if digest in seen:
            raise KeysFileError(f"line {number} (client {client}): this key is listed twice")
        seen[digest] = client
        entries.append(_Entry(client, digest))
    if not entries:
        raise KeysFileError("no `client-name:key` line")
    return tuple(entries)


def read_keys(path: Path) -> tuple[_Entry, ...]:
    """Parse the keys file at `path`; KeysFileError when it cannot be used."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise KeysFileError(f"cannot read {path}: {type(err).__name__}") from None
    return parse_keys(text)


class ApiKeys:
    """The clients allowed in, from a keys file that may change while the service runs."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._signature = self._stat()
        self._entries = read_keys(path)  # a bad file at start is a configuration error
        self.reloads = 0

    @property
    def clients(self) -> frozenset[str]:
        """The client names currently allowed."""
        return frozenset(e.client for e in self._entries)

    def identify(self, authorization: str | None) -> str | None:
        """The client whose key an `Authorization: Bearer <key>` header carries, else None."""
        if not authorization:
            return None
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if scheme.lower() != BEARER or not key:
            return None
        self._refresh()
        digest = hashlib.sha256(key.encode()).digest()
        found: str | None = None
        # Every entry is compared, whatever matched: the time does not depend on which key it is.
        for entry in self._entries:
            if hmac.compare_digest(entry.digest, digest):
                found = entry.client
        return found

    def _stat(self) -> tuple[int, int, int, int] | None:
        try:
            st = self._path.stat()  # follows the Secret's symlinks to the current file
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def _refresh(self) -> None:
        signature = self._stat()
        if signature == self._signature:
            return
        # No await below: on the event loop this runs whole, one request at a time.
        self._signature = signature
        try:
            entries = read_keys(self._path)
        except KeysFileError as err:
            log.error("API keys file not reloaded, keeping the previous keys: %s", err)
            return
        self._entries = entries
        self.reloads += 1
        log.info(
            "API keys reloaded", extra={"path": str(self._path), "clients": sorted(self.clients)}
        )


def is_loopback(host: str) -> bool:
    """Whether a bind address only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_if_open(api_keys_file: Path | None, host: str) -> None:
    """Log a warning when anyone who reaches the bind address may use the API."""
    if api_keys_file is None and not is_loopback(host):
        log.warning(
            "client authentication is off (AGENT_API_KEYS_FILE unset) while bound to %s: "
            "anyone who reaches this address can use the API and read any session",
            host,
        )
