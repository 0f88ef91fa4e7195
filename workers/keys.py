"""Where the token keys come from: a configured secret, a key file, or a secret made on first start.

Read once by the supervisor before it forks, so every worker verifies with the same key and no
child touches the user's files.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import jwt

from core.auth import ASYMMETRIC_ALGORITHMS, HMAC_ALGORITHMS, TokenVerifier
from core.config import Settings
from core.errors import ConfigError

SECRET_FILE_NAME = "jwt-secret"


@dataclass(frozen=True, slots=True)
class AuthSetup:
    verifier: TokenVerifier | None  # None: authentication is off
    signing_key: str | None  # the HS secret, when tokens can be minted here
    generated_at: Path | None = None  # where a first-start secret was written

    @property
    def algorithm(self) -> str:
        return self.verifier.algorithms[0] if self.verifier else "HS256"


def config_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".config")
    return Path(base) / "observatory"


def _read(path: str, option: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {option} {path}: {exc.strerror}") from None


def _generated_secret(env: Mapping[str, str]) -> tuple[str, Path, bool]:
    """The user's local secret, created owner-only on first use. Returns (secret, path, created)."""
    directory = config_dir(env)
    path = directory / SECRET_FILE_NAME
    if path.exists():
        return _read(str(path), "generated secret file"), path, False
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    # O_EXCL: two first starts racing each other must not both write, and a planted file is refused.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secret + "\n")
    return secret, path, True


def _algorithms(
    settings: Settings, allowed: tuple[str, ...], default: tuple[str, ...], kind: str
) -> tuple[str, ...]:
    chosen = tuple(a.strip() for a in settings.jwt_algorithms.split(",") if a.strip()) or default
    # Mixing families would let an HS256 token "signed" with the public key pass as valid.
    wrong = [a for a in chosen if a not in allowed]
    if wrong:
        raise ConfigError(
            f"invalid value for jwt_algorithms: {', '.join(wrong)} cannot be used with {kind}; "
            f"choose from {', '.join(allowed)}"
        )
    return chosen


def _loads_as(key: str, algorithm: str) -> bool:
    try:
        jwt.algorithms.get_default_algorithms()[algorithm].prepare_key(key)
    except (ValueError, TypeError, jwt.PyJWTError, KeyError):
        return False
    return True


def load_auth(settings: Settings, env: Mapping[str, str]) -> AuthSetup:
    if not settings.auth:
        return AuthSetup(None, None)
    audience = settings.jwt_audience or None
    issuer = settings.jwt_issuer or None
    if settings.jwt_public_key_file:
        if settings.jwt_secret or settings.jwt_secret_file:
            raise ConfigError(
                "give either jwt_public_key_file or a secret (jwt_secret/jwt_secret_file), not both"
            )
        key = _read(settings.jwt_public_key_file, "jwt_public_key_file")
        algorithms = _algorithms(settings, ASYMMETRIC_ALGORITHMS, ("RS256", "ES256"), "a public key")
        if not any(_loads_as(key, algorithm) for algorithm in algorithms):
            raise ConfigError(
                f"jwt_public_key_file {settings.jwt_public_key_file} holds no public key usable with "
                f"{', '.join(algorithms)}"
            )
        verifier = TokenVerifier(key, algorithms, audience, issuer, settings.jwt_leeway)
        return AuthSetup(verifier, None)
    generated_at = None
    if settings.jwt_secret:
        secret = settings.jwt_secret
    elif settings.jwt_secret_file:
        secret = _read(settings.jwt_secret_file, "jwt_secret_file")
    else:
        secret, path, created = _generated_secret(env)
        generated_at = path if created else None
    if len(secret) < 32:
        raise ConfigError("the JWT secret is too short: use at least 32 characters")
    algorithms = _algorithms(settings, HMAC_ALGORITHMS, ("HS256",), "a shared secret")
    verifier = TokenVerifier(secret, algorithms, audience, issuer, settings.jwt_leeway)
    return AuthSetup(verifier, secret, generated_at)
