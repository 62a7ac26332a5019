"""The ``isol8`` command: ``exec`` (alias ``run``), ``doctor``, ``serve`` and ``session``.

argparse rather than click: the CLI is small, and a one-shot ``isol8 exec`` should not pay for
an import it does not need (the standard library is enough here).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import secrets
import shlex
import socket
import sys
import urllib.parse
import uuid
from dataclasses import replace
from datetime import datetime, timezone
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .errors import Isol8Error, SetupScriptFailed
from .packages.index import registry_patterns
from .packages.stage import MANAGERS
from .result import StreamEvent
from .runtimes import RUNTIMES, detect_runtime

if TYPE_CHECKING:
    from .client import RemoteIsol8
    from .config import Config
    from .engine import Isol8


def _env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _mount_spec(text: str) -> dict[str, object]:
    """``SRC:DST[:ro|rw]`` as an engine ``mounts`` entry; a relative SRC is taken from the
    current directory. The engine validates both paths."""
    parts = text.split(":")
    mode = parts.pop() if len(parts) == 3 else "ro"
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise argparse.ArgumentTypeError(f"expected SRC:DST[:ro|rw], got {text!r}")
    if mode not in ("ro", "rw"):
        raise argparse.ArgumentTypeError(
            f"expected SRC:DST[:ro|rw], got {text!r}: the mode must be ro or rw")
    return {"source": os.path.abspath(os.path.expanduser(parts[0])), "target": parts[1],
            "readonly": mode == "ro"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="isol8", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    ex = sub.add_parser("exec", aliases=["run"], help="run code in a fresh sandbox")
    ex.add_argument("file", nargs="?", help="a source file (.py, .js/.mjs/.cjs, .sh)")
    ex.add_argument("-e", "--eval", dest="code", metavar="CODE", help="inline code")
    ex.add_argument("--cmd", help="a shell command, run as bash -c")
    ex.add_argument("--url", help="fetch the code from this URL first (the config's "
                                  "remoteCode policy must enable it: off by default)")
    ex.add_argument("--github", metavar="OWNER/REPO/REF/PATH",
                    help="the code of a file on GitHub (raw.githubusercontent.com), as --url")
    ex.add_argument("--gist", metavar="ID/FILE",
                    help="the code of a gist's file (gist.githubusercontent.com), as --url")
    ex.add_argument("--hash", metavar="SHA256",
                    help="with --url, --github or --gist: the code's expected sha256 (hex)")
    ex.add_argument("--allow-insecure-code-url", action="store_true",
                    help="with --url: allow plain http (if the remoteCode policy does)")
    ex.add_argument("-r", "--runtime", choices=sorted(RUNTIMES), help="force the runtime")
    ex.add_argument("--timeout", type=int, metavar="MS",
                    help="timeout in ms (default: the config's, else 30000)")
    ex.add_argument("--max-output", type=int, metavar="BYTES",
                    help="output cap per stream (default 1048576)")
    ex.add_argument("--sandbox-size", help="size of the /sandbox tmpfs (default 512m)")
    ex.add_argument("--tmp-size", help="size of the /tmp tmpfs (default 256m)")
    ex.add_argument("--tmp-exec", action="store_true",
                    help="allow running programs from /tmp (noexec by default, as upstream)")
    ex.add_argument("--image", metavar="NAME|PATH",
                    help="the root filesystem: an image of the store (isol8 image list) or a "
                         "directory you own; default: the host's /usr (read-only)")
    ex.add_argument("--net", choices=("none", "host", "filtered"),
                    help="network mode (default: the config's, else none; filtered with "
                         "--install); filtered: HTTP(S) by hostname policy")
    ex.add_argument("--allow", action="append", default=[], metavar="REGEX",
                    help="filtered: a hostname regex to allow (repeatable; replaces the "
                         "config's whitelist; none: every public host)")
    ex.add_argument("--deny", action="append", default=[], metavar="REGEX",
                    help="filtered: a hostname regex to deny, added to the config's "
                         "blacklist; deny wins (repeatable)")
    ex.add_argument("--pin", action="append", type=_env_pair, default=[],
                    metavar="NAME=ADDR[:PORT]",
                    help="filtered: send NAME to this address, like curl --resolve "
                         "(repeatable)")
    ex.add_argument("--allow-private", action="store_true",
                    help="filtered: let names reach private and loopback addresses")
    ex.add_argument("--log-network", action="store_true",
                    help="filtered: print each request the proxy saw (implies --no-stream)")
    ex.add_argument("--memory", help="memory limit (default 512m)")
    ex.add_argument("--cpu", type=float, help="CPU limit in cores (default 1.0)")
    ex.add_argument("--pids-limit", type=int, help="process limit (default 64)")
    ex.add_argument("--strict-limits", action="store_true",
                    help="refuse to run when a limit cannot be enforced by a hard backend")
    ex.add_argument("--env", action="append", type=_env_pair, default=[], metavar="K=V",
                    help="an environment variable (repeatable)")
    ex.add_argument("--secret", action="append", type=_env_pair, default=[], metavar="K=V",
                    help="a secret: injected as an environment variable, masked as *** in "
                         "the output (repeatable)")
    ex.add_argument("--stdin", metavar="DATA", help="data for the program's standard input")
    ex.add_argument("--workdir", help="working directory, inside /sandbox (default /sandbox)")
    ex.add_argument("--files", metavar="DIR",
                    help="copy a local directory into /sandbox (skips .git, node_modules, "
                         "__pycache__, .venv, venv, .tox)")
    ex.add_argument("--mount", action="append", type=_mount_spec, default=[],
                    metavar="SRC:DST[:ro|rw]",
                    help="mount a host directory or file at DST, inside /sandbox or /mnt; "
                         "read-only unless :rw (repeatable; added to the config's)")
    ex.add_argument("--persistent", action="store_true",
                    help="run in a persistent sandbox (mode=persistent), stopped when the "
                         "run ends")
    ex.add_argument("--install", action="append", default=[], metavar="PKG",
                    help="a package to install before the run, with pip (python) or npm "
                         "(node) under /sandbox (repeatable); the install reaches only the "
                         "index. Without --net this switches to filtered, allowing the "
                         "registry's hosts unless --allow is given (upstream)")
    ex.add_argument("--package-index", metavar="URL",
                    help="the index --install uses (a PEP 503 simple index for pip, a "
                         "registry for npm) instead of PyPI / registry.npmjs.org")
    ex.add_argument("--setup", action="append", default=[], metavar="CMD|FILE",
                    help="a bash setup script run before the code, in the same sandbox (a "
                         "value naming an existing file is read); repeatable: each runs as "
                         "its own script, in order, and the first that fails ends the run "
                         "with its exit code")
    ex.add_argument("--out", metavar="FILE",
                    help="write the run's stdout to FILE instead of printing it (implies "
                         "--no-stream); files the code writes are not fetched")
    ex.add_argument("--json", action="store_true",
                    help="print the result in its wire form (implies --no-stream)")
    ex.add_argument("--no-stream", action="store_true",
                    help="print the output when the run ends instead of as it arrives")
    _remote_arguments(ex, "run on this isol8 serve instead of locally (needs isol8[client])")

    dr = sub.add_parser("doctor", help="what this host supports, and what isol8 does about it")
    dr.add_argument("--ready", action="store_true",
                    help="a readiness probe: run one sandbox, exit 0 if it ran, else 1 with "
                         "one line naming the restriction that stopped it")

    cl = sub.add_parser("cleanup", help="remove what supervisors that died without stopping "
                                        "their engines left behind (cgroups, uid leases, "
                                        "their processes)")
    cl.add_argument("--dry-run", action="store_true",
                    help="list what would be removed, and why, and remove nothing")
    cl.add_argument("--images", action="store_true",
                    help="also remove every image of the store (isol8 image list), except "
                         "one a running engine uses")

    from .config.command import add_parser as add_config_parser
    from .images.command import add_parser as add_image_parser
    from .mcp.command import add_parser as add_mcp_parser

    add_image_parser(sub)
    add_config_parser(sub)
    add_mcp_parser(sub)

    se = sub.add_parser("session", help="list or stop your sessions on an isol8 serve")
    session_sub = se.add_subparsers(dest="session_command", required=True)
    _remote_arguments(session_sub.add_parser("list", help="your sessions on the server"),
                      required=True)
    stop = session_sub.add_parser("stop", help="end a session and its sandbox")
    stop.add_argument("id", help="the session id")
    _remote_arguments(stop, required=True)

    sv = sub.add_parser("serve", help="serve upstream's HTTP API (needs isol8[server])")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    sv.add_argument("--port", type=int, help="port (default $ISOL8_PORT, $PORT or 3000)")
    sv.add_argument("--key", help="the master API key (default $ISOL8_API_KEY; required)")
    sv.add_argument("--config", metavar="FILE",
                    help="a config file (its [server] section is the policy) or a server "
                         "policy file, TOML or JSON (default $ISOL8_CONFIG, else "
                         "~/.isol8/config.toml or config.json)")
    sv.add_argument("--auth-db", metavar="PATH|URL",
                    help="SQLite file of API keys (created 0600), or a postgresql:// URL "
                         "every node shares; enables /auth/keys and /auth/login")
    sv.add_argument("--audit", metavar="FILE|URL",
                    help="append one JSON line per execution to FILE, or insert a row into "
                         "the audit_log table of a postgresql:// URL")
    sv.add_argument("--audit-include-code", action="store_true",
                    help="with --audit: put each run's code on its line (secrets masked)")
    sv.add_argument("--audit-include-output", action="store_true",
                    help="with --audit: put each run's stdout and stderr on its line")
    sv.add_argument("--node", metavar="NAME",
                    help="this server's name among many, a label on every metric "
                         "(default $ISOL8_NODE, else the host name)")
    sv.add_argument("--drain-timeout", metavar="SECONDS", type=float,
                    help="on SIGTERM or POST /admin/drain, how long running executions "
                         "and sessions may go on (default: the policy's drainTimeoutMs)")
    return parser


def _remote_arguments(parser: argparse.ArgumentParser, host_help: str = "the server's URL",
                      *, required: bool = False) -> None:
    parser.add_argument("--host", metavar="URL", required=required,
                        help=f"{host_help}, e.g. http://127.0.0.1:3000")
    parser.add_argument("--key", help="the server's API key (default $ISOL8_API_KEY)")


def _remote(args: argparse.Namespace, parser: argparse.ArgumentParser,
            **options: object) -> "RemoteIsol8":
    """The client for ``--host``; imported here: a local run never pays for httpx2."""
    key = args.key or os.environ.get("ISOL8_API_KEY")
    if not key:
        parser.error("--host needs an API key: --key or ISOL8_API_KEY")
    try:
        from .client import RemoteIsol8
    except ImportError as exc:
        parser.error(f"--host needs the client extra (pip install 'isol8[client]'): {exc}")
    return RemoteIsol8(host=args.host, api_key=key, **options)  # type: ignore[arg-type]


def _engine(args: argparse.Namespace, parser: argparse.ArgumentParser,
            options: dict[str, object]) -> "Isol8 | RemoteIsol8":
    """The local engine, or with ``--host`` the server's: the same calls and results. The
    remote one is sent only the options set (the server's defaults are the engine's, and
    its policy refuses some options, mounts say, even empty); ``--persistent`` runs in a
    session of its own, ended with the run, as the local sandbox is."""
    if args.host is None:
        from .engine import Isol8

        return Isol8(**options)  # type: ignore[arg-type]
    remote = {name: value for name, value in options.items()
              if value not in (False, [], {}) and name != "mode"}
    session_id = f"isol8-cli-{uuid.uuid4().hex}" if options.get("mode") == "persistent" \
        else None
    return _remote(args, parser, session_id=session_id, **remote)


def _exec(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run code. A local run takes its engine defaults from the config files
    (isol8.config); a flag given always wins over them, so every flag defaults to None."""
    code_url = _code_url(args, parser)
    sources = [x for x in (args.file, args.code, args.cmd, code_url) if x is not None]
    if len(sources) != 1:
        parser.error("give exactly one of FILE, -e/--eval, --cmd or --url/--github/--gist")
    runtime = args.runtime
    code = args.code
    if args.file is not None:
        try:
            with open(args.file, encoding="utf-8") as fh:
                code = fh.read()
        except OSError as exc:
            parser.error(f"cannot read {args.file}: {exc.strerror}")
        runtime = runtime or detect_runtime(args.file).name
    if code_url is not None and runtime is None:
        try:
            runtime = detect_runtime(urllib.parse.urlsplit(code_url).path).name
        except Isol8Error:
            parser.error(f"cannot tell the runtime of {code_url} from its name: give -r")
    config = _local_config() if args.host is None else None
    options = config.engine_options() if config is not None else {}
    net = args.net or str(options.get("network", "none"))
    if args.net is None and args.install and net == "none":
        net = "filtered"
    options["network"] = net
    configured = config.values["network"] if config is not None else {}
    assert isinstance(configured, dict)
    allow = args.allow or list(configured.get("whitelist", []))
    deny = list(dict.fromkeys([*configured.get("blacklist", []), *args.deny]))
    if args.install and args.net is None and not allow:  # upstream: the registry's hosts
        allow = registry_patterns(MANAGERS.get(runtime or ("bash" if args.cmd else "python"),
                                               "pip"), args.package_index)
    options.pop("network_filter", None)
    if (net == "filtered" and (allow or deny)) or args.allow or args.deny or args.pin \
            or args.allow_private:
        options["network_filter"] = {"whitelist": allow, "blacklist": deny,
                                     "hosts": dict(args.pin),
                                     "allow_private": args.allow_private}
    for name in ("strict_limits", "tmp_exec", "log_network"):
        if getattr(args, name):
            options[name] = True
    if args.secret:
        options["secrets"] = dict(args.secret)
    if args.mount:
        options["mounts"] = [*options.get("mounts", []), *args.mount]  # type: ignore[misc]
    if args.persistent:
        options["mode"] = "persistent"
    if args.image is not None:
        options["rootfs"] = args.image
    if args.package_index:
        options["package_index_url"] = args.package_index
    renamed = {"max_output": "max_output_size", "memory": "memory_limit", "cpu": "cpu_limit"}
    for name in ("max_output", "sandbox_size", "tmp_size", "memory", "cpu", "pids_limit"):
        value = getattr(args, name)
        if value is not None:
            options[renamed.get(name, name)] = value
    files = _local_files(args.files, parser) if args.files else None
    request = dict(runtime=runtime, cmd=args.cmd, timeout_ms=args.timeout, env=dict(args.env),
                   stdin=args.stdin, workdir=args.workdir, files=files,
                   setup_script=_setup_script(args.setup, parser),
                   install_packages=args.install or None)
    if code_url is not None:
        request.update(code_url=code_url, code_hash=args.hash,
                       allow_insecure_code_url=args.allow_insecure_code_url)
    with _engine(args, parser, options) as engine:  # stop() on the way out, also persistent
        if not (args.json or args.no_stream or args.out or args.log_network):
            return _stream(engine.execute_stream(code, **request))
        result = engine.execute(code, **request)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(result.stdout)
    elif args.json:
        print(json.dumps(result.to_dict()))
    elif result.stdout:
        print(result.stdout)
    if result.stderr and not args.json:
        print(result.stderr, file=sys.stderr)
    if not args.json:
        _explain_limits(result.resource_usage.limits_reached)
        for entry in result.network_logs or []:
            print(f"isol8: network: {entry.action} {entry.method} {entry.host}"
                  f"{entry.path or ''} ({entry.duration_ms} ms)"
                  + (f": {entry.reason}" if entry.action == "BLOCK" and entry.reason else ""),
                  file=sys.stderr)
    return result.exit_code


