"""The server policy file's ``[capacity]`` section: host-derived defaults, the schema, and an
error naming the key for every bad value (a misspelled limit silently left at its default
would hide the operator's intent)."""

from __future__ import annotations

import os

import pytest

from isol8.errors import InvalidRequest
from isol8.server.policy import QUEUE_PER_SLOT, CapacityPolicy, ServerPolicy


def _available() -> int:
    with open("/proc/meminfo") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable:"))


def test_defaults_follow_the_host():
    low = _available()
    capacity = ServerPolicy.default().capacity
    high = _available()
    cpus = len(os.sched_getaffinity(0))
    assert capacity.max_concurrent == max(2, 2 * cpus)
    assert capacity.max_queue == QUEUE_PER_SLOT * capacity.max_concurrent
    # 3/4 of MemAvailable as it was read (it moves: other processes run)
    margin = 64 << 20
    assert min(low, high) * 3 // 4 - margin <= capacity.memory_budget
    assert capacity.memory_budget <= max(low, high) * 3 // 4 + margin
    assert capacity.tmpfs_budget >= capacity.memory_budget - margin  # plus SwapFree


def test_the_capacity_section_in_toml(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(
        '[capacity]\nmaxConcurrent = 3\nmemoryBudget = "1.5g"\ntmpfsBudget = 1048576'
        '\nmaxBodySize = "64k"\nmaxCodeSize = "8k"\nmaxSessions = 5\n'
        "maxSessionsPerKey = 2\nsessionTtlMs = 500\ndrainTimeoutMs = 1000\n"
        "queueTimeoutMs = 250\nretryAfterS = 7\nmaxEngines = 2\n"
    )
    capacity = ServerPolicy.load(path).capacity
    assert capacity == CapacityPolicy(
        max_concurrent=3,
        max_queue=3 * QUEUE_PER_SLOT,  # follows maxConcurrent when not given
        queue_timeout_ms=250,
        retry_after_s=7,
        memory_budget=3 << 29,
        tmpfs_budget=1 << 20,
        max_body_size=64 << 10,
        max_code_size=8 << 10,
        max_sessions=5,
        max_sessions_per_key=2,
        session_ttl_ms=500,
        drain_timeout_ms=1000,
        max_engines=2,
    )


def test_a_zero_queue_refuses_at_once_and_other_sections_keep_their_defaults():
    policy = ServerPolicy.from_mapping({"capacity": {"maxQueue": 0}})
    assert policy.capacity.max_queue == 0
    assert policy.capacity.max_concurrent == ServerPolicy.default().capacity.max_concurrent
    assert policy.ceilings == ServerPolicy.default().ceilings


@pytest.mark.parametrize(
    "section, named",
    [
        ({"maxConcurent": 3}, "maxConcurent"),
        ({"maxConcurrent": 0}, "capacity.maxConcurrent"),
        ({"maxConcurrent": True}, "capacity.maxConcurrent"),
        ({"maxConcurrent": 1.5}, "capacity.maxConcurrent"),
        ({"maxQueue": -1}, "capacity.maxQueue"),
        ({"maxQueue": "4"}, "capacity.maxQueue"),
        ({"memoryBudget": "lots"}, "capacity.memoryBudget"),
        ({"tmpfsBudget": 0}, "capacity.tmpfsBudget"),
        ({"maxBodySize": -5}, "capacity.maxBodySize"),
        ({"sessionTtlMs": "1h"}, "capacity.sessionTtlMs"),
        ({"drainTimeoutMs": None}, "capacity.drainTimeoutMs"),
    ],
)
def test_bad_capacity_values_name_the_key(section, named):
    with pytest.raises(InvalidRequest, match=named.replace(".", r"\.")):
        ServerPolicy.from_mapping({"capacity": section})


def test_the_capacity_section_must_be_a_table():
    with pytest.raises(InvalidRequest, match="capacity: expected a table"):
        ServerPolicy.from_mapping({"capacity": [1]})


def test_images_limit_what_clients_may_run_on():
    """``images`` lists the store images a client may name in options.image; absent, any
    store image; a path or a registry reference never (it would mount a host directory)."""
    from isol8.server.wire import ExecuteBody, WireError

    def apply(policy: ServerPolicy, image: str) -> dict[str, object]:
        body = ExecuteBody(None, {"code": "1"}, {"image": image})
        return policy.apply(body)[0].options

    assert apply(ServerPolicy.default(), "python")["image"] == "python"
    limited = ServerPolicy.from_mapping({"images": ["node"]})
    assert apply(limited, "node")["image"] == "node"
    with pytest.raises(WireError, match="'python' is not allowed by the server policy"):
        apply(limited, "python")
    for image in ("/srv/root", "python:3.12", "../x"):
        with pytest.raises(WireError, match="host paths and registry references"):
            apply(ServerPolicy.default(), image)
    with pytest.raises(InvalidRequest, match="images: expected a list of image names"):
        ServerPolicy.from_mapping({"images": "python"})
