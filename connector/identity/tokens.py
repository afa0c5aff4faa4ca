"""Membership tokens: short-lived JWTs the operator issues to participants.

A token is a compact JWS, EdDSA (Ed25519), ``typ: tds-membership+jwt``, with ``iss``,
``sub`` (participant id), ``aud`` (space id), ``exp``, ``iat``, ``jti``, ``role``,
``attrs`` and ``cnf: {"x5t#S256": ...}`` binding it to the participant's TLS certificate
(RFC 8705). Verification pins the algorithm, type, issuer and audience: nothing in the
token chooses how it is checked.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector.errors import AuthenticationError

__all__ = [
    "ALGORITHM",
    "TOKEN_TYPE",
    "Membership",
    "check_token_time",
    "issue_membership_token",
    "membership_of_token",
    "verify_membership_token",
    "verify_operator_jws",
]

ALGORITHM = "EdDSA"
TOKEN_TYPE = "tds-membership+jwt"  # noqa: S105 (a JWS type, not a secret)
_REQUIRED = ["iss", "sub", "aud", "exp", "iat", "jti"]


@dataclass(frozen=True)
class Membership:
    """A verified member of the space: what handlers and policies may rely on."""

    participant: str
    role: str
    space: str
    certificate_thumbprint: str
    expires_at: int
    token_id: str
    attrs: dict[str, str] = field(default_factory=dict)


def issue_membership_token(
    key: ed25519.Ed25519PrivateKey,
    *,
    issuer: str,
    space: str,
    participant: str,
    role: str,
    certificate_thumbprint: str,
    attrs: dict[str, str],
    now: float,
    ttl_seconds: int,
) -> tuple[str, int]:
    """Sign a membership token; return it and its expiry (Unix seconds)."""
    iat = int(now)
    exp = iat + ttl_seconds
    claims = {
        "iss": issuer,
        "sub": participant,
        "aud": space,
        "iat": iat,
        "exp": exp,
        "jti": uuid.uuid4().hex,
        "role": role,
        "attrs": attrs,
        "cnf": {"x5t#S256": certificate_thumbprint},
    }
    token = jwt.encode(claims, key, algorithm=ALGORITHM, headers={"typ": TOKEN_TYPE})
    return token, exp


def verify_operator_jws(
    token: str,
    key: ed25519.Ed25519PublicKey,
    *,
    typ: str,
    issuer: str,
    audience: str,
    required: list[str],
    what: str,
) -> dict[str, Any]:
    """Verify a JWS the operator signed: EdDSA only, exact ``typ``, issuer and audience.

    Time claims are checked by the caller against its injected clock.
    """
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise AuthenticationError(f"{what} is not a well-formed JWS") from None
    if header.get("alg") != ALGORITHM:
        raise AuthenticationError(
            f"{what} uses algorithm {header.get('alg')!r}; only {ALGORITHM} is accepted"
        )
    if header.get("typ") != typ:
        raise AuthenticationError(f"{what} has type {header.get('typ')!r}, expected {typ!r}")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=audience,
            issuer=issuer,
            options={
                "require": required,
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
    except jwt.InvalidAudienceError:
        raise AuthenticationError(f"{what} is for another data space (audience)") from None
    except jwt.InvalidIssuerError:
        raise AuthenticationError(f"{what} was not issued by this space's operator") from None
    except jwt.InvalidSignatureError:
        raise AuthenticationError(f"{what} signature does not verify") from None
    except jwt.MissingRequiredClaimError as exc:
        raise AuthenticationError(f"{what} lacks required claim {exc.claim!r}") from None
    except jwt.PyJWTError as exc:
        raise AuthenticationError(f"{what} is invalid: {exc}") from None
    return claims


def verify_membership_token(
    token: str,
    key: ed25519.Ed25519PublicKey,
    *,
    issuer: str,
    space: str,
    now: float,
    leeway_seconds: int = 30,
) -> Membership:
    """Verify signature, type, issuer, audience and time of a membership token.

    The caller still has to check the certificate binding and the subject against the
    peer certificate (``connector.rpc.auth`` does).
    """
    membership, issued_at = membership_of_token(token, key, issuer=issuer, space=space)
    check_token_time(membership.expires_at, issued_at, now, leeway_seconds)
    return membership


def check_token_time(expires_at: int, issued_at: int, now: float, leeway_seconds: int) -> None:
    """Refuse a membership token that has expired or is issued in the future."""
    if now > expires_at + leeway_seconds:
        raise AuthenticationError("membership token has expired: fetch a new one from the registry")
    if issued_at > now + leeway_seconds:
        raise AuthenticationError("membership token is issued in the future: check clocks")


def membership_of_token(
    token: str, key: ed25519.Ed25519PublicKey, *, issuer: str, space: str
) -> tuple[Membership, int]:
    """The membership a token's signature and claims vouch for, and its issue time.

    Everything but the time: the same token always gives the same answer here, so a
    verifier may remember it and check only ``check_token_time`` on each use.
    """
    claims = verify_operator_jws(
        token,
        key,
        typ=TOKEN_TYPE,
        issuer=issuer,
        audience=space,
        required=_REQUIRED,
        what="membership token",
    )
    exp, iat = claims["exp"], claims["iat"]
    if not isinstance(exp, int) or not isinstance(iat, int):
        raise AuthenticationError("membership token exp and iat must be integers")
    cnf = claims.get("cnf")
    thumbprint = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
    role, sub, attrs = claims.get("role"), claims["sub"], claims.get("attrs", {})
    if not isinstance(thumbprint, str) or not thumbprint:
        raise AuthenticationError("membership token is not bound to a certificate (cnf.x5t#S256)")
    if not isinstance(role, str) or not isinstance(sub, str):
        raise AuthenticationError("membership token lacks a string role or subject")
    if not isinstance(attrs, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in attrs.items()
    ):
        raise AuthenticationError("membership token attrs must map strings to strings")
    membership = Membership(
        participant=sub,
        role=role,
        space=space,
        certificate_thumbprint=thumbprint,
        expires_at=exp,
        token_id=str(claims["jti"]),
        attrs=dict(attrs),
    )
    return membership, iat
