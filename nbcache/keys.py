"""The key that signs every value a cache stores, so a value nbcache did not write is never unpickled.

Where it comes from, first found first:

1. ``NBCACHE_KEY``: the key itself, as hex (at least 32 hex digits; ``python -c "import secrets;
   print(secrets.token_hex(32))"`` makes one). For a cache shared by a team: everyone sets the same key.
2. ``NBCACHE_KEY_FILE``: a file holding such a key (kept 0600), shared the same way.
3. The user's own key, in ``key`` in the user's config directory (``~/.config/nbcache/key`` on Linux),
   made 0600 on first use. Another user's cache, or anything planted in it, does not verify under it.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from .errors import NBCacheError

__all__ = ["SigningKeyError", "key_id", "load_key", "parse_key", "user_key_path"]

MIN_HEX_DIGITS = 32  # 128 bits


class SigningKeyError(NBCacheError):
    """The signing key given cannot be used (named with the exception's message)."""


def key_id(key: bytes) -> str:
    """Which key a cache signs with, as can be shown and compared without giving the key away."""
    return hmac.new(key, b"nbcache: which key is this", "sha256").hexdigest()[:16]


def user_key_path() -> Path:
    """Where the user's own key is kept (made on first use)."""
    import platformdirs  # (only when a cache is first used: `import nbcache` stays light)

    return Path(platformdirs.user_config_dir("nbcache", appauthor=False)) / "key"


def load_key(*, make: bool = True) -> bytes | None:
    """The signing key, from ``NBCACHE_KEY``, ``NBCACHE_KEY_FILE`` or the user's own key file (made on first
    use; ``make=False``: None if there is none yet); ``SigningKeyError`` if the one given is malformed or
    cannot be read or made."""
    text = os.environ.get("NBCACHE_KEY")
    if text:
        return parse_key(text, "NBCACHE_KEY")
    given = os.environ.get("NBCACHE_KEY_FILE")
    path = Path(given).expanduser() if given else user_key_path()
    try:
        return parse_key(path.read_text(), str(path))
    except FileNotFoundError:
        if given:
            raise SigningKeyError(f"NBCACHE_KEY_FILE names {path}, which does not exist; put a key there (at least"
                            f" {MIN_HEX_DIGITS} hex digits) or unset NBCACHE_KEY_FILE") from None
    except OSError as exc:
        raise SigningKeyError(f"nbcache cannot read its signing key {path} ({exc.strerror or exc}); set NBCACHE_KEY"
                        " or NBCACHE_KEY_FILE to give one") from None
    return _make(path) if make else None


def _make(path: Path) -> bytes:
    """A new random key in ``path``, 0600 in a 0700 folder. It is written whole under a temporary name and
    linked into place, so a process that made one first wins and nobody reads half a key."""
    import secrets  # (only to make a key)

    key = secrets.token_hex(32)
    temporary = path.with_name(f".key-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(key + "\n")
        try:
            os.link(temporary, path)
        except FileExistsError:
            return parse_key(path.read_text(), str(path))
    except OSError as exc:
        raise SigningKeyError(f"nbcache cannot make its signing key {path} ({exc.strerror or exc}); set"
                              " NBCACHE_KEY or NBCACHE_KEY_FILE to give one") from None
    finally:
        temporary.unlink(missing_ok=True)
    return bytes.fromhex(key)


def parse_key(text: str, where: str) -> bytes:
    """The key written as ``text`` (hex), or ``SigningKeyError`` naming ``where`` it came from."""
    if not isinstance(text, str):
        raise TypeError(f"a signing key is given as hex text, not {type(text).__name__}")
    text = text.strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) * 2 < MIN_HEX_DIGITS:
        raise SigningKeyError(f"the signing key in {where} is not a key: expected an even number, at least"
                              f" {MIN_HEX_DIGITS}, of hex digits (0-9, a-f) and nothing else"
                        " (python -c \"import secrets; print(secrets.token_hex(32))\" makes one)")
    return key
