"""Builds the C helper into the package and tags the wheel by what was built: gcc (or $CC) is
the only build requirement.

The helper is linked statically when the C library's libc.a is there. Whether a failed static
link may fall back to a dynamic helper depends on who builds:
  - ISOL8_REQUIRE_STATIC=1 (scripts/build-wheels.sh sets it): no fallback, the build fails. A
    wheel meant for other machines must not carry a helper tied to this machine's glibc.
  - otherwise (``pip install .`` or of the sdist, a local build): a dynamic helper, with a
    warning; it works on the machine that built it.
Either way the wheel's tag follows the helper: manylinux only for a static one, ``linux_<arch>``
(which PyPI refuses) for a dynamic one, so a dynamic helper can never be published by accident.
Cross builds need only $CC: ``CC=aarch64-linux-gnu-gcc`` makes an aarch64 helper, and the tag
is read from the helper's ELF header, never from the machine that runs the build.
"""

import glob
import os
import shlex
import subprocess
import sys
import sysconfig

from setuptools import Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py
from setuptools.errors import PlatformError

CFLAGS = ["-O2", "-g", "-Wall", "-Wextra", "-Wno-unused-parameter", "-D_FORTIFY_SOURCE=2",
          "-fstack-protector-strong"]
# e_machine of the ELF header (<elf.h>) -> the architecture in platform tags: the two the
# wheels are made for (scripts/build-wheels.sh).
ELF_MACHINES = {62: "x86_64", 183: "aarch64"}
# A static helper needs no glibc symbol version at all, so any manylinux tag is honest for it;
# manylinux2014 (glibc 2.17) is the oldest that aarch64 has, and x86_64 uses the same so both
# wheels read alike (every pip that runs on Python >= 3.11 knows both spellings). What the
# helper does need is a kernel (>= 5.12, isol8 doctor's check), which no wheel tag expresses.
MANYLINUX = "manylinux_2_17_{arch}.manylinux2014_{arch}"


def elf_machine(path: str) -> str | None:
    """The architecture the helper was built for, if it is one of ELF_MACHINES: e_machine, the
    u16 at offset 18, in the byte order that e_ident[EI_DATA] names (1 = little endian)."""
    with open(path, "rb") as f:
        header = f.read(20)
    if header[:4] != b"\x7fELF":
        raise PlatformError(f"{path} is not an ELF file")
    machine = int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")
    return ELF_MACHINES.get(machine)


class BuildWithHelper(build_py):
    """build_py plus the helper; ``helper`` records (arch, static) for the wheel's tag."""

    helper: tuple[str | None, bool] | None = None

    def run(self) -> None:
        super().run()
        out = os.path.join(self.build_lib, "isol8", "_bin", "isol8-helper")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        sources = sorted(glob.glob(os.path.join("csrc", "*.c")))
        command = [*shlex.split(os.environ.get("CC", "cc")), *CFLAGS, "-o", out, *sources]
        # Static when libc.a is there: no dynamic loader saves about 0.2 ms per sandbox.
        static = subprocess.run(command + ["-static"], stderr=subprocess.PIPE, text=True)
        if static.returncode != 0:
            sys.stderr.write(static.stderr)
            if os.environ.get("ISOL8_REQUIRE_STATIC") == "1":
                raise PlatformError(
                    f"static link of the isol8 helper failed ({shlex.join(command)} -static); "
                    "ISOL8_REQUIRE_STATIC=1 forbids a dynamic helper: install the C library's "
                    "static archive (Debian: libc6-dev, or libc6-dev-arm64-cross for "
                    "aarch64-linux-gnu-gcc; Fedora: glibc-static)")
            print("isol8: static link failed (above): the helper is linked dynamically and "
                  "works only on machines with this glibc", file=sys.stderr)
            subprocess.check_call(command)
        self.helper = (elf_machine(out), static.returncode == 0)


class WithBinary(Distribution):
    """A distribution with a platform binary in it, as if it had an extension module: its wheel
    is platform-specific and installs into platlib (Root-Is-Purelib: false)."""

    def has_ext_modules(self) -> bool:
        return True


class HelperWheel(bdist_wheel):
    """A wheel bound to the helper's architecture but to no Python version or ABI: the helper
    is a program the package runs, not an extension module."""

    def get_tag(self) -> tuple[str, str, str]:
        helper = self.get_finalized_command("build_py").helper
        if helper is None:
            # editable_wheel asks for the tag before anything is built, and builds no helper
            # into its wheel: the package runs the in-tree one that `make build` makes.
            return ("py3", "none", sysconfig.get_platform().replace("-", "_"))
        arch, static = helper
        if arch is None:  # a native build elsewhere (ppc64le, riscv64...): a local wheel
            return ("py3", "none", sysconfig.get_platform().replace("-", "_"))
        plat = MANYLINUX.format(arch=arch) if static else f"linux_{arch}"
        if self.plat_name_supplied:
            # --plat-name is a check, not a choice: the tag must say what the helper is.
            asked = self.plat_name.replace("-", "_").replace(".", "_")
            if not asked.endswith("_" + arch) or (asked.startswith("manylinux") and not static):
                raise PlatformError(
                    f"--plat-name {self.plat_name} does not match the helper that "
                    f"CC={os.environ.get('CC', 'cc')} built ({'static' if static else 'dynamic'}"
                    f" {arch}): set CC to a compiler for that platform")
        return ("py3", "none", plat)


setup(distclass=WithBinary, cmdclass={"build_py": BuildWithHelper, "bdist_wheel": HelperWheel})
