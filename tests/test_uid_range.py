"""The host uid range sandboxes map to as root (``uid_range``): outside every range systemd
assigns or reserves and every /etc/subuid and /etc/subgid entry, so that no sandbox shares a
host identity with a container (issue 9). The sub-id files are read through
``identity.SUBID_FILES``, pointed at temporary files here."""

from __future__ import annotations

import pytest

from conftest import run_sh
from isol8 import InvalidRequest, Isol8, identity

OLD_DEFAULT = (1_500_000_000, 65536)  # inside systemd's container range


@pytest.fixture
def subids(tmp_path, monkeypatch):
    """Empty temporary /etc/subuid and /etc/subgid; the test writes their entries."""
    subuid, subgid = tmp_path / "subuid", tmp_path / "subgid"
    subuid.write_text("")
    subgid.write_text("")
    monkeypatch.setattr(identity, "SUBID_FILES", (str(subuid), str(subgid)))
    return subuid, subgid


def _overlaps(a: tuple[int, int], first: int, last: int) -> bool:
    return a[0] <= last and first <= a[0] + a[1] - 1


def test_the_default_is_outside_every_systemd_range(subids):
    assert identity.default_uid_range() == identity.DEFAULT_UID_RANGE
    for first, last, name in identity.SYSTEMD_RANGES:
        assert not _overlaps(identity.DEFAULT_UID_RANGE, first, last), name
    assert identity.validate_uid_range(identity.DEFAULT_UID_RANGE) == identity.DEFAULT_UID_RANGE
    assert Isol8().options.uid_range == identity.DEFAULT_UID_RANGE


@pytest.mark.parametrize("uid_range, overlap", [
    (OLD_DEFAULT, "systemd's container range (524288-1879048191)"),
    ((524288 - 10, 11), "systemd's container range"),
    ((1879048191, 1), "systemd's container range"),
    ((2147352576 + 100, 1), "systemd's foreign range (2147352576-2147418111)"),
    ((2147418112, 65537), "the ids from 2^31 up"),
    ((4294967294, 1), "the ids from 2^31 up"),
    ((60001, 10), "systemd's system, regular, homed, nspawn, dynamic and nobody ids"),
    ((65534, 1), "nobody"),
])
def test_a_range_systemd_assigns_is_refused(subids, uid_range, overlap):
    with pytest.raises(InvalidRequest, match="uid_range") as info:
        Isol8(uid_range=uid_range)
    assert overlap in str(info.value)
    assert f"{uid_range[0]}-{uid_range[0] + uid_range[1] - 1} overlaps" in str(info.value)


@pytest.mark.parametrize("uid_range", [(65536, 458752), (1879048192, 1), (2147418112, 65536)])
def test_the_gaps_systemd_leaves_are_accepted(subids, uid_range):
    assert Isol8(uid_range=uid_range).options.uid_range == uid_range


@pytest.mark.parametrize("uid_range", [(-5, 1), (70000, 0), ("70000", 1), (True, 1), (70000,),
                                       70000])
def test_malformed_ranges_are_refused(subids, uid_range):
    with pytest.raises(InvalidRequest, match="uid_range: expected"):
        Isol8(uid_range=uid_range)


@pytest.mark.parametrize("which", [0, 1])
def test_a_range_overlapping_a_subid_entry_is_refused(subids, which):
    subids[which].write_text("# comment\nnot a line\nalice:100000:65536\n"
                             "podman:70000:100\n")
    with pytest.raises(InvalidRequest) as info:
        Isol8(uid_range=(70050, 1000))
    assert f"{subids[which]} line 4 (podman:70000:100)" in str(info.value)
    assert Isol8(uid_range=(70100, 1000)).options.uid_range == (70100, 1000)  # just past it


def test_the_default_moves_past_subid_entries(subids):
    start, count = identity.DEFAULT_UID_RANGE
    subids[0].write_text(f"alice:{start}:{count}\n")
    subids[1].write_text(f"alice:{start + count + 5}:1\n")
    moved = identity.default_uid_range()
    assert moved == (start + 2 * count, count)
    assert Isol8().options.uid_range == moved
    with pytest.raises(InvalidRequest, match=f"{subids[0]} line 1"):
        Isol8(uid_range=identity.DEFAULT_UID_RANGE)


@pytest.mark.root_only  # only root maps a sandbox to a host uid of its own
def test_a_sandbox_never_gets_a_host_uid_a_subid_entry_hands_out(subids):
    """The old default (1.5e9) lay in systemd's container range and ignored /etc/subuid: a
    rootless container whose sub-ids covered it shared its host uid with sandboxes. Here the
    sub-id files claim both the old default and the new one; the sandbox's host uid (and
    gid) must lie in neither."""
    start, count = identity.DEFAULT_UID_RANGE
    subids[0].write_text(f"container:{OLD_DEFAULT[0]}:{OLD_DEFAULT[1]}\n")
    subids[1].write_text(f"container:{start}:{count}\n")
    claimed = [(OLD_DEFAULT[0], OLD_DEFAULT[0] + OLD_DEFAULT[1] - 1),
               (start, start + count - 1)]
    with Isol8() as eng:
        r = run_sh(eng, "cat /proc/self/uid_map /proc/self/gid_map")
    assert r.exit_code == 0, r.stderr
    (inside_uid, host_uid, n_uid), (inside_gid, host_gid, n_gid) = \
        [[int(f) for f in line.split()] for line in r.stdout.splitlines()]
    assert (inside_uid, n_uid, inside_gid, n_gid) == (1000, 1, 1000, 1)
    for host_id in (host_uid, host_gid):
        assert not any(first <= host_id <= last for first, last in claimed), host_id
        assert not any(first <= host_id <= last for first, last, _ in identity.SYSTEMD_RANGES)
        assert eng.options.uid_range[0] <= host_id < sum(eng.options.uid_range)
