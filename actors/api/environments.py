"""Environments (``/v1/environments``): create, retrieve, update, list, archive, delete, in the shapes
the SDK's ``BetaEnvironment`` models.

What an environment means here: staffwork runs an agent's tools in its own worker processes, on the
session's shared workspace, not in a per-session container. So an environment is a record that a
session names (``environment_id``) and nothing more: its ``cloud`` config (``networking``,
``packages``) is stored and returned as given, but **not enforced** (no container is built, no
package installed, no network restricted); ``self_hosted`` likewise starts no work queue. Records are
``<workspace>.env.<id>`` in the API's KV bucket; a delete marks the record deleted (it then answers
404) rather than removing the key.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, UnsetType
from starlette.routing import Route

from actors.api.errors import ApiError, bad_request, not_found
from actors.api.http import Call, page, route
from actors.api.values import check_metadata, rfc3339_now
from schemas.ids import new_id

KIND = "env"
Scope = Literal["organization", "account"]
NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


def patch_metadata(stored: dict[str, str], patch: dict[str, str | None]) -> dict[str, str]:
    """``patch`` over ``stored``: a string upserts its key, null (or "") deletes it."""
    merged = dict(stored)
    for key, value in patch.items():
        if value:
            merged[key] = value
        else:
            merged.pop(key, None)
    return check_metadata(merged)


# --- the stored and returned shapes (BetaEnvironment) ----------------------------------------------


class Unrestricted(msgspec.Struct, frozen=True, tag="unrestricted", tag_field="type"):
    pass


class Limited(msgspec.Struct, frozen=True, kw_only=True, tag="limited", tag_field="type"):
    allowed_hosts: list[str] = msgspec.field(default_factory=list)
    allow_mcp_servers: bool = False
    allow_package_managers: bool = False


class Packages(msgspec.Struct, frozen=True, kw_only=True):
    type: Literal["packages"] = "packages"
    apt: list[str] = msgspec.field(default_factory=list)
    cargo: list[str] = msgspec.field(default_factory=list)
    gem: list[str] = msgspec.field(default_factory=list)
    go: list[str] = msgspec.field(default_factory=list)
    npm: list[str] = msgspec.field(default_factory=list)
    pip: list[str] = msgspec.field(default_factory=list)


class CloudConfig(msgspec.Struct, frozen=True, kw_only=True, tag="cloud", tag_field="type"):
    networking: Unrestricted | Limited = msgspec.field(default_factory=Unrestricted)
    packages: Packages = msgspec.field(default_factory=Packages)


class SelfHostedConfig(msgspec.Struct, frozen=True, tag="self_hosted", tag_field="type"):
    pass


class Environment(msgspec.Struct, frozen=True, kw_only=True):
    """The record: the environment as the SDK reads it, and when it was deleted (then it answers 404)."""

    id: str
    type: Literal["environment"] = "environment"
    name: str
    description: str | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    scope: Scope | None = None
    config: CloudConfig | SelfHostedConfig = msgspec.field(default_factory=CloudConfig)
    created_at: str
    updated_at: str
    archived_at: str | None = None
    deleted_at: str | None = None

    def out(self) -> dict[str, Any]:
        """The environment as the API returns it (without ``deleted_at``)."""
        shown: dict[str, Any] = msgspec.to_builtins(self)
        shown.pop("deleted_at", None)
        return shown


# --- request bodies: omitted (UNSET) preserves on update, null clears or defaults ------------------


class _LimitedIn(msgspec.Struct, frozen=True, kw_only=True, tag="limited", tag_field="type"):
    allowed_hosts: list[str] | UnsetType | None = UNSET
    allow_mcp_servers: bool | UnsetType | None = UNSET
    allow_package_managers: bool | UnsetType | None = UNSET


class _PackagesIn(msgspec.Struct, frozen=True, kw_only=True):
    type: Literal["packages"] = "packages"
    apt: list[str] | None = None
    cargo: list[str] | None = None
    gem: list[str] | None = None
    go: list[str] | None = None
    npm: list[str] | None = None
    pip: list[str] | None = None


class _CloudIn(msgspec.Struct, frozen=True, kw_only=True, tag="cloud", tag_field="type"):
    networking: Unrestricted | _LimitedIn | UnsetType | None = UNSET
    packages: _PackagesIn | UnsetType | None = UNSET


_ConfigIn = _CloudIn | SelfHostedConfig


class _Create(msgspec.Struct, frozen=True, kw_only=True):
    name: NonEmpty
    config: _ConfigIn | None = None
    description: str | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    scope: Scope | None = None


class _Update(msgspec.Struct, frozen=True, kw_only=True):
    name: NonEmpty | UnsetType | None = UNSET
    config: _ConfigIn | UnsetType | None = UNSET
    description: str | UnsetType | None = UNSET
    metadata: dict[str, str | None] | UnsetType = UNSET
    scope: Scope | UnsetType | None = UNSET


def _networking(given: Unrestricted | _LimitedIn, stored: Unrestricted | Limited) -> Unrestricted | Limited:
    if isinstance(given, Unrestricted):
        return given
    base = stored if isinstance(stored, Limited) else Limited()
    return Limited(
        allowed_hosts=base.allowed_hosts if given.allowed_hosts is UNSET else (given.allowed_hosts or []),
        allow_mcp_servers=base.allow_mcp_servers
        if given.allow_mcp_servers is UNSET
        else bool(given.allow_mcp_servers),
        allow_package_managers=base.allow_package_managers
        if given.allow_package_managers is UNSET
        else bool(given.allow_package_managers),
    )


def _config(
    given: _ConfigIn | None, stored: CloudConfig | SelfHostedConfig | None = None
) -> CloudConfig | SelfHostedConfig:
    """The config ``given`` over ``stored`` (omitted cloud fields keep their stored values)."""
    if given is None:
        return CloudConfig() if stored is None else stored
    if isinstance(given, SelfHostedConfig):
        return given
    base = stored if isinstance(stored, CloudConfig) else CloudConfig()
    networking = base.networking
    if given.networking is None:
        networking = Unrestricted()
    elif given.networking is not UNSET:
        networking = _networking(given.networking, base.networking)
    packages = base.packages
    if given.packages is None:
        packages = Packages()
    elif given.packages is not UNSET:
        p = given.packages
        packages = Packages(
            apt=p.apt or [],
            cargo=p.cargo or [],
            gem=p.gem or [],
            go=p.go or [],
            npm=p.npm or [],
            pip=p.pip or [],
        )
    wanted = [name for name in ("apt", "cargo", "gem", "go", "npm", "pip") if getattr(packages, name)]
    if wanted and isinstance(networking, Limited) and not networking.allow_package_managers:
        raise bad_request(
            f"config.packages lists {', '.join(wanted)} packages but config.networking is limited "
            "without allow_package_managers: true"
        )
    return CloudConfig(networking=networking, packages=packages)


# --- endpoints ------------------------------------------------------------------------------------


async def _load(call: Call, id: str) -> tuple[Environment, int]:
    found = await call.records.get(call.workspace, KIND, id, Environment)
    if found is None or found[0].deleted_at is not None:
        raise not_found("environment", id)
    return found


async def _save(call: Call, env: Environment, revision: int) -> None:
    if not await call.records.update(call.workspace, KIND, env.id, env, revision):
        raise ApiError(409, f"environment {env.id!r} changed while this request updated it; retry")


async def create(call: Call) -> object:
    body = await call.body(_Create)
    now = rfc3339_now()
    env = Environment(
        id=new_id("env"),
        name=body.name,
        description=body.description,
        metadata=check_metadata(body.metadata),
        scope=body.scope,
        config=_config(body.config),
        created_at=now,
        updated_at=now,
    )
    await call.records.create(call.workspace, KIND, env.id, env)
    return env.out()


async def retrieve(call: Call) -> object:
    env, _ = await _load(call, call.path("environment_id"))
    return env.out()


async def update(call: Call) -> object:
    body = await call.body(_Update)
    env, revision = await _load(call, call.path("environment_id"))
    if env.archived_at is not None:
        raise ApiError(
            400,
            f"environment {env.id!r} is archived: it cannot be updated",
            error_code="environment_archived",
        )
    changes: dict[str, Any] = {"updated_at": rfc3339_now()}
    if body.name is not UNSET:
        if body.name is None:
            raise bad_request("name cannot be cleared: give a non-empty name or omit it")
        changes["name"] = body.name
    if body.description is not UNSET:
        changes["description"] = body.description
    if body.metadata is not UNSET:
        changes["metadata"] = patch_metadata(env.metadata, body.metadata)
    if body.scope is not UNSET:
        changes["scope"] = body.scope
    if body.config is not UNSET:
        changes["config"] = _config(body.config, env.config)
    env = msgspec.structs.replace(env, **changes)
    await _save(call, env, revision)
    return env.out()


async def list_(call: Call) -> object:
    archived = call.query_bool("include_archived")
    envs = await call.records.list(call.workspace, KIND, Environment)
    shown = [e for e in envs if e.deleted_at is None and (archived or e.archived_at is None)]
    shown.sort(key=lambda e: (e.created_at, e.id), reverse=True)
    return page(call, [e.out() for e in shown])


async def archive(call: Call) -> object:
    env, revision = await _load(call, call.path("environment_id"))
    if env.archived_at is None:
        now = rfc3339_now()
        env = msgspec.structs.replace(env, archived_at=now, updated_at=now)
        await _save(call, env, revision)
    return env.out()


async def delete(call: Call) -> object:
    env, revision = await _load(call, call.path("environment_id"))
    await _save(call, msgspec.structs.replace(env, deleted_at=rfc3339_now()), revision)
    return {"id": env.id, "type": "environment_deleted"}


routes: list[Route] = [
    route("/v1/environments", create, "POST"),
    route("/v1/environments", list_),
    route("/v1/environments/{environment_id}", retrieve),
    route("/v1/environments/{environment_id}", update, "POST"),
    route("/v1/environments/{environment_id}", delete, "DELETE"),
    route("/v1/environments/{environment_id}/archive", archive, "POST"),
]
