"""MONAI Label's token check, working with PyJWT 2; and the routes an unauthenticated server keeps closed.

MONAI Label 0.8.5 (``monailabel.endpoints.user.auth.from_token``) calls ``jwt.decode`` without ``algorithms``, which
PyJWT 2 refuses for every token: with ``MONAI_LABEL_AUTH_ENABLE=true`` every request is 401, valid token or not.
``current_user`` is the same check with the algorithm named (RS256, Keycloak's default signing algorithm); ``install``
puts it in place of MONAI Label's ``get_current_user`` through FastAPI's ``dependency_overrides``.
"""

from __future__ import annotations

import jwt
from fastapi import Depends, HTTPException, status
from monailabel.config import settings
from monailabel.endpoints.user.auth import DEFAULT_USER, User, get_public_key, oauth2_scheme

__all__ = ["ALGORITHMS", "current_user", "needs_authentication"]

ALGORITHMS = ["RS256"]


def user_from_token(token: str) -> User:
    """The user a signed token names (MONAI Label's claim settings), or ``jwt.InvalidTokenError``."""
    key = get_public_key(settings.MONAI_LABEL_AUTH_REALM_URI)
    payload = jwt.decode(token, key, algorithms=ALGORITHMS, options={"verify_aud": False, "verify_exp": True})
    roles = payload
    for claim in settings.MONAI_LABEL_AUTH_TOKEN_ROLES.split("#"):
        roles = roles.get(claim) if isinstance(roles, dict) else None
    return User(
        username=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_USERNAME),
        email=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_EMAIL),
        name=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_NAME),
        roles=list(roles or []),
    )


async def current_user(token: str = Depends(oauth2_scheme) if settings.MONAI_LABEL_AUTH_ENABLE else "") -> User:
    if not settings.MONAI_LABEL_AUTH_ENABLE:
        return DEFAULT_USER
    try:
        return user_from_token(token)
    except jwt.InvalidTokenError:
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="Could not validate credentials",
            headers={"WWW-Authenticate": "Bearer"},
        ) from None


def needs_authentication(what: str, hint: str = "") -> None:
    """HTTP 403 while MONAI Label's authentication is off: ``what`` (``"dataset download is off"``), why, ``hint``.

    Without authentication anyone who reaches the server is every user at once. On a hospital network annotators
    still segment, upload images, save (and correct) labels and train, as MONAI Label's clients do; what cannot be
    undone from a client or exposes the whole datastore needs a person the server knows: deleting weights, images
    or labels, the dataset download, the server logs.
    """
    if not settings.MONAI_LABEL_AUTH_ENABLE:
        raise HTTPException(
            status_code=status.HTTP_403_FORBIDDEN,
            detail=f"{what} while MONAI Label's authentication is off (MONAI_LABEL_AUTH_ENABLE){hint}",
        )
