"""A Python interpreter that waits for code: runs INSIDE a sandbox, never in the supervisor.

Started as ``python3 -c <this file> zygote|repl`` with a SOCK_SEQPACKET socket as stdin: it
finishes start-up, says ``R`` on the socket and waits for requests, each ``marshal`` of
``(argv, env, cwd)`` with the run's stdin, stdout, stderr and code (a sealed memfd: code of
any size) attached by SCM_RIGHTS.

zygote (the warm pool, persistent sessions): one request, and the process becomes exactly
what ``python3 /sandbox/main.py`` would have been: the code file written, argv,
``sys.path[0]``, a fresh ``__main__``, the environment and stdio replaced, tracebacks that
start at the script, and the interpreter's normal shutdown (atexit handlers, flushes).
``/proc/self/cmdline`` and ``sys.orig_argv`` still show the zygote: the one difference,
documented in the README. Once it holds the request it says ``A``, before any of the code
runs: a zygote that dies without saying it (killed by a background process) never ran
the code, and the supervisor starts the run cold instead of reporting that death.

repl (``repl=True``): requests in a loop, each code run in the same ``__main__``, so
variables and imports survive. An exception or ``sys.exit`` ends the cell, not the
process: its traceback goes to the run's stderr and its exit code back on the socket, after
stdout and stderr are handed back (``/dev/null`` takes their place, so the run's pipes
reach EOF). SIGINT (the supervisor's timeout) interrupts a cell the same way.

Only modules that start-up already loaded are used, plus ``_socket`` and ``gc`` (and
``traceback`` in a REPL), which a zygote drops from ``sys.modules`` again so the code finds
the interpreter as a cold run leaves it; ``gc.get_freeze_count()`` is the one trace left.
"""


def _main():
    import sys
    loaded = set(sys.modules)
    import _socket
    import io
    import marshal
    import os

    control = _socket.socket(fileno=os.dup(0))  # fd 0 becomes each run's stdin
    if sys.argv[1:] == ["zygote"]:
        # Work a cold run does too, done before the code arrives: the compiler's first use
        # builds its AST types (~1 ms), and the objects of start-up, frozen, are left out of
        # the collection at shutdown (~1 ms).
        import gc
        compile("", "", "exec")
        gc.freeze()
    else:
        # Before the hello: once it is out, a cell can arrive and its timeout's SIGINT with
        # it, and SIGINT's default (KeyboardInterrupt) during these imports would end the
        # interpreter with the cell unread (seen in the slow TCG VM). Cells re-enable it.
        import linecache
        import signal
        import traceback

        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        control.send(b"R" + os.getpid().to_bytes(4, "little"))
    except BrokenPipeError:
        pass  # a request was sent before this hello, and the sender has moved on
    stdin_encoding, stdin_errors = sys.stdin.encoding, sys.stdin.errors

    def receive():
        message, ancillary, _, _ = control.recvmsg(1 << 20, _socket.CMSG_SPACE(4 * 4))
        if not message:
            os._exit(0)  # the supervisor is gone
        raw = b"".join(data for level, kind, data in ancillary
                       if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS)
        fds = [int.from_bytes(raw[i:i + 4], sys.byteorder)
               for i in range(0, len(raw) // 4 * 4, 4)]
        argv, env, cwd = marshal.loads(message)
        with open(fds.pop(), "rb") as source:
            code = source.read()
        # stdio: the run's own. stdin gets a fresh object over it, as start-up builds one
        # (the start-up one sat on the socket and cached that it was not seekable).
        for target, fd in zip((0, 1, 2), fds):
            os.dup2(fd, target)
            os.close(fd)
        stdin_raw = io.FileIO(0, "rb", closefd=False)
        stdin_raw.name = "<stdin>"
        sys.stdin = sys.__stdin__ = io.TextIOWrapper(  # type: ignore[misc]  # deliberately
            io.BufferedReader(stdin_raw), encoding=stdin_encoding, errors=stdin_errors)
        os.environ.clear()
        os.environ.update(env)
        os.makedirs(cwd, exist_ok=True)
        os.chdir(cwd)
        return argv, code

    def run(code, filename, namespace, print_exception):
        """Run code; an exception is printed with the traceback starting at the code."""
        try:
            exec(compile(code, filename, "exec", dont_inherit=True), namespace)
        except SystemExit:
            raise
        except BaseException as exc:
            tb = exc.__traceback__
            while tb is not None and tb.tb_frame.f_code.co_filename != filename:
                tb = tb.tb_next
            print_exception(type(exc), exc.with_traceback(tb), tb)
            return 130 if isinstance(exc, KeyboardInterrupt) else 1
        return 0

    main = sys.modules["__main__"].__dict__
    if sys.argv[1:] == ["zygote"]:
        argv, code = receive()
        try:
            control.send(b"A")
        except OSError:
            pass  # the supervisor gave up on the run (interrupted): it kills this process
        control.close()
        for name in set(sys.modules) - loaded:
            del sys.modules[name]
        script = argv[1]
        fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        view = memoryview(code)
        while view:
            view = view[os.write(fd, view):]
        os.close(fd)
        sys.argv[:] = argv[1:]
        sys.path[0] = os.path.dirname(script)
        builtins = main["__builtins__"]
        main.clear()
        main.update(__name__="__main__", __doc__=None, __package__=None, __spec__=None,
                    __annotations__={}, __builtins__=builtins, __file__=script,
                    __cached__=None, __loader__=sys.modules[
                        "_frozen_importlib_external"].SourceFileLoader("__main__", script))
        sys.exit(run(code, script, main, sys.excepthook))

    def cell(code, filename):
        """One cell's exit status; SIGINT interrupts cells only (see the module doc)."""
        try:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            return run(code, filename, main, traceback.print_exception)
        except SystemExit as exit:
            if exit.code is None or isinstance(exit.code, int):
                return exit.code or 0
            print(exit.code, file=sys.stderr)
            return 1
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    builtins = main["__builtins__"]
    main.clear()
    main.update(__name__="__main__", __doc__=None, __package__=None, __spec__=None,
                __annotations__={}, __builtins__=builtins)
    sys.argv[:] = [""]
    sys.path[0] = ""
    null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    cells = 0
    while True:
        _, code = receive()
        cells += 1
        filename = f"<cell {cells}>"
        text = code.decode("utf-8", "replace")
        linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
        status = cell(code, filename)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.dup2(null, 0)
        control.send(int(status).to_bytes(4, "little", signed=True))


_main()
