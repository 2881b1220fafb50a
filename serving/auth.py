"""API-key authentication and role checks.

Keys are verified against the store (stored as SHA-256 only) on every request, so a revoked key stops
working at once. Roles: admin may do everything; manager reads; integration writes history and scores.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable

from fastapi import Request

from serving.errors import AuthenticationError, ForbiddenError, is_store_outage
from serving.store import ApiKey, Store

logger = logging.getLogger(__name__)

# Keys verified while the store answered, by the SHA-256 of the key: used only while the store is
# unreachable, so inline scoring goes on through an outage. A revocation is a write to the store, so
# none can have happened since that the store could tell us about.
_MAX_REMEMBERED_KEYS = 10_000

__all__ = ["ROLES", "ApiKey", "authenticate", "require_role"]

ROLES = ("admin", "manager", "integration")


def _bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authenticate(request: Request) -> ApiKey:
    """The caller's key from `Authorization: Bearer …`; raises AuthenticationError if missing or invalid."""
    token = _bearer_token(request)
    if token is None:
        raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'")
    store: Store = request.app.state.store
    remembered: dict[str, ApiKey] = request.app.state.verified_keys
    digest = hashlib.sha256(token.encode()).hexdigest()
    try:
        key = store.verify_api_key(token)
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


def require_role(*roles: str) -> Callable[[Request], ApiKey]:
    """A dependency that authenticates the caller and allows only the given roles (admin always)."""
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown role(s): {sorted(unknown)}")
    allowed = frozenset(roles) | {"admin"}

    def dependency(request: Request) -> ApiKey:
        key = authenticate(request)
        if key.role not in allowed:
            raise ForbiddenError(f"the {key.role!r} role may not do this; needs one of {sorted(allowed)}")
        return key

    dependency.__name__ = f"require_role_{'_'.join(sorted(allowed))}"
    return dependency
