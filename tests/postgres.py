"""A throwaway PostgreSQL for tests: Debian's server binaries, a fresh cluster in a temp dir,
listening on a free 127.0.0.1 port and on a unix socket in that dir, gone afterwards.

``initdb`` refuses to run as root, so as root the cluster is made and run as an unprivileged
system user (``postgres`` where the package created it) that owns the temp dir; as any other
user it runs as that user. Either way the database superuser is ``isol8`` and local
connections are trusted: nothing but loopback and the socket can reach it.

Use :func:`running_postgres` (a URL) or :func:`postgres_server` (the :class:`Postgres`, which
can be stopped and started again on the same port and data, for outage tests); pytest
modules import the ``postgres_url`` fixture from here.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

BIN = Path("/usr/lib/postgresql/15/bin")  # Debian's; never /usr/local/bin's copies
SUPERUSER = "isol8"
DATABASE = "postgres"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
# Durability is not what these tests check, and fsyncs cost seconds on a loaded machine.
SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off",
            "listen_addresses=127.0.0.1", "max_connections=100", "shared_buffers=16MB",
            "logging_collector=off")
_AS_ROOT = ("postgres", "isol8-ci", "nobody")


def available() -> bool:
    return (BIN / "postgres").is_file() and (BIN / "initdb").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as() -> pwd.struct_passwd | None:
    """The user the cluster runs as when we are root; ``None``: as ourselves."""
    if os.geteuid() != 0:
        return None
    for name in _AS_ROOT:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError(f"no unprivileged user to run PostgreSQL as (tried {_AS_ROOT})")


class Postgres:
    """One cluster in its own temp dir. :meth:`stop` and :meth:`start` keep the data and the
    port, so a client's URL stays valid across a restart; :meth:`close` removes everything."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="isol8-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._user = _run_as()
        try:
            if self._user is not None:
                os.chown(self.dir, self._user.pw_uid, self._user.pw_gid)
            self._spawn([str(BIN / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
                         "-A", "trust", "-E", "UTF8", "--no-sync", "--no-instructions"],
                        wait=True)
            self.start()
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        """Over TCP on loopback."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def socket_url(self) -> str:
        """Over the unix socket in the temp dir (libpq's ``host=`` naming a directory)."""
        return f"postgresql://{SUPERUSER}@/{DATABASE}?host={self.dir}&port={self.port}"

    def _spawn(self, args: list[str], *, wait: bool = False) -> subprocess.Popen[bytes]:
        user = self._user
        with open(self.log, "ab") as log:
            proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.dir, start_new_session=True,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "TZ": "UTC"},
                user=user.pw_uid if user else None, group=user.pw_gid if user else None,
                extra_groups=[] if user else None)
        if wait and proc.wait(timeout=START_TIMEOUT) != 0:
            raise RuntimeError(f"{args[0]} failed: {self.output()}")
        return proc

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def start(self) -> None:
        """Start the server and wait until it takes connections."""
        import psycopg

        assert self.proc is None, "already running"
        args = [str(BIN / "postgres"), "-D", str(self.data), "-p", str(self.port),
                "-k", str(self.dir)]
        for setting in SETTINGS:
            args += ["-c", setting]
        self.proc = self._spawn(args)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"PostgreSQL did not start: {self.output()}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Fast shutdown (SIGINT: clients are disconnected, no wait for them to leave)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: children too
                proc.wait()

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    if not available():
        pytest.skip(f"PostgreSQL 15 is not installed in {BIN} (scripts/system-deps.sh --test)")
    pytest.importorskip("psycopg", reason="the postgres extra (isol8[postgres]) is missing")
    server = Postgres()
    try:
        yield server
    finally:
        server.close()


@contextlib.contextmanager
def running_postgres() -> Iterator[str]:
    """A fresh cluster's TCP URL, ``postgresql://isol8@127.0.0.1:PORT/postgres``."""
    with postgres_server() as server:
        yield server.url


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with running_postgres() as url:
        yield url
