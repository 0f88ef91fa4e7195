"""Authentication and authorization: where the token is, whether it holds, and what it lets a client see."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from core.auth import (
    ANONYMOUS,
    Credentials,
    Principal,
    Refused,
    TokenVerifier,
    Unauthorized,
    credentials_from,
    may_refresh,
    mint_token,
    origin_allowed,
    parse_origins,
    scope_filters,
    scope_query,
)
from core.filters import SubscriptionFilters

NOW = 1_700_000_000.0
LEEWAY = 30.0
# Long enough for HS512, so PyJWT never warns about a short HMAC key.
SECRET = "observatory-test-secret-" + "s" * 48
OTHER_SECRET = "observatory-other-secret-" + "o" * 48
TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0.c2ln"
REASONS = frozenset({"missing token", "invalid token", "token expired", "token not yet valid"})
DROP = object()  # a claim override that removes the claim


# --- builders ---------------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def claims(**overrides: Any) -> dict[str, Any]:
    """A valid claim set at ``NOW``; ``name=DROP`` removes a claim."""
    result: dict[str, Any] = {
        "sub": "alice",
        "sid": "session-1",
        "projectIds": [1, 2],
        "permissions": ["subscribe", "query"],
        "iat": int(NOW),
        "exp": int(NOW) + 3600,
    }
    for name, value in overrides.items():
        if value is DROP:
            result.pop(name, None)
        else:
            result[name] = value
    return result


def hs(payload: dict[str, Any], key: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(payload, key, algorithm=algorithm)


def hand_signed(header: dict[str, Any], payload: dict[str, Any], key: bytes | None) -> str:
    """A JWT built without PyJWT: HS256 over ``key``, or an empty signature when ``key`` is None."""
    signing_input = f"{b64json(header)}.{b64json(payload)}"
    if key is None:
        return signing_input + "."
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def verifier(**overrides: Any) -> TokenVerifier:
    settings: dict[str, Any] = {"key": SECRET, "algorithms": ("HS256",), "leeway": LEEWAY}
    settings.update(overrides)
    return TokenVerifier(**settings)


def verified(v: TokenVerifier, token: str) -> Principal:
    result = v.verify(token, NOW)
    assert isinstance(result, Principal), result
    return result


def principal(
    projects: frozenset[int] | None = frozenset({1, 2}),
    permissions: tuple[str, ...] = ("subscribe", "query"),
    user: str = "alice",
    expires_at: float | None = NOW + 3600,
) -> Principal:
    return Principal(user, "session-1", projects, frozenset(permissions), expires_at)


def filters(**kinds: Any) -> SubscriptionFilters:
    return SubscriptionFilters(**{name: frozenset(values) for name, values in kinds.items()})


def pem_private(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def pem_public(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@functools.cache
def rsa_key(n: int = 0) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def ec_key(n: int = 0) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


# --- credentials_from -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "headers", "expected"),
    [
        ("/ws", {"Authorization": f"Bearer {TOKEN}"}, Credentials(TOKEN)),
        ("/ws", {"Authorization": f"bearer {TOKEN}"}, Credentials(TOKEN)),
        ("/ws", {"Authorization": f"BEARER {TOKEN}"}, Credentials(TOKEN)),
        ("/ws", {"Authorization": f"Bearer    {TOKEN}   "}, Credentials(TOKEN)),
        ("/ws", {"Sec-WebSocket-Protocol": f"bearer, {TOKEN}"}, Credentials(TOKEN, via_subprotocol=True)),
        ("/ws", {"Sec-WebSocket-Protocol": f"Bearer,{TOKEN}"}, Credentials(TOKEN, via_subprotocol=True)),
        (
            "/ws",
            {"Sec-WebSocket-Protocol": f" bearer ,  {TOKEN} , chat"},
            Credentials(TOKEN, via_subprotocol=True),
        ),
        (f"/ws?token={TOKEN}", {}, Credentials(TOKEN)),
        (b"/ws?token=" + TOKEN.encode(), {}, Credentials(TOKEN)),
        ("/ws?a=1&token=ab%2Ecd%2De&b=2", {}, Credentials("ab.cd-e")),
        ("/ws?token=first&token=second", {}, Credentials("first")),
        (
            "/ws?token=query",
            {"Authorization": "Bearer header", "Sec-WebSocket-Protocol": "bearer, protocol"},
            Credentials("header"),
        ),
        (
            "/ws?token=query",
            {"Sec-WebSocket-Protocol": "bearer, protocol"},
            Credentials("protocol", via_subprotocol=True),
        ),
        ("/ws?token=query", {"Authorization": "Basic dXNlcjpwYXNz"}, Credentials("query")),
        ("/ws?token=query", {"Authorization": "Bearer   "}, Credentials("query")),
        ("/ws?token=query", {"Sec-WebSocket-Protocol": f"chat, bearer, {TOKEN}"}, Credentials("query")),
        ("/ws?token=query", {"Sec-WebSocket-Protocol": "bearer"}, Credentials("query")),
        ("/ws", {}, Credentials(None)),
        ("/ws?other=1", {"Authorization": "Basic dXNlcjpwYXNz"}, Credentials(None)),
        ("/ws?token=", {}, Credentials(None)),
        ("/ws", {"Sec-WebSocket-Protocol": "chat, superchat"}, Credentials(None)),
    ],
    ids=[
        "bearer",
        "bearer-lowercase",
        "bearer-uppercase",
        "bearer-extra-spaces",
        "subprotocol",
        "subprotocol-no-space",
        "subprotocol-spaces-and-more",
        "query",
        "query-bytes-path",
        "query-percent-encoded-among-others",
        "query-first-of-two",
        "header-over-subprotocol-and-query",
        "subprotocol-over-query",
        "basic-ignored",
        "empty-bearer-ignored",
        "bearer-not-first-protocol-ignored",
        "bearer-protocol-without-token-ignored",
        "nothing",
        "basic-and-no-token",
        "empty-query-token",
        "other-protocols",
    ],
)
def test_credentials_from(path: bytes | str, headers: dict[str, str], expected: Credentials) -> None:
    assert credentials_from(path, headers) == expected


# --- TokenVerifier.verify: accepted -----------------------------------------------------------------


def test_valid_token_gives_its_principal() -> None:
    token = hs(claims(permissions=["subscribe", "admin"], projectIds=[3, 1, 3]))
    assert verified(verifier(), token) == Principal(
        "alice", "session-1", frozenset({1, 3}), frozenset({"subscribe", "admin"}), NOW + 3600
    )


@pytest.mark.parametrize(
    ("overrides", "field", "expected"),
    [
        ({"projectIds": "*"}, "projects", None),
        ({"projectIds": []}, "projects", frozenset()),
        ({"projectIds": DROP}, "projects", frozenset()),
        ({"projectIds": [0, -1, 2**40]}, "projects", frozenset({0, -1, 2**40})),
        ({"permissions": DROP}, "permissions", frozenset({"subscribe", "query"})),
        ({"permissions": []}, "permissions", frozenset()),
        ({"permissions": ["query", "write", "root", "Admin"]}, "permissions", frozenset({"query"})),
        (
            {"permissions": ["subscribe", "query", "admin"]},
            "permissions",
            frozenset({"subscribe", "query", "admin"}),
        ),
        ({"sid": DROP}, "session", None),
        ({"exp": NOW + 0.5}, "expires_at", NOW + 0.5),
        ({"exp": int(NOW) - 29}, "expires_at", NOW - 29),
        ({"nbf": int(NOW) + 29}, "user", "alice"),
        ({"nbf": int(NOW) - 1000}, "user", "alice"),
        ({"iat": int(NOW) + 29}, "user", "alice"),
        ({"iat": DROP}, "user", "alice"),
    ],
    ids=[
        "all-projects",
        "no-projects",
        "projects-absent",
        "project-id-edges",
        "default-permissions",
        "no-permissions",
        "unknown-permissions-dropped",
        "every-permission",
        "no-session",
        "fractional-exp",
        "expired-within-leeway",
        "nbf-within-leeway",
        "nbf-past",
        "iat-within-leeway",
        "iat-absent",
    ],
)
def test_verify_accepts(overrides: dict[str, Any], field: str, expected: Any) -> None:
    assert getattr(verified(verifier(), hs(claims(**overrides))), field) == expected


def test_other_leeway_moves_the_boundary() -> None:
    token = hs(claims(exp=int(NOW) - 5))
    assert isinstance(verifier(leeway=10.0).verify(token, NOW), Principal)
    assert verifier(leeway=0.0).verify(token, NOW) == Refused(401, "token expired")


@pytest.mark.parametrize(
    ("settings", "overrides"),
    [
        ({"audience": "observatory"}, {"aud": "observatory"}),
        ({"audience": "observatory"}, {"aud": ["other", "observatory"]}),
        ({"issuer": "https://auth.example"}, {"iss": "https://auth.example"}),
        (
            {"audience": "observatory", "issuer": "https://auth.example"},
            {"aud": "observatory", "iss": "https://auth.example"},
        ),
    ],
    ids=["audience", "audience-in-list", "issuer", "both"],
)
def test_verify_accepts_matching_audience_and_issuer(
    settings: dict[str, Any], overrides: dict[str, Any]
) -> None:
    assert verified(verifier(**settings), hs(claims(**overrides))).user == "alice"


@pytest.mark.parametrize("algorithm", ["HS256", "HS384", "HS512"])
def test_every_hmac_algorithm(algorithm: str) -> None:
    v = verifier(algorithms=(algorithm,))
    assert verified(v, hs(claims(), algorithm=algorithm)).user == "alice"


@pytest.mark.parametrize("kind", ["RS256", "ES256"])
def test_asymmetric_tokens(kind: str) -> None:
    key = rsa_key() if kind == "RS256" else ec_key()
    token = jwt.encode(claims(), pem_private(key), algorithm=kind)
    v = verifier(key=pem_public(key), algorithms=(kind,))
    assert verified(v, token) == Principal(
        "alice", "session-1", frozenset({1, 2}), frozenset({"subscribe", "query"}), NOW + 3600
    )


# --- TokenVerifier.verify: refused ------------------------------------------------------------------


def tampered() -> str:
    header, _, signature = hs(claims()).split(".")
    return f"{header}.{b64json(claims(projectIds='*'))}.{signature}"


REFUSALS: list[tuple[str, dict[str, Any], str | None, str]] = [
    # (id, verifier settings, token, expected reason)
    ("none", {}, None, "missing token"),
    ("empty", {}, "", "missing token"),
    ("garbage", {}, "not a token at all", "invalid token"),
    ("three-garbage-parts", {}, "abc.def.ghi", "invalid token"),
    ("json-not-jwt", {}, '{"sub": "alice"}', "invalid token"),
    ("wrong-secret", {}, hs(claims(), key=OTHER_SECRET), "invalid token"),
    ("tampered-payload", {}, tampered(), "invalid token"),
    ("hs384-when-only-hs256", {}, hs(claims(), algorithm="HS384"), "invalid token"),
    ("alg-none", {}, hand_signed({"alg": "none", "typ": "JWT"}, claims(), None), "invalid token"),
    ("alg-None", {}, hand_signed({"alg": "None", "typ": "JWT"}, claims(), None), "invalid token"),
    ("expired", {}, hs(claims(exp=int(NOW) - 31)), "token expired"),
    ("expired-at-leeway-edge", {}, hs(claims(exp=int(NOW) - 30)), "token expired"),
    ("expired-long-ago", {}, hs(claims(exp=1)), "token expired"),
    ("nbf-future", {}, hs(claims(nbf=int(NOW) + 31)), "token not yet valid"),
    ("iat-future", {}, hs(claims(iat=int(NOW) + 31)), "token not yet valid"),
    ("iat-far-future", {}, hs(claims(iat=int(NOW) + 86_400, exp=int(NOW) + 90_000)), "token not yet valid"),
    ("missing-exp", {}, hs(claims(exp=DROP)), "invalid token"),
    ("null-exp", {}, hs(claims(exp=None)), "invalid token"),
    ("string-exp", {}, hs(claims(exp=str(int(NOW) + 3600))), "invalid token"),
    ("bool-exp", {}, hs(claims(exp=True)), "invalid token"),
    ("string-nbf", {}, hs(claims(nbf="0")), "invalid token"),
    ("bool-iat", {}, hs(claims(iat=False)), "invalid token"),
    ("missing-sub", {}, hs(claims(sub=DROP)), "invalid token"),
    ("int-sub", {}, hs(claims(sub=42)), "invalid token"),
    ("list-sub", {}, hs(claims(sub=["alice"])), "invalid token"),
    ("empty-sub", {}, hs(claims(sub="")), "invalid token"),
    ("int-sid", {}, hs(claims(sid=7)), "invalid token"),
    ("string-project-ids", {}, hs(claims(projectIds=["1", "2"])), "invalid token"),
    ("bool-project-ids", {}, hs(claims(projectIds=[True])), "invalid token"),
    ("float-project-ids", {}, hs(claims(projectIds=[1.5])), "invalid token"),
    ("mixed-project-ids", {}, hs(claims(projectIds=[1, "2"])), "invalid token"),
    ("scalar-project-ids", {}, hs(claims(projectIds=1)), "invalid token"),
    ("other-string-project-ids", {}, hs(claims(projectIds="all")), "invalid token"),
    ("object-project-ids", {}, hs(claims(projectIds={"1": True})), "invalid token"),
    ("string-permissions", {}, hs(claims(permissions="admin")), "invalid token"),
    ("int-permissions", {}, hs(claims(permissions=[1])), "invalid token"),
    ("mixed-permissions", {}, hs(claims(permissions=["subscribe", None])), "invalid token"),
    ("object-permissions", {}, hs(claims(permissions={"admin": True})), "invalid token"),
    ("wrong-audience", {"audience": "observatory"}, hs(claims(aud="other")), "invalid token"),
    ("missing-audience", {"audience": "observatory"}, hs(claims()), "invalid token"),
    ("audience-prefix", {"audience": "observatory"}, hs(claims(aud="observ")), "invalid token"),
    (
        "wrong-issuer",
        {"issuer": "https://auth.example"},
        hs(claims(iss="https://evil.example")),
        "invalid token",
    ),
    ("missing-issuer", {"issuer": "https://auth.example"}, hs(claims()), "invalid token"),
    ("issuer-substring", {"issuer": "https://auth.example"}, hs(claims(iss="auth")), "invalid token"),
]


@pytest.mark.parametrize(
    ("settings", "token", "reason"),
    [case[1:] for case in REFUSALS],
    ids=[case[0] for case in REFUSALS],
)
def test_verify_refuses(settings: dict[str, Any], token: str | None, reason: str) -> None:
    result = verifier(**settings).verify(token, NOW)
    assert result == Refused(401, reason)
    assert_reason_leaks_nothing(result, token, SECRET)


def assert_reason_leaks_nothing(result: Refused, token: str | None, key: str) -> None:
    assert result.reason in REASONS
    assert len(result.reason) <= 32
    for part in (token or "").split("."):
        if len(part) >= 4:
            assert part not in result.reason
    assert key not in result.reason


@pytest.mark.parametrize(
    "overrides",
    [
        {"exp": float("nan")},
        {"exp": float("inf")},
        {"nbf": float("nan")},
        {"iat": float("nan")},
    ],
    ids=["exp-nan", "exp-infinity", "nbf-nan", "iat-nan"],
)
def test_non_finite_time_claims_are_refused(overrides: dict[str, Any]) -> None:
    token = hs(claims(**overrides))  # json.dumps writes NaN / Infinity, which json.loads reads back
    result = verifier().verify(token, NOW)
    assert isinstance(result, Refused), result
    assert result.status == 401


def test_rs256_verifier_refuses_other_keys_and_algorithms() -> None:
    public = pem_public(rsa_key())
    v = verifier(key=public, algorithms=("RS256",))
    for token in (
        jwt.encode(claims(), pem_private(rsa_key(1)), algorithm="RS256"),
        jwt.encode(claims(), pem_private(ec_key()), algorithm="ES256"),
        jwt.encode(claims(), pem_private(rsa_key()), algorithm="RS384"),
        hs(claims()),
    ):
        result = v.verify(token, NOW)
        assert result == Refused(401, "invalid token")
        assert_reason_leaks_nothing(result, token, public)


def test_es256_verifier_refuses_another_curve_key() -> None:
    v = verifier(key=pem_public(ec_key()), algorithms=("ES256",))
    token = jwt.encode(claims(), pem_private(ec_key(1)), algorithm="ES256")
    assert v.verify(token, NOW) == Refused(401, "invalid token")


@pytest.mark.parametrize(
    "algorithms", [("RS256",), ("RS256", "HS256")], ids=["rs256-only", "misconfigured-with-hs256"]
)
def test_algorithm_confusion_is_refused(algorithms: tuple[str, ...]) -> None:
    """An HS256 token whose HMAC secret is the server's public key PEM must not pass as RS256."""
    public = pem_public(rsa_key())
    forged = hand_signed(
        {"alg": "HS256", "typ": "JWT"},
        claims(projectIds="*", permissions=["admin"]),
        public.encode(),
    )
    # The forgery is well formed: it verifies under plain HS256 with the PEM text as the secret.
    signing_input, _, signature = forged.rpartition(".")
    expected = hmac.new(public.encode(), signing_input.encode(), hashlib.sha256).digest()
    assert signature == b64url(expected)
    result = verifier(key=public, algorithms=algorithms).verify(forged, NOW)
    assert result == Refused(401, "invalid token")
    assert_reason_leaks_nothing(result, forged, public)


