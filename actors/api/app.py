"""The ASGI app of the HTTP API: every resource module's routes, then a 404 in the SDK's envelope for
any other path."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Route

from actors.api import agents, environments, memories, memory_stores, session_events, sessions, threads
from actors.api.dreams import routes as dream_routes
from actors.api.errors import ApiError
from actors.api.http import ApiState, Call, endpoint


async def _unknown(call: Call) -> object:
    raise ApiError(404, f"no such endpoint: {call.request.method} {call.request.url.path}")


def create_app(state: ApiState) -> Starlette:
    routes: list[Route] = [
        *environments.routes,
        *agents.routes,
        *memory_stores.routes,
        *memories.routes,
        *sessions.routes,
        *session_events.routes,
        *threads.routes,
        *dream_routes,
    ]
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    app = Starlette(routes=[*routes, Route("/{path:path}", endpoint(_unknown), methods=methods)])
    app.state.api = state
    return app
