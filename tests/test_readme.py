"""The README runs as written: every code block of its usage sections, verbatim.

Python blocks run in a subprocess of this venv's interpreter, in a fresh directory, with
stdout attributed to the README line that printed it: every ``print(...)`` line documents
its output in its comment (the output's lines joined by ", ", then optionally ": " or "; "
and prose), and a comment that no longer matches fails. Shell blocks run as one bash script
with ``isol8`` on PATH only the way the README says a user gets it (``. .venv/bin/activate``
after ``make run``), from a directory holding the fixtures they name; each line must exit 0,
and a ``-> OUTPUT`` in its comment is its stdout (lines joined by ", "). Lines whose result
is a file or JSON have their own check below. ``make test`` is not run here (it runs this
suite): its target is checked with ``make -n``.

Sections with code blocks are either usage (run here) or listed in NOT_EXAMPLES with the
reason, so a block added anywhere fails until it runs here or is said not to be an example.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
USAGE_SECTIONS = ("Two commands", "Use")
NOT_EXAMPLES = {
    "Design": "a diagram of the process tree",
    "AppArmor (Ubuntu 23.10+)": "installs a profile with sudo, on Ubuntu only",
    "Server (`isol8 serve`)": "starts a server; tests/test_server.py sends the seed's curl "
                              "request verbatim to one",
    "Keys and sessions": "needs a server with --auth-db; tests/test_server_keys.py makes "
                         "each call against one",
    "Streaming": "needs a running isol8 serve; tests/test_server_stream.py reads these "
                 "frames from one",
    "Server policy": "a policy file: test_the_server_policy_example_loads loads it",
    "Remote client": "needs a running isol8 serve; tests/test_client.py and "
                     "tests/test_cli_remote.py run each call against one",
    "Running on an image (`rootfs=`)": "needs a built image; tests/test_image_run.py runs "
                                       "code on one",
    "Building and managing images: `isol8 image`": "builds with mmdebstrap from the Debian "
                                                   "mirror; tests/test_image_build.py and "
                                                   "tests/test_image_store.py run each command",
    "Packages": "needs a package index; tests/test_packages.py installs from one on loopback",
    "Wheels": "builds release files into dist/ (root installs a cross compiler); "
              "tests/test_wheel.py builds the same wheels and installs one",
    "Code from a URL (`code_url`)": "fetches from GitHub; tests/test_code_url.py makes the "
                                    "same calls against a loopback HTTPS server",
    "Config files": "a config file and a host's example: tests/test_config.py loads the TOML "
                    "and runs the example verbatim",
    "MCP server": "starts a server; tests/test_mcp_transports.py runs its Python example "
                  "verbatim and checks its JSON and TOML blocks",
    "smolagents": "needs a model; tests/test_integration_smolagents.py runs the example "
                  "verbatim with a scripted one",
    "OpenAI Agents SDK": "needs a model; tests/test_integration_openai_agents.py runs both "
                         "examples verbatim with a scripted one",
    "LangChain": "needs a model; tests/test_integration_langchain.py runs the example "
                 "verbatim with a scripted one",
    "pydantic-ai": "needs a model; tests/test_integration_pydantic_ai.py runs the example "
                   "verbatim with a scripted one",
    "Draining": "needs a running isol8 serve; tests/test_server_drain.py runs the curl "
                "verbatim against one",
    "Keys and audit in PostgreSQL": "needs PostgreSQL and nodes; tests/test_server_postgres.py "
                                    "runs both flags against a real database and the SQL "
                                    "query verbatim",
    "Many nodes": "needs three nodes and HAProxy; tests/test_cluster.py runs the check "
                  "verbatim and the whole set-up on loopback",
    "Kubernetes": "kubectl commands need a cluster; tests/test_deploy_k8s.py validates the "
                  "manifests and runs the node's command, tests/test_doctor_ready.py runs "
                  "the doctor --ready example verbatim",
}


@dataclass(frozen=True)
class Block:
    section: str
    lang: str
    first_line: int  # README line number of the block's first code line
    text: str

    def lines(self) -> list[tuple[int, str]]:
        return list(enumerate(self.text.splitlines(), self.first_line))


def readme_blocks() -> tuple[list[Block], list[tuple[str, int]]]:
    """Fenced blocks with the heading they sit under, and indented code lines (a line of
    four spaces after a blank line, outside a fence and a list) in the usage sections."""
    blocks, indented = [], []
    section, fence, start, lang, previous = "", None, 0, "", ""
    lines = README.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if fence is not None:
            if line.startswith("```"):
                blocks.append(Block(section, lang, start, "\n".join(lines[start - 1:number - 1])
                                    + "\n"))
                fence = None
        elif line.startswith("```"):
            fence, start, lang = line, number + 1, line[3:].strip()
        elif line.startswith("#"):
            section = line.lstrip("#").strip()
        elif (line.startswith("    ") and not previous.strip() and section in USAGE_SECTIONS
              and not _in_list(lines, number)):
            indented.append((section, number))
        previous = line
    return blocks, indented


def _in_list(lines: list[str], number: int) -> bool:
    """Whether README line ``number`` continues a bullet (the paragraph above it is one)."""
    for line in reversed(lines[:number - 1]):
        if line.strip() and not line.startswith(" "):
            return line.startswith("- ")
    return False


BLOCKS, INDENTED = readme_blocks()


def blocks(section: str, lang: str) -> list[Block]:
    return [b for b in BLOCKS if b.section == section and b.lang == lang]


def test_every_block_is_run_here_or_said_not_to_be_an_example():
    assert {b.section for b in BLOCKS} >= set(USAGE_SECTIONS)
    for block in BLOCKS:
        if block.section in USAGE_SECTIONS:
            assert block.lang in ("python", "sh"), (
                f"README line {block.first_line}: a {block.lang or 'plain'} block in "
                f"{block.section!r} that this file does not run")
        else:
            assert block.section in NOT_EXAMPLES, (
                f"README line {block.first_line}: a code block under {block.section!r}: run "
                "it in tests/test_readme.py (add the section to USAGE_SECTIONS) or add the "
                "section to NOT_EXAMPLES with the reason")
    assert INDENTED == [], f"indented code in a usage section, not run: {INDENTED}"
    assert len(blocks("Two commands", "sh")) == 1 and len(blocks("Use", "sh")) == 1
    assert len(blocks("Use", "python")) >= 1


@pytest.fixture
def workdir():
    """The directory the examples run in, with the fixtures they name. World-readable
    under /var/tmp: as root, a sandbox's host uid reaches a mount source only through the
    'other' permission bits of every directory above it (README, Mounts)."""
    path = Path(tempfile.mkdtemp(prefix="isol8-readme-", dir="/var/tmp"))
    try:
        path.chmod(0o755)
        (path / ".venv").symlink_to(sys.prefix)  # what `make run` leaves in the checkout
        yield path
    finally:
        shutil.rmtree(path)


# python blocks

# Runs a block's source as written, compiled under README line numbers, and records what
# each README line printed (the innermost frame of the README on the stack at each write).
RUNNER = r"""
import io, json, sys
path, first, out = sys.argv[1:4]
source = "\n" * (int(first) - 1) + open(path).read()
printed = {}

