"""The warm pool's Python zygote: runs INSIDE a pooled sandbox, never in the supervisor.

Started as ``python3 -c <this file>`` with a SOCK_SEQPACKET socket as stdin, it finishes
interpreter start-up, says ``R`` on the socket and waits. The supervisor then sends one
request, ``marshal`` of ``(argv, env, cwd)`` with the run's stdin, stdout, stderr and code
(a sealed memfd: code of any size) attached by SCM_RIGHTS, and the zygote becomes exactly what ``python3 /sandbox/main.py``
would have been: the code file written, argv, ``sys.path[0]``, the ``__main__`` namespace,
the environment and stdio replaced, and tracebacks that start at the script. It then runs
the code and exits through the interpreter's normal shutdown (atexit handlers, flushes).

Only modules that start-up already loaded are used, plus ``_socket`` and ``marshal``, which
are dropped from ``sys.modules`` again so the code finds the interpreter as a cold run
leaves it. ``/proc/self/cmdline`` and ``sys.orig_argv`` still show the zygote: the one
difference, documented in the README.
"""


def _zygote():
    import sys
    loaded = set(sys.modules)
    import _socket
    import io
    import marshal
    import os

    control = _socket.socket(fileno=0)
    control.send(b"R")
    message, ancillary, _, _ = control.recvmsg(1 << 20, _socket.CMSG_SPACE(4 * 4))
    if not message:
        os._exit(0)  # the supervisor is gone: nothing to run
    raw = b"".join(data for level, kind, data in ancillary
                   if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS)
    fds = [int.from_bytes(raw[i:i + 4], sys.byteorder) for i in range(0, len(raw) // 4 * 4, 4)]
    argv, env, cwd = marshal.loads(message)
    with open(fds.pop(), "rb") as source:
        code = source.read()
    control.close()  # fd 0: the run's stdin takes its place
    for name in set(sys.modules) - loaded:
        del sys.modules[name]

    script = argv[1]
    fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    view = memoryview(code)
    while view:
        view = view[os.write(fd, view):]
    os.close(fd)
    os.makedirs(cwd, exist_ok=True)
    os.chdir(cwd)
    for target, fd in zip((0, 1, 2), fds):
        os.dup2(fd, target)
        os.close(fd)
    # stdin was the socket at start-up: a fresh object, as start-up builds it, over the run's
    # stdin (seekable like a cold run's). stdout and stderr were pipes then and still are.
    stdin_raw = io.FileIO(0, "rb", closefd=False)
    stdin_raw.name = "<stdin>"
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(
        io.BufferedReader(stdin_raw), encoding=sys.stdin.encoding, errors=sys.stdin.errors)
    os.environ.clear()
    os.environ.update(env)
    sys.argv[:] = argv[1:]
    sys.path[0] = os.path.dirname(script)

    main = sys.modules["__main__"].__dict__
    builtins = main["__builtins__"]
    loader = sys.modules["_frozen_importlib_external"].SourceFileLoader
    main.clear()
    main.update(__name__="__main__", __doc__=None, __package__=None, __spec__=None,
                __annotations__={}, __builtins__=builtins, __file__=script, __cached__=None,
                __loader__=loader("__main__", script))
    return script, code, main


def _run(script, code, main):
    import sys
    try:
        exec(compile(code, script, "exec", dont_inherit=True), main)
    except SystemExit:
        raise
    except BaseException as exc:
        # A cold run's traceback starts at the script: drop the zygote's own frames.
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != script:
            tb = tb.tb_next
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)
        sys.exit(130 if isinstance(exc, KeyboardInterrupt) else 1)


_run(*_zygote())