# --- mint_token -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "settings", "expected"),
    [
        (
            {"user": "bob", "projects": [5, 6], "ttl": 600.0, "session": "s-9"},
            {},
            Principal("bob", "s-9", frozenset({5, 6}), frozenset({"subscribe", "query"}), NOW + 600),
        ),
        (
            {"user": "root", "projects": None, "permissions": ["admin"], "ttl": 60.0},
            {},
            Principal("root", None, None, frozenset({"admin"}), NOW + 60),
        ),
        (
            {"user": "carol", "projects": (), "permissions": ("query", "query"), "ttl": 1.0},
            {},
            Principal("carol", None, frozenset(), frozenset({"query"}), NOW + 1),
        ),
        (
            {"user": "dan", "projects": [1], "ttl": 120.0, "audience": "obs", "issuer": "https://auth"},
            {"audience": "obs", "issuer": "https://auth"},
            Principal("dan", None, frozenset({1}), frozenset({"subscribe", "query"}), NOW + 120),
        ),
    ],
    ids=["scoped", "all-projects-admin", "no-projects", "audience-issuer"],
)
def test_mint_round_trips(kwargs: dict[str, Any], settings: dict[str, Any], expected: Principal) -> None:
    token = mint_token(SECRET, "HS256", now=NOW, **kwargs)
    assert verified(verifier(**settings), token) == expected


