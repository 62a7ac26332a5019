"""AsyncIsol8: the same contract, awaitable; concurrency bounded; cancellation kills the run."""

import asyncio
import contextlib
import time

import pytest

from isol8 import AsyncIsol8, InvalidRequest

from conftest import watching_host


def test_execute_and_the_result_contract():
    async def main():
        async with AsyncIsol8() as eng:
            return await eng.execute("print(6 * 7)")
    r = asyncio.run(main())
    assert (r.stdout, r.exit_code, r.runtime) == ("42", 0, "python")


def test_concurrent_runs_are_bounded_by_max_concurrent():
    async def main():
        async with AsyncIsol8(max_concurrent=2) as eng:
            started = time.monotonic()
            results = await asyncio.gather(*(eng.execute(cmd="sleep 0.5; echo ok")
                                              for _ in range(4)))
            return results, time.monotonic() - started
    results, elapsed = asyncio.run(main())
    assert [r.stdout for r in results] == ["ok"] * 4
    assert elapsed >= 1.0  # two waves of two: the bound held


def test_the_event_loop_stays_responsive():
    async def main():
        async with AsyncIsol8() as eng:
            run = asyncio.ensure_future(eng.execute(cmd="sleep 1"))
            ticks = 0
            while not run.done():
                await asyncio.sleep(0.05)
                ticks += 1
            return ticks
    assert asyncio.run(main()) >= 10


def test_cancelling_the_task_kills_the_run_and_leaves_nothing():
    marker = "3183.0988"

    async def main():
        async with AsyncIsol8() as eng:
            run = asyncio.ensure_future(eng.execute(
                cmd=f"(setsid sleep {marker} &); sleep {marker}", timeout_ms=60_000))
            await asyncio.sleep(0.5)
            run.cancel()
            started = time.monotonic()
            with pytest.raises(asyncio.CancelledError):
                await run
            return time.monotonic() - started
    with watching_host(marker):
        assert asyncio.run(main()) < 5


def test_stream_events_and_early_exit_kills_the_run():
    marker = "2236.0679"

    async def main():
        async with AsyncIsol8() as eng:
            events = [(e.type, e.data) async for e in eng.execute_stream(cmd="echo a; exit 3")]
            async with contextlib.aclosing(eng.execute_stream(
                    cmd=f"(setsid sleep {marker} &); sleep 0.3; echo go; sleep {marker}")) as s:
                async for event in s:
                    assert (event.type, event.data) == ("stdout", "go\n")
                    break
            return events
    with watching_host(marker):
        assert asyncio.run(main()) == [("stdout", "a\n"), ("exit", "3")]


def test_errors_surface_in_the_awaiting_task():
    async def main():
        async with AsyncIsol8() as eng:
            await eng.execute("print(1)", cmd="true")
    with pytest.raises(InvalidRequest, match="mutually exclusive"):
        asyncio.run(main())
    with pytest.raises(InvalidRequest, match="max_concurrent"):
        AsyncIsol8(max_concurrent=0)


def test_files_repl_setup_and_the_warm_pool_are_there_too():
    async def persistent():
        async with AsyncIsol8(mode="persistent", repl=True) as eng:
            await eng.execute("started = True")  # put_file needs the session (upstream)
            await eng.put_file("/sandbox/blob", bytes(range(256)))
            await eng.execute("data = open('/sandbox/blob', 'rb').read()")
            r = await eng.execute("print(len(data))", setup_script="echo setting up")
            return r.stdout, await eng.get_file("/sandbox/blob")

    async def warm():
        async with AsyncIsol8(max_concurrent=4) as eng:
            await eng.start(prewarm={"runtimes": ["python"]})
            probe = "print(open('/proc/self/cmdline').read().split(chr(0))[1])"
            return (await eng.execute(probe)).stdout

    assert asyncio.run(persistent()) == ("256", bytes(range(256)))
    assert asyncio.run(warm()) == "-c"  # served by a pooled zygote
