"""Who is asking: API keys, tenants, and the service behind a request (FastAPI dependencies)."""

import hashlib
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from whisper_api.config import Settings
from whisper_api.errors import UnauthorizedError
from whisper_api.service import Service


def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]




@dataclass(frozen=True)
class Caller:
    """Who is asking: `tenant` is a hash of their key (never the key), None without API_KEYS.

    With API_KEYS a job belongs to the key that made it; `sees_all` (no keys configured, or
    ADMIN_API_KEY) lifts that. `capped`: one of several API_KEYS, whose waiting jobs
    MAX_QUEUED_JOBS_PER_KEY bounds (a lone key, or the admin, may use the whole queue).
    """

    tenant: str | None = None
    sees_all: bool = True
    capped: bool = False


def tenant_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def authenticate(settings: Settings, authorization: str) -> Caller:
    """API_KEYS / ADMIN_API_KEY set: every route but /health and the page needs
    `Authorization: Bearer <key>`. Raises 401 otherwise."""
    keys, admin = settings.api_key_set, settings.admin_api_key
    if not keys and not admin:
        return Caller()
    scheme, _, token = authorization.partition(" ")
    # Compared as bytes: compare_digest refuses non-ASCII str, which was a 500. Headers arrive
    # decoded as latin-1, so this gives back the bytes the client sent.
    given = token.encode("latin-1", "replace")
    if scheme.lower() == "bearer" and token:
        if admin and secrets.compare_digest(given, admin.encode()):
            return Caller(tenant_of(admin), sees_all=True)
        for key in keys:
            if secrets.compare_digest(given, key.encode()):
                return Caller(tenant_of(key), sees_all=False, capped=len(keys) > 1)
    raise UnauthorizedError("missing or invalid API key")


def require_key(request: Request, service: ServiceDep) -> Caller:
    return authenticate(service.settings, request.headers.get("authorization", ""))


AuthDep = Depends(require_key)
CallerDep = Annotated[Caller, Depends(require_key)]
