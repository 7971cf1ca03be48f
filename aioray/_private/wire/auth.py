"""The cluster token: where a process finds it, and the handshake's challenge-response.

Floor 1 (no sockets). Every daemon port (GCS, raylet, worker and owner servers)
checks the token in the connection's first exchange (``rpc``):

1. On accept, the server sends a one-way ``challenge`` frame: 16 random bytes.
2. The client answers in its ``hello`` with ``HMAC-SHA256(token, challenge)``.
3. The server compares it with its own HMAC in constant time
   (``hmac.compare_digest``) and refuses the connection, with the reason, on a
   mismatch or a missing proof.

The token itself never crosses the wire, and a recorded hello cannot be replayed
(each connection gets a fresh challenge). Traffic is not encrypted unless TLS is
on (``tls``, docs/security.md): run clusters on a private network, as with Ray.
Cost: one HMAC per connection on each side (~2 µs) and no extra round trip (the
challenge is in flight while the client connects).

Names follow Ray 2.52+ token authentication: ``AIORAY_AUTH_MODE`` (``token``, the
default, or ``disabled``), ``AIORAY_AUTH_TOKEN`` (``RAY_AUTH_TOKEN`` is also read)
and ``AIORAY_AUTH_TOKEN_PATH`` (a file holding it). A head node without one
generates a token and stores it in its session directory (``auth_token``, mode 0600).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

from aioray.exceptions import AuthenticationError as _AuthenticationError

TOKEN_ENV = "AIORAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "AIORAY_AUTH_TOKEN_PATH"
MODE_ENV = "AIORAY_AUTH_MODE"
TOKEN_FILE = "auth_token"  # inside a session directory
CHALLENGE_BYTES = 16

_token: str | None = None
_loaded = False


# A peer was refused (or refused us) because the cluster tokens differ: Ray's class,
# a ConnectionError too.
AuthenticationError = _AuthenticationError


def enabled() -> bool:
    mode = os.environ.get(MODE_ENV) or os.environ.get("RAY_AUTH_MODE") or "token"
    return mode.lower() != "disabled"


def token_from_env() -> str | None:
    """The token named by the environment (variable, then file), or None."""
    value = os.environ.get(TOKEN_ENV) or os.environ.get("RAY_AUTH_TOKEN")
    if value:
        return value.strip()
    path = os.environ.get(TOKEN_PATH_ENV) or os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        try:
            with open(path) as f:
                value = f.read().strip()
        except OSError as e:
            raise AuthenticationError(f"{TOKEN_PATH_ENV}={path!r} cannot be read: {e}") from None
        if not value:
            raise AuthenticationError(f"{TOKEN_PATH_ENV}={path!r} is empty")
        return value
    return None


def cluster_token() -> str | None:
    """This process's token: set by ``set_token``, else read once from the environment."""
    global _token, _loaded
    if not _loaded:
        _token, _loaded = token_from_env(), True
    return _token if enabled() else None


def set_token(token: str | None) -> None:
    """Use ``token`` for every connection this process opens or accepts from now on."""
    global _token, _loaded
    _token, _loaded = token, True


def reset() -> None:
    """Forget a token set by ``set_token``: the environment's applies again."""
    global _token, _loaded
    _token, _loaded = None, False


def generate_token() -> str:
    return secrets.token_hex(32)


def write_token_file(session_dir: str, token: str) -> str:
    """Store the token in the session directory, readable by its owner only."""
    path = os.path.join(session_dir, TOKEN_FILE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return path


def read_token_file(session_dir: str) -> str | None:
    try:
        with open(os.path.join(session_dir, TOKEN_FILE)) as f:
            return f.read().strip() or None
    except OSError:
        return None


def new_challenge() -> bytes:
    return os.urandom(CHALLENGE_BYTES)


def proof(token: str, challenge: bytes) -> bytes:
    return hmac.new(token.encode(), challenge, hashlib.sha256).digest()


def check(token: str | None, challenge: bytes, answer: object) -> str | None:
    """Why a peer's answer to ``challenge`` is refused, or None when it is accepted."""
    if token is None:
        return None  # this server has no token: authentication is off
    if not isinstance(answer, bytes):
        return (
            "the peer sent no cluster token proof (give it the cluster's token: "
            f"{TOKEN_ENV} or {TOKEN_PATH_ENV})"
        )
    if not hmac.compare_digest(answer, proof(token, challenge)):
        return "the peer's cluster token does not match this cluster's (another cluster's token?)"
    return None
