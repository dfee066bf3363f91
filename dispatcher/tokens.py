"""Client tokens: created by ``dispatcher token create``, checked by listeners.

A token is ``dsp_`` followed by 32 random bytes (URL-safe base64). Only its SHA-256
is stored (a random token needs no slow hash). The local CLI keeps a token of its own
in ``$DISPATCHER_HOME/tokens/<region>`` (mode 0600), made on first use.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from .gateway import InRegion, Token, ops

__all__ = ["create_token", "find_token", "hash_token", "local_token", "new_token"]

LOCAL_NAME = "local"


def new_token() -> str:
    return "dsp_" + secrets.token_urlsafe(32)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def create_token(
    region: InRegion,
    name: str,
    allow: Sequence[str] | None = None,
    priority: int = 0,
    max_sessions: int | None = None,
) -> str:
    """Create (or replace) token NAME; returns the token, shown only once. MAX_SESSIONS:
    how many sessions it may have open at once in the region (None: no limit)."""
    token = new_token()
    region.run(
        ops.listener.create_token(
            region.name, name, hash_token(token), allow, priority, max_sessions
        )
    )
    return token


def find_token(region: InRegion, token: str) -> Token | None:
    return region.run(ops.listener.find_token(region.name, hash_token(token)))


def local_token(region: InRegion, home: Path) -> str:
    """The local CLI's own token for this region, created on first use."""
    path = home / "tokens" / region.name
    if path.exists():
        token = path.read_text().strip()
        if token and find_token(region, token) is not None:
            return token
    token = create_token(region, LOCAL_NAME)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token
