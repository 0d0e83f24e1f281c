"""API tokens: high-entropy secrets shown once, stored only as their SHA-256, one project each.

A plain SHA-256 is enough (no slow password hash): the token holds 256 random bits, so there is
nothing to brute-force, and the lookup stays one indexed equality.
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from obstacle.platform.models import ApiToken, Project

__all__ = ["TOKEN_PREFIX", "create_token", "hash_token", "project_for_token"]

TOKEN_PREFIX = "obst_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(session: Session, *, project: str, label: str = "") -> str:
    """Create a token for ``project`` (creating the project if it is new); return the secret."""
    found = session.scalars(select(Project).where(Project.name == project)).one_or_none()
    if found is None:
        found = Project(name=project)
        session.add(found)
        session.flush()
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(project_id=found.id, token_sha256=hash_token(token), label=label))
    session.flush()
    return token


def project_for_token(session: Session, token: str) -> Project | None:
    """The project a token belongs to, or None for an unknown token."""
    statement = (
        select(Project)
        .join(ApiToken, ApiToken.project_id == Project.id)
        .where(ApiToken.token_sha256 == hash_token(token))
    )
    return session.scalars(statement).one_or_none()
