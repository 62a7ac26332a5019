"""``isol8 serve``: upstream's HTTP API over the local engine, with a server policy.

Needs the ``server`` extra (FastAPI, uvicorn); the core library never imports this package.
"""

from .app import create_app

__all__ = ["create_app"]
