"""The FastAPI application of ``isol8 serve``: routers per concern, upstream's JSON shapes.

Blocking engine calls never run on the event loop: runs go through ``AsyncIsol8`` (a worker
thread each, cancellable) and engine stops through ``asyncio.to_thread``. At shutdown (the
lifespan's end, which uvicorn reaches once a SIGTERM's or SIGINT's drain is over:
isol8.server.drain) every engine and session is stopped, so no sandbox outlives the server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI

from .. import __version__
from . import errors
from .audit import AuditLog
from .bodylimit import BodyLimit
from .capacity import Capacity
from .drain import Drain
from .engines import EngineRegistry
from .keystore import KeyStore, MasterKey
from .metrics import Metrics
from .policy import ServerPolicy
from .routes import admin, cleanup, execute, files, health, keys, metrics, sessions, stream

if TYPE_CHECKING:  # psycopg, which the postgres extra alone brings
    from .session_directory import SessionDirectory

# Worker threads for runs, stops and key-store calls: asyncio's default pool has
# min(32, cpus + 4), which on a small host would queue runs behind a few long ones. At least
# this many, and two per admitted run (a run and a stop of a session at once) beyond it:
# admission control (the capacity's 429) is what bounds the work, not the pool.
MIN_WORKERS = 64
# Expired and revoked keys are deleted this often (upstream's auth.cleanupIntervalMs).
PURGE_INTERVAL_S = 3600.0
_log = logging.getLogger("isol8.server")


def create_app(api_key: str, policy: ServerPolicy | None = None, *,
               max_engines: int | None = None, key_store: KeyStore | None = None,
               audit: AuditLog | None = None, node: str | None = None,
               directory: SessionDirectory | None = None) -> FastAPI:
    """The server's app; ``api_key`` is the master key (non-empty). ``key_store`` enables
    API keys (``/auth/*``); ``audit`` logs every execution. ``node`` names this server among
    many: a label on every metric, and in ``/health``'s drain; ``directory`` records which
    node holds each session, so one a dead node lost is told apart from a new one. The app
    closes all three."""
    if not isinstance(api_key, str) or not api_key:
        raise ValueError("create_app: api_key must be a non-empty string")
    policy = policy or ServerPolicy.default()
    recorder = Metrics(node=node)
    capacity = Capacity(policy, recorder)
    engines = EngineRegistry(max_engines or policy.capacity.max_engines, capacity,
                             policy.remote_code, directory)
    drain = Drain(capacity, engines)
    recorder.gauge_callback("isol8_draining", "1 while the node drains (new work gets 503).",
                            lambda: float(drain.draining))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        workers = max(MIN_WORKERS, 2 * policy.capacity.max_concurrent)
        executor = ThreadPoolExecutor(workers, thread_name_prefix="isol8-run")
        asyncio.get_running_loop().set_default_executor(executor)
        purging = asyncio.create_task(_purge(key_store)) if key_store is not None else None
        try:
            yield
        finally:
            if purging is not None:
                purging.cancel()
            drain.cancel()
            await engines.close()
            executor.shutdown(wait=True)
            if directory is not None:
                directory.close()
            app.state.audit.close()
            if key_store is not None:
                key_store.close()

    app = FastAPI(title="isol8", version=__version__, lifespan=lifespan)
    app.state.master = MasterKey(api_key)
    app.state.policy = policy
    app.state.engines = engines
    app.state.keys = key_store
    app.state.capacity = capacity
    app.state.drain = drain
    app.state.node = node
    app.state.metrics = recorder
    app.state.audit = audit or AuditLog()
    errors.install(app)
    for module in (health, execute, stream, sessions, files, cleanup, keys, metrics, admin):
        app.include_router(module.router)
    app.add_middleware(BodyLimit, max_bytes=policy.capacity.max_body_size)
    metrics.install(app)  # the request counter (outermost: it sees BodyLimit's 413s too)
    return app


async def _purge(key_store: KeyStore) -> None:
    """Delete expired and revoked keys now and then: login tokens expire by the thousand
    in a busy deployment, and a dead key is no use to anyone."""
    while True:
        try:
            removed = await asyncio.to_thread(key_store.purge)
            if removed:
                _log.info("key store: %d expired or revoked keys deleted", removed)
        except Exception as exc:  # sqlite busy, a full disk: try again next time
            _log.error("key store: purge failed: %s", exc)
        await asyncio.sleep(PURGE_INTERVAL_S)
