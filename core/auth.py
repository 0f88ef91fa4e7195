"""Authentication and authorization decisions: who a connection is, and what it may see.

Pure: the token arrives as text, time as a number, keys as bytes. A handshake gets a ``Principal``
or a ``Refused`` value carrying the HTTP status; a subscription or query outside the principal's
projects gets a ``ProtocolError`` with ``UNAUTHORIZED``. The reason a token failed is kept short
and generic on purpose: a client learns that it was refused, not which check to work around.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import jwt

from core.filters import SubscriptionFilters

PERMISSIONS = frozenset({"subscribe", "query", "admin"})
ALL_PROJECTS = "*"
BEARER_PROTOCOL = "bearer"
HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512")


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated connection: the token's claims that matter to the server."""

    user: str
    session: str | None
    projects: frozenset[int] | None  # None: every project ("*")
    permissions: frozenset[str]
    expires_at: float | None  # epoch seconds

    def may(self, permission: str) -> bool:
        return permission in self.permissions or "admin" in self.permissions

    def sees_project(self, project_id: int) -> bool:
        return self.projects is None or project_id in self.projects


ANONYMOUS = Principal("anonymous", None, None, frozenset({"admin"}), None)


@dataclass(frozen=True, slots=True)
class Refused:
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class Credentials:
    """Where the token came from matters: the subprotocol way needs ``bearer`` echoed back."""

    token: str | None
    via_subprotocol: bool = False


def credentials_from(path: bytes | str, headers: Mapping[str, str]) -> Credentials:
    """Find the token: ``Authorization: Bearer``, then ``Sec-WebSocket-Protocol``, then ``?token=``."""
    authorization = headers.get("Authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return Credentials(value.strip())
    offered = [p.strip() for p in headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    if len(offered) >= 2 and offered[0].lower() == BEARER_PROTOCOL:
        return Credentials(offered[1], via_subprotocol=True)
    raw_path = path.decode("latin-1") if isinstance(path, bytes) else path
    _, _, query = raw_path.partition("?")
    tokens = parse_qs(query).get("token")
    return Credentials(tokens[0] if tokens else None)


@dataclass(frozen=True, slots=True)
class TokenVerifier:
    key: str | bytes
    algorithms: tuple[str, ...]
    audience: str | None = None
    issuer: str | None = None
    leeway: float = 30.0

    def verify(self, token: str | None, now: float) -> Principal | Refused:
        if not token:
            return Refused(401, "missing token")
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=list(self.algorithms),
                audience=self.audience,
                issuer=self.issuer,
                # Time claims are checked below against the caller's clock, so they can be tested.
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": self.audience is not None,
                    "verify_iss": self.issuer is not None,
                    "require": ["exp", "sub"],
                },
            )
        except jwt.PyJWTError:
            return Refused(401, "invalid token")
        return principal_from_claims(claims, now, self.leeway)


def _number(value: Any) -> bool:
    # NaN and Infinity parse from JSON too: an exp of NaN would never compare as expired.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def principal_from_claims(claims: Mapping[str, Any], now: float, leeway: float) -> Principal | Refused:
    raw_exp, nbf, iat = claims.get("exp"), claims.get("nbf"), claims.get("iat")
    if not _number(raw_exp) or any(v is not None and not _number(v) for v in (nbf, iat)):
        return Refused(401, "invalid token")
    exp = float(raw_exp)  # type: ignore[arg-type]
    if exp <= now - leeway:
        return Refused(401, "token expired")
    if (nbf is not None and nbf > now + leeway) or (iat is not None and iat > now + leeway):
        return Refused(401, "token not yet valid")
    user, session = claims.get("sub"), claims.get("sid")
    if not isinstance(user, str) or not user or (session is not None and not isinstance(session, str)):
        return Refused(401, "invalid token")
    projects = claims.get("projectIds", [])
    if projects == ALL_PROJECTS:
        scope = None
    elif isinstance(projects, list) and all(isinstance(p, int) and not isinstance(p, bool) for p in projects):
        scope = frozenset(projects)
    else:
        return Refused(401, "invalid token")
    permissions = claims.get("permissions", ["subscribe", "query"])
    if not isinstance(permissions, list) or not all(isinstance(p, str) for p in permissions):
        return Refused(401, "invalid token")
    return Principal(user, session, scope, frozenset(permissions) & PERMISSIONS, exp)


def mint_token(
    key: str | bytes,
    algorithm: str,
    *,
    user: str,
    projects: Sequence[int] | None,
    permissions: Iterable[str] = ("subscribe", "query"),
    ttl: float,
    session: str | None = None,
    audience: str | None = None,
    issuer: str | None = None,
    now: float | None = None,
) -> str:
    issued = time.time() if now is None else now
    claims: dict[str, Any] = {
        "sub": user,
        "projectIds": ALL_PROJECTS if projects is None else list(projects),
        "permissions": sorted(set(permissions)),
        "iat": int(issued),
        "exp": int(issued + ttl),
    }
    if session is not None:
        claims["sid"] = session
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    return jwt.encode(claims, key, algorithm=algorithm)


@dataclass(frozen=True, slots=True)
class Unauthorized:
    message: str


def scope_filters(filters: SubscriptionFilters, principal: Principal) -> SubscriptionFilters | Unauthorized:
    """Narrow a subscription to the principal's projects, or refuse one that names others."""
    if not principal.may("subscribe"):
        return Unauthorized("this token may not subscribe")
    if principal.projects is None:
        return filters
    if not filters.projectIds:
        if not principal.projects:
            return Unauthorized("this token grants no project")
        return SubscriptionFilters(
            projectIds=principal.projects,
            eventTypes=filters.eventTypes,
            sessionIds=filters.sessionIds,
            messageTypes=filters.messageTypes,
            toolNames=filters.toolNames,
        )
    outside = filters.projectIds - principal.projects
    if outside:
        return Unauthorized(f"not authorized for project(s) {', '.join(map(str, sorted(outside)[:10]))}")
    return filters


def scope_query(project_id: int | None, principal: Principal) -> frozenset[int] | Unauthorized | None:
    """The projects a query may read: None for all, a set to restrict to, or a refusal."""
    if not principal.may("query"):
        return Unauthorized("this token may not query")
    if project_id is not None:
        return (
            None
            if principal.sees_project(project_id)
            else Unauthorized(f"not authorized for project {project_id}")
        )
    return principal.projects


def may_refresh(current: Principal, candidate: Principal) -> bool:
    """A refreshed token must belong to the same user and reach further into the future."""
    return candidate.user == current.user and (candidate.expires_at or 0) > (current.expires_at or 0)


def parse_origins(setting: str) -> tuple[str, ...]:
    return tuple(o.strip().rstrip("/").lower() for o in setting.split(",") if o.strip())


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    """Cross-site WebSocket hijacking guard: a browser page may connect only from an allowed origin.

    No ``Origin`` header means no browser, so nothing to guard. With no allow-list, a page served
    from the server's own host (any scheme) is allowed, and nothing else.
    """
    if origin is None:
        return True
    normalized = origin.strip().rstrip("/").lower()
    if "*" in allowed:
        return True
    if allowed:
        return normalized in allowed
    _, _, origin_host = normalized.partition("://")
    return host is not None and origin_host == host.strip().lower()
