"""Run the server under uvicorn until SIGTERM or SIGINT.

uvicorn turns either signal into a graceful shutdown: it stops accepting, lets running
requests finish for ``GRACE_SECONDS`` and then cancels them (a cancelled ``AsyncIsol8`` run
kills its sandbox), then runs the app's lifespan end, which stops every engine.
"""

from __future__ import annotations

import signal

import uvicorn

from typing import Any

from .app import create_app

GRACE_SECONDS = 30


def serve(*, host: str, port: int, api_key: str, **app_options: Any) -> None:
    """Serve until a signal; ``app_options`` are :func:`create_app`'s."""
    # A signal mask is inherited across exec: a parent that started us with SIGTERM blocked
    # would get a server that cannot be stopped gracefully.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGTERM, signal.SIGINT))
    config = uvicorn.Config(create_app(api_key, **app_options), host=host, port=port,
                            log_level="info", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=GRACE_SECONDS)
    uvicorn.Server(config).run()
