"""The HTTP service: an ASGI app (FastAPI) over the same use cases as the CLI and the Python
API, adding identity (API keys, roles), tenant isolation and delivery. Needs
``pip install 'imagegen[service]'``.

>>> from imagegen.interfaces.http import create_app     # doctest: +SKIP
>>> app = create_app()          # settings from IMAGEGEN_*; or create_app(settings | container)
"""

from imagegen.interfaces.http._app import create_app
from imagegen.interfaces.http._settings import ServiceSettings

__all__ = ["ServiceSettings", "create_app"]