def test_mint_claims() -> None:
    token = mint_token(
        SECRET,
        "HS256",
        user="bob",
        projects=[2, 1],
        permissions=["subscribe", "admin", "subscribe"],
        ttl=90.0,
        session="s-1",
        audience="obs",
        issuer="https://auth",
        now=NOW + 0.75,
    )
    options = {"verify_exp": False, "verify_iat": False, "verify_aud": False, "verify_iss": False}
    decoded = jwt.decode(token, SECRET, algorithms=["HS256"], options=options)
    assert decoded == {
        "sub": "bob",
        "sid": "s-1",
        "projectIds": [2, 1],
        "permissions": ["admin", "subscribe"],
        "iat": int(NOW),
        "exp": int(NOW + 90.75),
        "aud": "obs",
        "iss": "https://auth",
    }
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_mint_without_optional_claims() -> None:
    token = mint_token(SECRET, "HS256", user="bob", projects=None, ttl=10.0, now=NOW)
    decoded = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert set(decoded) == {"sub", "projectIds", "permissions", "iat", "exp"}
    assert decoded["projectIds"] == "*"


def test_minted_token_with_other_audience_is_refused() -> None:
    token = mint_token(SECRET, "HS256", user="bob", projects=[1], ttl=60.0, audience="other", now=NOW)
    assert verifier(audience="obs").verify(token, NOW) == Refused(401, "invalid token")


