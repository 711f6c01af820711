"""Emulators of the providers' HTTP APIs, for tests over real sockets — no network, no keys.

Each ``create_app(...)`` returns an ASGI app that speaks one provider's wire protocol,
serves real images, requires the auth header, validates requests against the provider's
published API and injects faults on demand (``app.state.faults``, a ``FaultPlan``). Every
emulator also records the requests it received at ``app.state.requests`` and exposes a
control API for out-of-process use: ``POST /_emulator/faults``, ``DELETE /_emulator/faults``,
``GET /_emulator/requests``.

``serve(app)`` runs one on a loopback port in a background thread::

    from imagegen.testing.emulators import openai, serve

    app = openai.create_app(api_key="sk-test")
    with serve(app) as base_url:
        ...   # point the adapter at f"{base_url}/v1"

From a shell: ``imagegen emulate openai --port 8001``.
"""

from imagegen.testing.emulators._faults import Fault, FaultKind, FaultPlan
from imagegen.testing.emulators._server import serve

__all__ = ["Fault", "FaultKind", "FaultPlan", "serve"]
