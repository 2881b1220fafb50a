"""API-key authentication and role checks.

Keys are verified against the store (stored as SHA-256 only) on every request, so a revoked key stops
working at once. Roles: admin may do everything; manager reads; integration writes history and scores.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import Request
from sqlalchemy.engine import Connection

from serving.errors import AuthenticationError, ForbiddenError, is_store_outage
from serving.store import ApiKey, Store

logger = logging.getLogger(__name__)

# Keys verified while the store answered, by the SHA-256 of the key: used only while the store is
# unreachable, so inline scoring goes on through an outage. A revocation is a write to the store, so
# none can have happened since that the store could tell us about.
_MAX_REMEMBERED_KEYS = 10_000

__all__ = ["ROLES", "ApiKey", "KeyCheck", "authenticate", "require_role", "require_role_later"]

ROLES = ("admin", "manager", "integration")


def _bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


_MISSING_KEY = "missing API key: send 'Authorization: Bearer <key>'"


def authenticate(
    request: Request, conn: Connection | None = None, stored: Mapping[str, Any] | None = None
) -> ApiKey:
    """The caller's key from `Authorization: Bearer …`; raises AuthenticationError if missing or invalid.
    `conn`: read in that connection's transaction; `stored`: the key's row already read there (see
    `Store.verify_api_key`)."""
    token = _bearer_token(request)
    if token is None:
        raise AuthenticationError(_MISSING_KEY)
    store: Store = request.app.state.store
    remembered: dict[str, ApiKey] = request.app.state.verified_keys
    digest = hashlib.sha256(token.encode()).hexdigest()
    try:
        key = store.verify_api_key(token, conn, stored)
    except Exception as exc:
        if not is_store_outage(exc) or digest not in remembered:
            raise
        logger.warning("store unreachable: key %s accepted as last verified", remembered[digest].key_id)
        key = remembered[digest]
    else:
        if key is not None and key.revoked_at is None:
            if len(remembered) >= _MAX_REMEMBERED_KEYS:
                remembered.clear()
            remembered[digest] = key
        else:
            remembered.pop(digest, None)
    if key is None or key.revoked_at is not None:
        raise AuthenticationError("invalid or revoked API key")
    # The access log reads this back from the ASGI scope after the response.
    request.state.key_id = key.key_id
    return key


def _allowed_roles(roles: tuple[str, ...]) -> frozenset[str]:
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown role(s): {sorted(unknown)}")
    return frozenset(roles) | {"admin"}


def _authorized(request: Request, allowed: frozenset[str], conn: Connection | None = None,
                stored: Mapping[str, Any] | None = None) -> ApiKey:
    key = authenticate(request, conn, stored)
    if key.role not in allowed:
        raise ForbiddenError(f"the {key.role!r} role may not do this; needs one of {sorted(allowed)}")
    return key


def require_role(*roles: str) -> Callable[[Request], ApiKey]:
    """A dependency that authenticates the caller and allows only the given roles (admin always)."""
    allowed = _allowed_roles(roles)

    def dependency(request: Request) -> ApiKey:
        return _authorized(request, allowed)

    dependency.__name__ = f"require_role_{'_'.join(sorted(allowed))}"
    return dependency


class KeyCheck:
    """`require_role`'s check, to be run by the route (`check()`: the caller's `ApiKey`, or the same 401 /
    403) in the threadpool hop that does its work: the key is read from the store, which a dependency can
    only do in a threadpool hop of its own. `check(conn)` reads it in that connection's transaction (the
    route's write: on PostgreSQL a transaction of its own cost a connection check, BEGIN and ROLLBACK,
    each a round trip); `check(conn, stored)` takes the key's row as a statement there already read it
    (`Store.write_events` reads it with the deals' lock: `key_id` names it). Runs once; later calls answer
    the same."""

    def __init__(self, request: Request, allowed: frozenset[str]) -> None:
        self._request = request
        self._allowed = allowed
        self._key: ApiKey | None = None

    @property
    def key_id(self) -> str | None:
        """The key id the request's bearer key names (None when it names none)."""
        token = _bearer_token(self._request)
        return None if token is None else Store.key_id_of(token)

    @property
    def passed(self) -> bool:
        """Whether the check already ran and let the caller in (calling it again answers at once)."""
        return self._key is not None

    def __call__(self, conn: Connection | None = None, stored: Mapping[str, Any] | None = None) -> ApiKey:
        if self._key is None:
            self._key = _authorized(self._request, self._allowed, conn, stored)
        return self._key


def require_role_later(*roles: str) -> Callable[[Request], Awaitable[KeyCheck]]:
    """`require_role` for an `async` route that runs its work in one threadpool hop: an `async` dependency
    that refuses a request without a key at once (401) and returns the rest of the check (`KeyCheck`),
    which the route runs first in its hop. A request whose body is invalid is answered after the check
    (`serving.errors`' validation handler runs it), so a bad key still answers 401 or 403 before 422, as
    with `require_role`."""
    allowed = _allowed_roles(roles)

    async def dependency(request: Request) -> KeyCheck:
        if _bearer_token(request) is None:
            raise AuthenticationError(_MISSING_KEY)
        check = KeyCheck(request, allowed)
        request.state.key_check = check
        return check

    dependency.__name__ = f"require_role_later_{'_'.join(sorted(allowed))}"
    return dependency