def test_minted_token_expires() -> None:
    token = mint_token(SECRET, "HS256", user="bob", projects=[1], ttl=60.0, now=NOW)
    v = verifier()
    assert isinstance(v.verify(token, NOW + 60 + LEEWAY - 1), Principal)
    assert v.verify(token, NOW + 60 + LEEWAY) == Refused(401, "token expired")


@pytest.mark.parametrize("kind", ["RS256", "ES256"])
def test_mint_asymmetric_round_trips(kind: str) -> None:
    key = rsa_key() if kind == "RS256" else ec_key()
    token = mint_token(pem_private(key), kind, user="eve", projects=[9], ttl=30.0, now=NOW)
    v = verifier(key=pem_public(key), algorithms=(kind,))
    assert verified(v, token) == Principal(
        "eve", None, frozenset({9}), frozenset({"subscribe", "query"}), NOW + 30
    )


# --- scope_filters ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "requested", "expected"),
    [
        (principal(projects=None), filters(), filters()),
        (principal(projects=None), filters(projectIds={7, 8}), filters(projectIds={7, 8})),
        (principal(), filters(), filters(projectIds={1, 2})),
        (
            principal(),
            filters(
                eventTypes={"message_added"}, sessionIds={"s"}, messageTypes={"user"}, toolNames={"Bash"}
            ),
            filters(
                projectIds={1, 2},
                eventTypes={"message_added"},
                sessionIds={"s"},
                messageTypes={"user"},
                toolNames={"Bash"},
            ),
        ),
        (principal(), filters(projectIds={1}), filters(projectIds={1})),
        (
            principal(),
            filters(projectIds={1, 2}, eventTypes={"x"}),
            filters(projectIds={1, 2}, eventTypes={"x"}),
        ),
        (principal(permissions=("admin",)), filters(), filters(projectIds={1, 2})),
        (
            principal(projects=None, permissions=("admin",)),
            filters(eventTypes={"x"}),
            filters(eventTypes={"x"}),
        ),
    ],
    ids=[
        "all-projects-unchanged",
        "all-projects-any-ids",
        "narrowed",
        "narrowed-keeps-other-kinds",
        "within",
        "exactly-all-own",
        "admin-implies-subscribe",
        "admin-all-projects",
    ],
)
def test_scope_filters_allows(
    who: Principal, requested: SubscriptionFilters, expected: SubscriptionFilters
) -> None:
    assert scope_filters(requested, who) == expected


