"""One smolagents step as a REPL cell: runs INSIDE the sandbox, never in the host.

The adapter (isol8.integrations.smolagents) sends this file's text as part of every cell,
executed in a namespace of its own with ``ARGS = (code, nonce, setup)``, so the agent's
``__main__`` gets nothing but what the agent's code itself defines. It does what a Jupyter
kernel does for smolagents' remote executors: runs the code in ``__main__``, takes the
value of a last expression as the cell's output (its ``repr``, as a kernel's
``text/plain``), and reports an exception (``FinalAnswerException`` included) by name,
value and traceback instead of dying with it.

The report is one JSON line on stderr after everything the code wrote, behind the nonce:
the engine masks secrets in it as in any output, and the host parses it as JSON only,
never unpickling anything. A forged report gains the code nothing it could not do anyway.

A cell that finds no ``_isol8_smolagents`` module runs nothing and reports "fresh": its
interpreter is a new one (the old one was lost), whose tools the host must send again.
"""


def _cell(code, nonce, setup):
    import ast
    import json
    import linecache
    import os
    import sys

    def report(record):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        data = ("\n" + nonce + json.dumps(record, ensure_ascii=False) + "\n").encode(
            "utf-8", "replace")
        while data:
            data = data[os.write(2, data):]

    if setup:
        sys.modules["_isol8_smolagents"] = type(sys)("_isol8_smolagents")
    elif "_isol8_smolagents" not in sys.modules:
        report({"status": "fresh"})
        return
    filename = "<code>"
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    namespace = sys.modules["__main__"].__dict__
    try:
        tree = ast.parse(code, filename)
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, filename, "exec"), namespace)
        value = eval(compile(last, filename, "eval"), namespace) if last else None
        report({"status": "ok", "output": None if value is None else repr(value)})
    except BaseException as exc:  # the agent's error is a result, as in a kernel
        if type(exc).__name__ == "FinalAnswerException":
            report({"status": "final", "value": str(getattr(exc, "value", ""))})
            return
        import traceback

        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != filename:
            tb = tb.tb_next
        text = "".join(traceback.format_exception(type(exc), exc, tb))
        report({"status": "error", "ename": type(exc).__name__, "traceback": text})


_cell(*globals()["ARGS"])