def _local_config() -> "Config":
    """The config files' effective configuration, its warnings printed."""
    from .config import load_config

    config = load_config()
    for line in config.warnings:
        print(f"isol8: warning: {line}", file=sys.stderr)
    return config


_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def _code_url(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str | None:
    """Upstream's code-URL flags as one URL: ``--github OWNER/REPO/REF/PATH`` names
    raw.githubusercontent.com, ``--gist ID/FILE`` gist.githubusercontent.com. Only the
    URL is built here; the engine fetches it under the config's remoteCode policy."""
    given = [(flag, value) for flag, value in (("--url", args.url), ("--github", args.github),
                                               ("--gist", args.gist)) if value is not None]
    if not given:
        if args.hash is not None or args.allow_insecure_code_url:
            parser.error("--hash and --allow-insecure-code-url need --url, --github or --gist")
        return None
    if len(given) > 1:
        parser.error(f"give one of --url, --github and --gist, not {given[0][0]} and "
                     f"{given[1][0]}")
    if args.hash is not None and not _SHA256.match(args.hash):
        parser.error(f"--hash: expected 64 hexadecimal digits (a sha256), got {args.hash!r}")
    flag, value = given[0]
    if flag == "--url":
        return value
    parts = value.split("/")
    if flag == "--github":
        if len(parts) < 4 or not all(parts):
            parser.error(f"--github: expected OWNER/REPO/REF/PATH, got {value!r}")
        return "https://raw.githubusercontent.com/" + "/".join(_quoted(parts))
    if len(parts) != 2 or not all(parts):
        parser.error(f"--gist: expected ID/FILE, got {value!r}")
    return f"https://gist.githubusercontent.com/{_quoted(parts)[0]}/raw/{_quoted(parts)[1]}"


def _quoted(parts: list[str]) -> list[str]:
    """Each path segment percent-encoded: a ``?`` or ``#`` in a name stays in the path."""
    return [urllib.parse.quote(part, safe="") for part in parts]


# What to raise for each limit a run reached; a timeout already says so in its marker.
_RAISE_WITH = {"pids": "--pids-limit (threads count too)", "memory": "--memory",
               "output": "--max-output",
               "file_size": "--sandbox-size: a file may grow one page past the largest tmpfs"}


def _explain_limits(reached: list[str]) -> None:
    """A program that hit a limit often fails with an error that does not name it ("can't
    start new thread", a bare 137): say which limit it was, and which flag raises it."""
    for name in reached:
        if name in _RAISE_WITH:
            print(f"isol8: limit reached: {name} (raise with {_RAISE_WITH[name]})",
                  file=sys.stderr)


def _setup_script(values: list[str], parser: argparse.ArgumentParser) -> str | None:
    """Upstream's --setup: each value is a command, or a file to read when one exists.

    Repeated, each value runs as its own bash script, in order, and the first that fails
    ends the setup with its exit code (a failed install must not be followed by the code).
    The library's ``setup_script`` stays one script, upstream's semantics, so several
    values become one runner script that chains them."""
    scripts = []
    for value in values:
        if os.path.isfile(value):
            try:
                with open(value, encoding="utf-8") as fh:
                    scripts.append(fh.read())
            except OSError as exc:
                parser.error(f"--setup: cannot read {value}: {exc.strerror}")
        else:
            scripts.append(value)
    if len(scripts) <= 1:
        return scripts[0] if scripts else None
    return _chained(scripts)


def _chained(scripts: list[str]) -> str:
    """One bash script that writes each script to its own file in the sandbox's /tmp (a
    quoted here-document: no expansion, any size, nothing on argv) and runs it with
    ``bash FILE``, stopping at the first non-zero status. Each script gets its own process:
    a ``cd``, ``set -e`` or ``exit`` in one does not reach the next."""
    lines = []
    for n, script in enumerate(scripts, 1):
        path = f"/tmp/.isol8-setup-{n}.sh"
        end = f"ISOL8_SETUP_{n}_{secrets.token_hex(8)}"
        while end in script.splitlines():
            end = f"ISOL8_SETUP_{n}_{secrets.token_hex(8)}"
        failed = shlex.quote(f"isol8: --setup {n} of {len(scripts)} failed")
        lines += [f"cat > {path} <<'{end}'", script.rstrip("\n"), end,
                  f"bash {path}; status=$?; rm -f {path}",
                  f'if [ "$status" -ne 0 ]; then echo {failed} "(exit code $status)" >&2; '
                  'exit "$status"; fi']
    return "\n".join(lines) + "\n"


_SKIPPED_DIRS = {".git", "node_modules", "__pycache__", ".venv", "venv", ".tox"}


def _local_files(root: str, parser: argparse.ArgumentParser) -> dict[str, bytes]:
    """A local directory as request files under /sandbox (upstream's --files)."""
    if not os.path.isdir(root):
        parser.error(f"--files: {root} is not a directory")
    files = {}
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in _SKIPPED_DIRS)
        for name in sorted(names):
            path = os.path.join(directory, name)
            if os.path.isfile(path) and not os.path.islink(path):
                relative = os.path.relpath(path, root).replace(os.sep, "/")
                with open(path, "rb") as fh:
                    files[f"/sandbox/{relative}"] = fh.read()
    return files


