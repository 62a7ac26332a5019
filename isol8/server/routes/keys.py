"""``/auth/keys`` and ``/auth/login``: upstream's key administration (isol8-api.md §4.1).

Master key only, as upstream's ``requireMasterKey()``: an API key that could mint keys could
outlive its own revocation. Without ``--auth-db`` every route answers upstream's 400
``DB-backed auth is not enabled`` (to the master key; anyone else gets 401/403 first).

Bodies are pydantic models in strict mode, so ``"ttlMs": "60"`` or ``true`` is a 400 naming
the field rather than a coerced number; the app answers validation errors with 400
``{error}``, never FastAPI's 422. They are parsed in the handler, not declared as parameters:
FastAPI decodes a declared body before it runs any dependency, so a caller without the master
key would learn the body's rules from a 400 instead of getting its 401/403. The store
re-checks names and tenants (printable, bounded), so its rules hold whoever calls it.

Store calls run in a worker thread: a key's creation commits to SQLite with an fsync
(~1 ms, 3 ms at p99 here) and a listing of a thousand keys takes ~4 ms, both too long for
the event loop every other request shares.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import errors
from ..auth import require_master
from ..errors import ApiError
from ..keystore import DEFAULT_LOGIN_TTL, MAX_LABEL_LENGTH, MAX_TTL, KeyInfo, KeyStore

router = APIRouter()

#: Upstream's ``auth.defaultTtlMs``: a key made without ``ttlMs`` expires in 24 h, as there.
DEFAULT_TTL_MS = DEFAULT_LOGIN_TTL * 1000


Label = Annotated[str, Field(min_length=1, max_length=MAX_LABEL_LENGTH)]
TtlMs = Annotated[
    float,
    Field(
        gt=0,
        le=MAX_TTL * 1000,
        allow_inf_nan=False,
        description=f"milliseconds; default {DEFAULT_TTL_MS:.0f}",
    ),
]


class NewKey(BaseModel):
    model_config = ConfigDict(strict=True)
    name: Label
    tenantId: Label | None = None
    ttlMs: TtlMs | None = None


class Login(BaseModel):
    model_config = ConfigDict(strict=True)
    name: Label | None = None
    tenantId: Label | None = None
    ttlMs: TtlMs | None = None


Body = TypeVar("Body", bound=BaseModel)


class CreatedKey(BaseModel):
    id: str
    key: str = Field(description="the plaintext key, shown this once")
    name: str
    keyPrefix: str
    tenantId: str
    expiresAt: str | None


class KeyItem(BaseModel):
    id: str
    name: str
    keyPrefix: str
    tenantId: str
    parentId: str | None
    createdAt: str
    expiresAt: str | None
    lastUsedAt: str | None
    revoked: bool


class KeyList(BaseModel):
    keys: list[KeyItem]


class Revoked(BaseModel):
    ok: bool
    id: str


class Token(BaseModel):
    token: str
    expiresAt: str
    keyId: str


async def _store(request: Request, _: str = Depends(require_master)) -> KeyStore:
    """The key store, for the master key only; upstream's 400 without ``--auth-db``."""
    keys: KeyStore | None = request.app.state.keys
    if keys is None:
        raise ApiError(400, "DB-backed auth is not enabled")
    return keys


def _parse(model: type[Body], raw: bytes) -> Body:
    """``raw`` as ``model``, or a 400 naming the field (``body.ttlMs: ...``)."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        ) from None


def _body(model: type[BaseModel], *, required: bool) -> dict[str, object]:
    """The OpenAPI declaration of a body the handler parses itself."""
    return {
        "requestBody": {
            "required": required,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def _seconds(ttl_ms: float | None) -> float:
    return (DEFAULT_TTL_MS if ttl_ms is None else ttl_ms) / 1000


_ERRORS = errors.responses(400, 401, 403, 413)


@router.post(
    "/auth/keys",
    status_code=201,
    response_model=CreatedKey,
    responses=_ERRORS,
    openapi_extra=_body(NewKey, required=True),
)
async def create_key(request: Request, keys: KeyStore = Depends(_store)) -> dict[str, object]:
    body = _parse(NewKey, await request.body())
    info, plaintext = await asyncio.to_thread(
        keys.create, body.name, _seconds(body.ttlMs), tenant=body.tenantId
    )
    wire = info.to_dict()
    return {
        "id": info.id,
        "key": plaintext,
        "name": info.name,
        "keyPrefix": wire["keyPrefix"],
        "tenantId": info.tenant,
        "expiresAt": wire["expiresAt"],
    }


@router.get("/auth/keys", response_model=KeyList, responses=_ERRORS)
async def list_keys(
    tenant: str | None = Query(None, alias="tenantId", min_length=1, max_length=MAX_LABEL_LENGTH),
    keys: KeyStore = Depends(_store),
) -> dict[str, object]:
    """Revoked and expired keys included, as upstream lists them until they are purged."""
    found: list[KeyInfo] = await asyncio.to_thread(keys.list, tenant)
    return {"keys": [info.to_dict() for info in found]}


@router.delete(
    "/auth/keys/{key_id}", response_model=Revoked, responses=errors.responses(400, 401, 403, 404)
)
async def revoke_key(key_id: str, keys: KeyStore = Depends(_store)) -> dict[str, object]:
    """Revokes the key and the login tokens bound to it; idempotent for a known id."""
    if not await asyncio.to_thread(keys.revoke, key_id):
        raise ApiError(404, "API key not found")
    return {"ok": True, "id": key_id}


@router.post(
    "/auth/login",
    response_model=Token,
    responses=_ERRORS,
    openapi_extra=_body(Login, required=False),
)
async def login(request: Request, keys: KeyStore = Depends(_store)) -> dict[str, object]:
    """A fresh key that always expires (upstream's ``isol8 login``); the body is optional."""
    raw = await request.body()
    body = _parse(Login, raw) if raw.strip() else Login()
    info, plaintext = await asyncio.to_thread(
        keys.login, name=body.name, ttl_seconds=_seconds(body.ttlMs), tenant=body.tenantId
    )
    return {"token": plaintext, "expiresAt": info.to_dict()["expiresAt"], "keyId": info.id}
