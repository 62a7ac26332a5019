"""Secrets: injected as env, masked in stdout and stderr however the bytes arrive."""

import random
import subprocess
import sys

import pytest

from isol8 import InvalidRequest, Isol8
from isol8.output import CappedOutput
from isol8.secrets import MASK, Masker, mask

SECRET = "sk-live-7f3a9c2e1b"


@pytest.fixture(scope="module")
def secret_engine():
    with Isol8(secrets={"API_KEY": SECRET, "OTHER": "hunter2"}) as eng:
        yield eng


def test_secret_is_in_the_environment_and_masked_in_output(secret_engine):
    r = secret_engine.execute("import os; k = os.environ['API_KEY']; print(k, len(k))")
    assert r.stdout == f"*** {len(SECRET)}"
    assert SECRET not in r.stdout + r.stderr


def test_secret_split_across_writes_is_masked(secret_engine):
    r = secret_engine.execute(
        "import os, sys, time\nk = os.environ['API_KEY']\n"
        "sys.stdout.write('a' + k[:7]); sys.stdout.flush(); time.sleep(0.1)\n"
        "sys.stdout.write(k[7:] + 'b\\n')")
    assert r.stdout == "a***b"


def test_secret_written_a_byte_at_a_time_to_stderr_is_masked(secret_engine):
    r = secret_engine.execute(cmd='for ((i=0; i<${#API_KEY}; i++)); do '
                                  'printf %s "${API_KEY:$i:1}" >&2; done; echo done')
    assert (r.stderr, r.stdout) == ("***", "done")


def test_a_prefix_of_a_secret_is_released_at_the_end(secret_engine):
    r = secret_engine.execute(cmd="printf 'sk-live-7f'")  # looks like a start, never finishes
    assert r.stdout == "sk-live-7f"


def test_env_values_are_not_masked(secret_engine):
    r = secret_engine.execute(cmd='echo "$PLAIN"', env={"PLAIN": "visible-value"})
    assert r.stdout == "visible-value"


def test_request_env_comes_after_secrets(secret_engine):
    r = secret_engine.execute(cmd='echo "$OTHER"', env={"OTHER": "overridden"})
    assert r.stdout == "overridden"


def test_masking_happens_before_the_cap():
    with Isol8(secrets={"K": SECRET}, max_output_size=20) as eng:
        r = eng.execute(cmd='printf "0123456789%s" "$K"; printf "%s" "$K"')
    assert SECRET[:5] not in r.stdout and r.truncated is False
    assert r.stdout == "0123456789******"


@pytest.mark.parametrize("secrets", [{"": "x"}, {"A=B": "x"}, {"A": 1}, ["A"]])
def test_invalid_secrets_are_rejected(secrets):
    with pytest.raises(InvalidRequest, match="secrets"):
        Isol8(secrets=secrets)


def test_cli_secret_flag():
    p = subprocess.run([sys.executable, "-m", "isol8", "exec", "--secret", f"TOKEN={SECRET}",
                        "--cmd", 'echo "token=$TOKEN"'], capture_output=True, text=True,
                       timeout=60)
    assert (p.returncode, p.stdout) == (0, "token=***\n")


# -- the masker alone -------------------------------------------------------------------------

def chunked(data: bytes, rng: random.Random) -> list[bytes]:
    out, i = [], 0
    while i < len(data):
        step = rng.choice([1, 1, 2, 3, 7, 64])
        out.append(data[i:i + step])
        i += step
    return out


def test_any_chunking_gives_the_same_result_as_masking_the_whole():
    rng = random.Random(42)
    secrets = [b"abcabd", b"xyz", b"zz", b"\xc3\xa9t\xc3\xa9"]
    alphabet = [b"a", b"b", b"c", b"d", b"x", b"y", b"z", b"\xc3\xa9", b"t", b" "]
    for _ in range(2000):
        data = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        masker = Masker(secrets)
        out = b"".join(masker.feed(chunk) for chunk in chunked(data, rng)) + masker.flush()
        assert out == mask(data, sorted(secrets, key=len, reverse=True)), data


def test_the_longer_of_two_overlapping_secrets_is_masked_whole():
    masker = Masker([b"pass", b"password1"])
    assert masker.feed(b"my password1!") + masker.flush() == b"my " + MASK + b"!"


def test_empty_secrets_are_ignored_and_nothing_is_held_back_without_secrets():
    assert Masker([b""]).feed(b"abc") == b"abc"


def test_capped_output_masks_before_counting():
    sink = CappedOutput(5, Masker([b"secret"]))
    for byte in b"secret!":
        sink.feed(bytes([byte]))
    assert (sink.text(), sink.truncated) == ("***!", False)