def _stream(events: Iterable[StreamEvent]) -> int:
    """Upstream's CLI default: output as it arrives, the exit code of the exit event."""
    code = 1
    for event in events:
        if event.type in ("stdout", "stderr"):
            stream = sys.stdout if event.type == "stdout" else sys.stderr
            stream.write(event.data)
            stream.flush()
        elif event.type == "error":
            print(f"--- {event.data} ---", file=sys.stderr)
        elif event.type == "exit":
            code = int(event.data)
            _explain_limits(event.limits_reached)
    return code


def _session(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``isol8 session list`` and ``isol8 session stop ID``: the caller's key's sessions."""
    client = _remote(args, parser)
    try:
        if args.session_command == "stop":
            client.delete_session(args.id)
            return 0
        for info in client.list_sessions():
            when = datetime.fromtimestamp(info.last_accessed_at / 1000, timezone.utc)
            print(f"{info.id}\t{'active' if info.is_active else 'idle'}\t"
                  f"{when.isoformat(timespec='seconds').replace('+00:00', 'Z')}")
        return 0
    finally:
        client.stop()


def _serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Imported here: ``isol8 exec`` never pays for FastAPI."""
    key = args.key or os.environ.get("ISOL8_API_KEY")
    if not key:
        parser.error("serve: a master key is required (--key or ISOL8_API_KEY)")
    port = args.port if args.port is not None else \
        os.environ.get("ISOL8_PORT") or os.environ.get("PORT") or 3000
    try:
        port = int(port)
    except ValueError:
        parser.error(f"serve: the port must be a number, got {port!r}")
    if not 0 <= port <= 65535:
        parser.error(f"serve: the port must be 0 to 65535, got {port}")
    if (args.audit_include_code or args.audit_include_output) and not args.audit:
        parser.error("serve: --audit-include-code and --audit-include-output need --audit")
    node = args.node if args.node is not None else \
        os.environ.get("ISOL8_NODE") or socket.gethostname()
    if not node.strip():
        parser.error("serve: --node must not be empty")
    drain = args.drain_timeout
    if drain is not None and not (math.isfinite(drain) and drain > 0):
        parser.error(f"serve: --drain-timeout must be a positive number of seconds, "
                     f"got {drain:g}")
    try:
        from .server.audit import AuditLog
        from .server.keystore import KeyStore, is_postgres_url
        from .server.run import serve
    except ImportError as exc:
        print(f"isol8: serve needs the server extra (pip install 'isol8[server]'): {exc}",
              file=sys.stderr)
        return 1
    from .config import load_config

    config = load_config(path=args.config)  # else $ISOL8_CONFIG, else ~/.isol8
    for line in config.warnings:
        print(f"isol8: warning: {line}", file=sys.stderr)
    policy = config.server_policy()
    if drain is not None:
        ms = max(1, round(drain * 1000))
        policy = replace(policy, capacity=replace(policy.capacity, drain_timeout_ms=ms))
    policy = replace(policy, state_files=_state_files(args, is_postgres_url))
    key_store = KeyStore(args.auth_db) if args.auth_db else None
    # nodes sharing a database record which of them holds each session
    directory = None
    if args.auth_db and is_postgres_url(args.auth_db):
        from .server.session_directory import SessionDirectory  # psycopg: only then

        directory = SessionDirectory(args.auth_db, node)
    serve(host=args.host, port=port, api_key=key, policy=policy, key_store=key_store,
          directory=directory,
          audit=AuditLog(args.audit, include_code=args.audit_include_code,
                         include_output=args.audit_include_output, node=node)
          if args.audit else None,
          node=node)
    return 0


def _state_files(args: argparse.Namespace, is_url: Callable[[str], bool]) -> dict[str, str]:
    """The server's own files on the host (see ServerPolicy.state_files), resolved;
    SQLite's journal files beside its database hold its keys as much as the database does."""
    files = {}
    if args.auth_db and not is_url(args.auth_db):
        files["key store"] = os.path.realpath(args.auth_db)
        for suffix in ("-wal", "-shm", "-journal"):
            files[f"key store{suffix}"] = os.path.realpath(args.auth_db + suffix)
    if args.audit and not is_url(args.audit):
        files["audit log"] = os.path.realpath(args.audit)
    if args.config:
        files["configuration file"] = os.path.realpath(args.config)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "doctor":
            from .doctor import main as doctor_main

            return doctor_main(ready=args.ready)
        if args.command == "cleanup":
            from .cleanup import main as cleanup_main

            return cleanup_main(args.dry_run, args.images)
        if args.command == "image":
            from .images.command import main as image_main

            return image_main(args)
        if args.command == "config":
            from .config.command import main as config_main

            return config_main(args)
        if args.command == "mcp":
            from .mcp.command import main as mcp_main

            return mcp_main(args)
        if args.command == "serve":
            return _serve(args, parser)
        if args.command == "session":
            return _session(args, parser)
        return _exec(args, parser)
    except SetupScriptFailed as exc:  # the code did not run: the script's own exit code
        print(f"isol8: {exc}", file=sys.stderr)
        return exc.exit_code
    except Isol8Error as exc:
        print(f"isol8: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