@pytest.mark.parametrize(
    ("who", "requested", "needles"),
    [
        (principal(), filters(projectIds={3}), ["3"]),
        (principal(), filters(projectIds={1, 3, 4}), ["3", "4"]),
        (principal(permissions=("query",)), filters(), ["subscribe"]),
        (principal(projects=None, permissions=()), filters(), ["subscribe"]),
        (principal(projects=frozenset()), filters(), ["no project"]),
        (principal(projects=frozenset()), filters(projectIds={1}), ["1"]),
    ],
    ids=[
        "outside",
        "partly-outside",
        "no-subscribe-permission",
        "no-permission-all-projects",
        "empty-project-set",
        "empty-project-set-named",
    ],
)
def test_scope_filters_refuses(who: Principal, requested: SubscriptionFilters, needles: list[str]) -> None:
    result = scope_filters(requested, who)
    assert isinstance(result, Unauthorized), result
    for needle in needles:
        assert needle in result.message


def test_scope_filters_names_only_the_outside_projects() -> None:
    result = scope_filters(filters(projectIds={1, 2, 30}), principal())
    assert result == Unauthorized("not authorized for project(s) 30")


# --- scope_query ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "project", "expected"),
    [
        (principal(), 1, None),
        (principal(), None, frozenset({1, 2})),
        (principal(projects=None), None, None),
        (principal(projects=None), 12345, None),
        (principal(projects=frozenset()), None, frozenset()),
        (principal(permissions=("admin",)), 2, None),
        (principal(permissions=("admin",), projects=None), None, None),
    ],
    ids=[
        "inside",
        "scoped-all-mine",
        "all-projects",
        "all-projects-any",
        "empty-scope-stays-empty",
        "admin-implies-query",
        "admin-everything",
    ],
)
def test_scope_query_allows(who: Principal, project: int | None, expected: frozenset[int] | None) -> None:
    assert scope_query(project, who) == expected


