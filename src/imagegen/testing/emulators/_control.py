"""The control API emulators share for out-of-process use: push and clear faults, read and
clear the recorded requests. Reads ``app.state.faults`` (a ``FaultPlan``) and
``app.state.requests`` (a list of dicts) of the app it is mounted in."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imagegen.testing.emulators._faults import Fault, FaultPlan


async def _add_faults(request: Request) -> Response:
    plan: FaultPlan = request.app.state.faults
    try:
        body = await request.json()
        items = body if isinstance(body, list) else [body]
        for item in items:
            plan.push(Fault.from_json(item))
    except (ValueError, TypeError, AttributeError) as exc:
        return JSONResponse({"error": f"bad fault: {exc}"}, status_code=400)
    return JSONResponse({"pending": plan.pending})


async def _clear_faults(request: Request) -> Response:
    request.app.state.faults.clear()
    return JSONResponse({"pending": 0})


async def _list_requests(request: Request) -> Response:
    return JSONResponse(list(request.app.state.requests))


async def _clear_requests(request: Request) -> Response:
    request.app.state.requests.clear()
    return JSONResponse({"cleared": True})


def control_routes() -> list[Route]:
    """``POST`` / ``DELETE /_emulator/faults`` and ``GET`` / ``DELETE /_emulator/requests``."""
    return [
        Route("/_emulator/faults", _add_faults, methods=["POST"]),
        Route("/_emulator/faults", _clear_faults, methods=["DELETE"]),
        Route("/_emulator/requests", _list_requests, methods=["GET"]),
        Route("/_emulator/requests", _clear_requests, methods=["DELETE"]),
    ]