class ByLine(io.TextIOBase):
    def writable(self):
        return True

    def write(self, text):
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename != "README.md":
            frame = frame.f_back
        line = str(frame.f_lineno if frame is not None else 0)
        printed[line] = printed.get(line, "") + text
        return len(text)

sys.stdout = ByLine()
try:
    exec(compile(source, "README.md", "exec"), {"__name__": "__main__"})
finally:
    with open(out, "w") as fh:
        json.dump(printed, fh)
"""


def split_comment(line: str) -> tuple[str, str]:
    """(code, comment) of a Python or shell line: a '#' outside quotes starts the comment.
    The README's lines have no '#' inside a string, which this relies on and checks."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1:].strip()
    assert quote is None, f"unbalanced quotes in README line {line!r}"
    return line.rstrip(), ""


def documented(comment: str, output: str, where: str) -> None:
    """The comment starts with the output: its lines joined by ', ', then the end or prose
    after ': ' or '; '."""
    shown = ", ".join(output.rstrip("\n").split("\n"))
    assert output and (comment == shown or comment.startswith((shown + ": ", shown + "; "))), (
        f"{where}: the comment says {comment!r}, the line printed {output!r}")


@pytest.mark.parametrize("block", blocks("Use", "python"), ids=lambda b: f"line{b.first_line}")
def test_python_block_runs_and_prints_what_its_comments_say(block, workdir):
    (workdir / "block.py").write_text(block.text)
    proc = subprocess.run([sys.executable, "-c", RUNNER, "block.py", str(block.first_line),
                           "printed.json"], cwd=workdir, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    printed = json.loads((workdir / "printed.json").read_text())
    checked = set()
    for number, line in block.lines():
        code, comment = split_comment(line)
        if re.match(r"\s*print\(", code):
            assert comment, f"README line {number}: a print without its output in a comment"
            documented(comment, printed.get(str(number), ""), f"README line {number}")
            checked.add(str(number))
    assert checked and set(printed) <= checked, f"output from lines without a print: {printed}"


# shell blocks

def shell_fixtures(path: Path) -> None:
    """What the CLI examples name: a script, a project, a repo with a Makefile, a build
    directory a sandbox writes (o+w: as root the sandbox's uid owns nothing here), a setup
    file that fails unless the first --setup ran before it."""
    (path / "script.mjs").write_text("console.log(await Promise.resolve('from script.mjs'))\n")
    (path / "project" / "src").mkdir(parents=True)
    (path / "project" / "src" / "app.py").write_text("print('report from app.py')\n")
    (path / "repo").mkdir()
    (path / "repo" / "words.txt").write_text("pear\napple\nfig\n")
    (path / "repo" / "Makefile").write_text("all:\n\tsort words.txt > /mnt/out/sorted.txt\n")
    (path / "build").mkdir()
    (path / "build").chmod(0o777)
    (path / "more-setup.sh").write_text("test -s n.txt  # the first --setup has run\n")
    for item in path.rglob("*"):
        if not item.is_symlink() and item.name != "build":
            item.chmod(0o755 if item.is_dir() else 0o644)


def check_script_mjs(out: str, path: Path) -> None:
    wire = json.loads(out)
    assert (wire["exitCode"], wire["stdout"]) == (0, "from script.mjs"), wire


def check_out_file(out: str, path: Path) -> None:
    assert out == "" and (path / "result.txt").read_text() == "report from app.py"


def check_mount_build(out: str, path: Path) -> None:
    assert (path / "build" / "sorted.txt").read_text() == "apple\nfig\npear\n"


def check_doctor(out: str, path: Path) -> None:
    assert out.rstrip().endswith("isol8 can run sandboxes on this host."), out


# A unique piece of each line whose result is not stdout alone: the line must exist.
LINE_CHECKS = {
    "isol8 exec script.mjs": check_script_mjs,
    "--out result.txt": check_out_file,
    "--mount ./build:/mnt/out:rw": check_mount_build,
    "isol8 doctor": check_doctor,
}
_MARK = "printf '\\n@@README %s %s@@\\n' {} \"$status\""


def test_cli_block_runs_line_by_line_as_printed(workdir):
    (block,) = blocks("Use", "sh")
    shell_fixtures(workdir)
    script, commands = [], []
    for number, line in block.lines():
        code, comment = split_comment(line)
        if code:
            commands.append((number, code, comment))
            # the line verbatim, then a marker with its status on both streams
            script += [line, "status=$?", _MARK.format(number) + " >&2", _MARK.format(number)]
    env = dict(os.environ, PATH="/usr/bin:/bin")  # isol8 only through the activation
    env.pop("VIRTUAL_ENV", None)
    assert shutil.which("isol8", path=env["PATH"]) is None
    proc = subprocess.run(["bash", "-c", "\n".join(script)], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=600)
    outs = dict(_by_marker(proc.stdout))
    errs = dict(_by_marker(proc.stderr))
    assert [n for n, _, _ in commands] == list(outs), proc.stdout + proc.stderr
    used = set()
    for number, code, comment in commands:
        status, out = outs[number]
        assert status == 0, f"README line {number}: {code}\nexit {status}: {errs[number][1]}"
        result = re.search(r"->\s*(.*?)(?:;\s|$)", comment)
        if result:
            shown = ", ".join(out.rstrip("\n").split("\n"))
            assert shown == result.group(1), f"README line {number}: {code}\nprinted {out!r}"
        for key, check in LINE_CHECKS.items():
            if key in code:
                used.add(key)
                check(out, workdir)
    assert used == set(LINE_CHECKS), f"lines gone from the README: {set(LINE_CHECKS) - used}"


def _by_marker(text: str):
    """(README line, (status, output)) for each marker, in order."""
    position = 0
    for match in re.finditer(r"\n@@README (\d+) (\d+)@@\n", text):
        yield int(match.group(1)), (int(match.group(2)), text[position:match.start()])
        position = match.end()


def test_make_run_prints_256_with_the_command_it_names(workdir):
    """``make run`` is the first thing a user types; its comment names the command it ends
    with. That command is the Makefile's (``make -n``, prerequisites taken as made), and it
    prints what the comment says. ``make test`` would run this suite: only its target is
    checked."""
    (block,) = blocks("Two commands", "sh")
    lines = {split_comment(line)[0]: split_comment(line)[1] for _, line in block.lines()}
    assert set(lines) == {"make run", "make test"}
    named = re.fullmatch(r".*then: (.+?)\s+-> (\S+)", lines["make run"])
    assert named, lines["make run"]
    command, shown = named.groups()
    dry = subprocess.run(["make", "-n", "-o", "setup", "run"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert dry.returncode == 0 and dry.stdout.splitlines()[-1] == command, dry.stdout
    proc = subprocess.run(["bash", "-c", command], cwd=workdir, capture_output=True, text=True,
                          timeout=60)
    assert (proc.returncode, proc.stdout) == (0, shown + "\n"), proc.stderr
    dry = subprocess.run(["make", "-n", "-o", "setup", "test"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert dry.returncode == 0 and "scripts/test.sh" in dry.stdout.splitlines()[-1], dry.stdout


def test_the_server_policy_example_loads(tmp_path):
    """Every key the README shows is one the loader knows, with a value it takes (its mount
    source made to exist: the loader refuses a grant of a missing path)."""
    from isol8.server.policy import ServerPolicy

    (block,) = blocks("Server policy", "toml")
    data = tomllib.loads(block.text.replace("/srv/datasets", str(tmp_path)))
    policy = ServerPolicy.from_mapping(data)
    assert policy.network_modes == ("none", "filtered") and not policy.seccomp_unconfined
    assert [(g.source, g.writable) for g in policy.mounts] == [(str(tmp_path), False)]