@pytest.mark.parametrize(
    ("who", "project", "needle"),
    [
        (principal(), 3, "3"),
        (principal(projects=frozenset()), 1, "1"),
        (principal(permissions=("subscribe",)), 1, "query"),
        (principal(permissions=("subscribe",), projects=None), None, "query"),
        (principal(permissions=()), None, "query"),
    ],
    ids=["outside", "empty-scope", "no-query-permission", "no-query-all-projects", "no-permissions"],
)
def test_scope_query_refuses(who: Principal, project: int | None, needle: str) -> None:
    result = scope_query(project, who)
    assert isinstance(result, Unauthorized), result
    assert needle in result.message


# --- may_refresh ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [
        (principal(expires_at=NOW + 7200), True),
        (principal(expires_at=NOW + 3600.5), True),
        (principal(expires_at=NOW + 7200, projects=None, permissions=("admin",)), True),
        (principal(expires_at=NOW + 7200, user="mallory"), False),
        (principal(expires_at=NOW + 7200, user="Alice"), False),
        (principal(expires_at=NOW + 3600), False),
        (principal(expires_at=NOW + 60), False),
    ],
    ids=[
        "later",
        "slightly-later",
        "later-wider",
        "other-user",
        "user-case-differs",
        "same-expiry",
        "earlier",
    ],
)
def test_may_refresh(candidate: Principal, expected: bool) -> None:
    assert may_refresh(principal(expires_at=NOW + 3600), candidate) is expected


