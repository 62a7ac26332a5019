"""Builds the C helper into the package: gcc (or $CC) is the only build requirement."""

import glob
import os
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithHelper(build_py):
    def run(self):
        super().run()
        out = os.path.join(self.build_lib, "isol8", "_bin", "isol8-helper")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        sources = sorted(glob.glob(os.path.join("csrc", "*.c")))
        command = [os.environ.get("CC", "cc"), "-O2", "-g", "-Wall", "-Wextra",
                   "-Wno-unused-parameter", "-D_FORTIFY_SOURCE=2", "-fstack-protector-strong",
                   "-o", out, *sources]
        # Static when libc.a is there: no dynamic loader saves about 0.2 ms per sandbox.
        if subprocess.call(command + ["-static"], stderr=subprocess.DEVNULL) != 0:
            subprocess.check_call(command)


setup(cmdclass={"build_py": BuildWithHelper})
