"""Who may call the HTTP API: client bearer tokens and the workers' own secret.

Clients. ``LEDGER_API_TOKENS`` names a file of lines ``<token> <scope>[,<scope>]``
(blank lines and ``#`` comments allowed). Scopes:

    read    every GET but /v1/health, /v1/openapi.json and /metrics
    write   POST /v1/commands (moving money)

A request sends ``Authorization: Bearer <token>``. No token, or one that is
not in the file, is a 401 ``unauthorized``; a known token without the
route's scope is a 403 ``forbidden``; both carry ``WWW-Authenticate: Bearer``
(RFC 6750). The file is read at start (a broken file stops the worker) and
again on SIGHUP (a broken file then keeps the tokens in force and logs why).

Tokens are kept only as SHA-256 digests. A presented token is hashed and
compared with every digest with :func:`hmac.compare_digest`, all of them,
always, so the time taken does not depend on which token (if any) matched,
nor on a token's length. No token, or any part of a token file line, is ever
logged, counted or put in an error message: errors name line numbers only.

Without the file the API is open, and the worker refuses to bind a host
that is not loopback unless ``LEDGER_API_INSECURE=1`` (:func:`startup_problem`).

Workers. A lookup one worker forwards to another is signed with the forward
secret (:mod:`streams.api.forwarding` has the header). The secret comes from
``LEDGER_FORWARD_SECRET_FILE`` (same format as the leg key file: one secret a
line, at least 32 characters; the first signs, every line verifies) or,
unset, is derived from the leg keys, HMAC-SHA256(leg key, "ledger-forwarding"),
so a deployment needs a single secret.

Pure: no web framework imports here.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("ledger.http.auth")

READ = "read"
WRITE = "write"
SCOPES = (READ, WRITE)
TOKEN_LENGTH_MIN = 16
TOKEN_LENGTH_MAX = 512
# RFC 6750 b64token characters.
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                         "0123456789-._~+/=")
FORWARD_SECRET_LENGTH_MIN = 32
FORWARD_DERIVATION = b"ledger-forwarding"
REALM = "ledger"


class AuthConfigError(RuntimeError):
    """A tokens or secret file that cannot be used. The message never holds
    any part of a token or secret."""


# --------------------------------------------------------------------------
# Client tokens
# --------------------------------------------------------------------------


def _digest(token: str | bytes) -> bytes:
    if isinstance(token, str):
        token = token.encode("utf-8", "surrogateescape")
    return hashlib.sha256(token).digest()


def parse_tokens(text: str, source: str = "the tokens file") -> tuple[tuple[bytes, frozenset[str]], ...]:
    """(sha256(token), scopes) per token line of ``text``; AuthConfigError
    naming the line number (never its contents) if a line is not
    ``<token> <scope>[,<scope>]`` with known scopes."""
    entries: list[tuple[bytes, frozenset[str]]] = []
    seen: set[bytes] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        where = f"{source}, line {number}"
        if len(parts) != 2:
            raise AuthConfigError(f"{where}: expected '<token> <scope>[,<scope>]'")
        token, scope_text = parts
        if not (TOKEN_LENGTH_MIN <= len(token) <= TOKEN_LENGTH_MAX) \
                or not set(token) <= _TOKEN_CHARS:
            raise AuthConfigError(
                f"{where}: a token must be {TOKEN_LENGTH_MIN} to {TOKEN_LENGTH_MAX} "
                f"characters of A-Z a-z 0-9 - . _ ~ + / =")
        scopes = scope_text.split(",")
        if not scopes or any(s not in SCOPES for s in scopes):
            # The scope text is not echoed: a line written the wrong way
            # round would put the token here.
            raise AuthConfigError(f"{where}: scopes must be a comma-separated list of "
                                  f"{', '.join(SCOPES)}")
        digest = _digest(token)
        if digest in seen:
            raise AuthConfigError(f"{where}: the same token is listed twice")
        seen.add(digest)
        entries.append((digest, frozenset(scopes)))
    return tuple(entries)


def load_tokens(path: Path) -> tuple[tuple[bytes, frozenset[str]], ...]:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="strict")
    except OSError as exc:
        raise AuthConfigError(f"cannot read the tokens file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise AuthConfigError(f"the tokens file {path} is not UTF-8 text") from None
    return parse_tokens(text, str(path))


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


@dataclass(frozen=True)
class Denied:
    """Why a request is refused: 401 or 403, a detail and the challenge."""

    status: int
    error: str
    detail: str
    challenge: str


class ClientAuth:
    """The tokens in force (None: the API is open) and the check of one request."""

    def __init__(self, path: Path | None):
        self.path = path
        self._entries = load_tokens(path) if path is not None else None

    @property
    def open(self) -> bool:
        return self._entries is None

    @property
    def count(self) -> int:
        return len(self._entries or ())

    def reload(self) -> bool:
        """Read the file again. On any problem keep the tokens in force, log
        why (without any token) and return False."""
        if self.path is None:
            log.info("SIGHUP: no LEDGER_API_TOKENS, nothing to reload (the API stays open)")
            return True
        try:
            entries = load_tokens(self.path)
        except AuthConfigError as exc:
            log.error("tokens not reloaded, the previous %d stay in force: %s",
                      self.count, exc)
            return False
        self._entries = entries
        log.info("tokens reloaded from %s: %d tokens", self.path, len(entries))
        if not entries:
            log.warning("the tokens file %s holds no token: every client request to a "
                        "protected route is refused", self.path)
        return True

    def scopes_of(self, token: str) -> frozenset[str] | None:
        """The scopes of ``token``, None if it is not known. Compares against
        every token, with no early exit."""
        presented = _digest(token)
        found: frozenset[str] | None = None
        for digest, scopes in self._entries or ():
            match = hmac.compare_digest(presented, digest)
            # Both branches are a local assignment: no timing signal worth
            # having, and every digest is compared whatever matched.
            found = scopes if match else found
        return found

    def check(self, authorization: str | None, scope: str) -> Denied | None:
        """None if a request with this Authorization header may use ``scope``."""
        if self._entries is None:
            return None
        token = bearer_token(authorization)
        if token is None:
            return Denied(401, "unauthorized",
                          "this route needs a bearer token (Authorization: Bearer <token>)",
                          f'Bearer realm="{REALM}"')
        scopes = self.scopes_of(token)
        if scopes is None:
            return Denied(401, "unauthorized", "the bearer token is not valid",
                          f'Bearer realm="{REALM}", error="invalid_token"')
        if scope not in scopes:
            return Denied(403, "forbidden", f"the bearer token lacks the {scope!r} scope",
                          f'Bearer realm="{REALM}", error="insufficient_scope", '
                          f'scope="{scope}"')
        return None


# --------------------------------------------------------------------------
# The workers' forward secret
# --------------------------------------------------------------------------


def load_secrets(path: Path) -> list[bytes]:
    try:
        lines = [line.strip() for line in Path(path).read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthConfigError(f"cannot read the forward secret file {path}: "
                              f"{getattr(exc, 'strerror', None) or 'not text'}") from None
    keys = [line.encode() for line in lines if line and not line.startswith("#")]
    if not keys:
        raise AuthConfigError(f"the forward secret file {path} holds no secret")
    if any(len(k) < FORWARD_SECRET_LENGTH_MIN for k in keys):
        raise AuthConfigError(f"every secret in {path} must be at least "
                              f"{FORWARD_SECRET_LENGTH_MIN} characters")
    return keys


def derive_forward_secret(leg_key: bytes) -> bytes:
    return hmac.new(leg_key, FORWARD_DERIVATION, hashlib.sha256).digest()


def forward_secrets(settings) -> tuple[list[bytes], str]:
    """(secrets, where they come from): the first signs, all verify."""
    if settings.forward_secret_file is not None:
        return load_secrets(settings.forward_secret_file), str(settings.forward_secret_file)
    try:
        leg_keys = settings.leg_auth_keys()
    except Exception as exc:  # LegKeyError: the worker will not start anyway
        raise AuthConfigError(f"no forward secret: LEDGER_FORWARD_SECRET_FILE is not set "
                              f"and the leg key cannot be read ({exc})") from None
    if leg_keys:
        return [derive_forward_secret(k) for k in leg_keys], "the leg key"
    # Leg authentication off and no secret file (throwaway setups): a secret
    # of this process alone, so no other worker's forwarded mark is accepted.
    return [secrets.token_bytes(32)], "this process only (no other worker is trusted)"


# --------------------------------------------------------------------------
# Start-up checks
# --------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


def startup_problem(settings) -> str | None:
    """Why the worker must not start with these settings, or None."""
    if settings.api_tokens_file is None:
        if not is_loopback(settings.web_host) and not settings.api_insecure:
            return (f"LEDGER_WEB_HOST={settings.web_host} is not a loopback address and "
                    f"LEDGER_API_TOKENS is not set: anyone who can reach the port could "
                    f"move money. Set LEDGER_API_TOKENS to a tokens file, bind 127.0.0.1, "
                    f"or set LEDGER_API_INSECURE=1 to serve an open API anyway.")
    else:
        try:
            load_tokens(settings.api_tokens_file)
        except AuthConfigError as exc:
            return f"LEDGER_API_TOKENS: {exc}"
    try:
        forward_secrets(settings)
    except AuthConfigError as exc:
        return f"LEDGER_FORWARD_SECRET_FILE: {exc}"
    from streams.api import tls

    try:
        tls.server_context(settings)
        tls.client_context(settings)
    except tls.TlsConfigError as exc:
        return str(exc)
    return None