def test_anonymous_refreshes_to_anonymous_is_not_newer() -> None:
    assert may_refresh(ANONYMOUS, ANONYMOUS) is False


# --- origin_allowed / parse_origins -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "host", "allowed", "expected"),
    [
        (None, None, (), True),
        (None, "example.com:8080", ("https://other.example",), True),
        ("http://example.com:8080", "example.com:8080", (), True),
        ("https://example.com:8080", "example.com:8080", (), True),
        ("https://example.com:8080/", "example.com:8080", (), True),
        ("HTTPS://Example.COM:8080", "example.com:8080", (), True),
        ("http://example.com:8080", "EXAMPLE.com:8080", (), True),
        ("https://example.com", "example.com", (), True),
        ("http://evil.example:8080", "example.com:8080", (), False),
        ("http://example.com:9090", "example.com:8080", (), False),
        ("http://example.com", "example.com:8080", (), False),
        ("http://example.com:8080.evil.example", "example.com:8080", (), False),
        ("http://sub.example.com:8080", "example.com:8080", (), False),
        ("http://example.com:8080", None, (), False),
        ("null", "example.com:8080", (), False),
        ("https://app.example", "example.com:8080", ("https://app.example",), True),
        ("HTTPS://APP.example/", "example.com:8080", ("https://app.example",), True),
        ("https://app.example", None, ("https://app.example",), True),
        ("http://app.example", "example.com:8080", ("https://app.example",), False),
        ("https://app.example:8443", "example.com:8080", ("https://app.example",), False),
        ("https://evil.example", "example.com:8080", ("https://app.example", "https://b.example"), False),
        ("https://b.example", "example.com:8080", ("https://app.example", "https://b.example"), True),
        ("http://example.com:8080", "example.com:8080", ("https://app.example",), False),
        ("https://anything.example", "example.com:8080", ("*",), True),
        ("null", None, ("https://app.example", "*"), True),
    ],
    ids=[
        "no-origin",
        "no-origin-with-list",
        "same-host-http",
        "same-host-https",
        "same-host-trailing-slash",
        "same-host-origin-case",
        "same-host-host-case",
        "same-host-default-port",
        "other-host",
        "other-port",
        "missing-port",
        "host-prefix-trick",
        "subdomain",
        "host-missing",
        "null-origin",
        "listed",
        "listed-normalized",
        "listed-host-missing",
        "listed-other-scheme",
        "listed-other-port",
        "not-listed",
        "second-listed",
        "own-host-not-listed",
        "wildcard",
        "wildcard-among-others",
    ],
)
def test_origin_allowed(
    origin: str | None, host: str | None, allowed: tuple[str, ...], expected: bool
) -> None:
    assert origin_allowed(origin, host, allowed) is expected


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("", ()),
        ("https://app.example", ("https://app.example",)),
        (" HTTPS://App.Example/ , http://localhost:3000 ", ("https://app.example", "http://localhost:3000")),
        ("https://a.example,, ,https://b.example/", ("https://a.example", "https://b.example")),
        ("*", ("*",)),
    ],
    ids=["empty", "one", "normalized", "empty-items-dropped", "wildcard"],
)
def test_parse_origins(setting: str, expected: tuple[str, ...]) -> None:
    assert parse_origins(setting) == expected


def test_parsed_origins_admit_a_browser_origin() -> None:
    allowed = parse_origins("HTTPS://App.Example/, http://localhost:3000")
    assert origin_allowed("https://app.example", "server:8080", allowed)
    assert origin_allowed("http://localhost:3000", "server:8080", allowed)
    assert not origin_allowed("http://localhost:3001", "server:8080", allowed)
