"""The DERP client against relays that misbehave (tests/derp/badrelay.py, real loopback sockets): one
that hangs up after the handshake, one that stalls, one that floods garbage; TLS failures in the log;
no event queue that nobody reads. Time knobs are ClientConfig fields, shrunk here."""
from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys

import pytest

from derp import protocol as P
from derp.aio.client import DerpClient, Disconnected, targets_for_url
from derp.aio.clientconn import READ_BUDGET
from derp.errors import UsageError
from tests.derp.badrelay import GARBAGE, BadRelay, self_signed_context
from tests.derp.derp_support import new_key, until

pytestmark = pytest.mark.timeout(60)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(coro):
    return asyncio.run(coro)



def test_relay_that_hangs_up_after_the_handshake_is_redialed_ever_more_slowly() -> None:
    """A handshake alone does not reset the backoff: each short-lived connection lengthens the wait."""
    async def main():
        async with BadRelay("close") as relay:
            c = DerpClient(new_key()[0], targets_for_url(relay.url), config=P.ClientConfig(healthy_after=30))
            await c.start(wait=False)
            try:
                await until(lambda: relay.handshakes >= 6, 20, "6 handshakes")
                assert c.backoff_step >= 5 and c.stats.short_lived >= 5
            finally:
                await c.close()
    run(main())


def test_a_connection_that_lasted_resets_the_backoff() -> None:
    async def main():
        async with BadRelay("close", hold=0.3) as relay:
            c = DerpClient(new_key()[0], targets_for_url(relay.url), config=P.ClientConfig(healthy_after=0.2))
            await c.start(wait=False)
            try:
                await until(lambda: relay.handshakes >= 4, 20, "4 handshakes")
                assert c.backoff_step == 1 and c.stats.short_lived == 0
            finally:
                await c.close()
    run(main())


def test_stalled_relay_is_given_up_within_three_keepalive_intervals() -> None:
    async def main():
        events = []
        async with BadRelay("stall") as relay:
            c = DerpClient(new_key()[0], targets_for_url(relay.url), on_event=events.append,
                           on_packet=lambda s, d: None, config=P.ClientConfig(keepalive_interval=0.2))
            await c.start(timeout=5)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            try:
                await until(lambda: any(type(e) is Disconnected for e in events), 10, "a Disconnected event")
                assert loop.time() - t0 >= 0.5          # not before 3 silent intervals (0.6 s from ServerInfo)
                [gone] = [e for e in events if type(e) is Disconnected]
                assert "no frame from the server for 0.6 s" in gone.reason
                assert c.stream is None or c.stream.core.keepalive_pings == 0   # a new connection, or none yet
                await until(lambda: relay.handshakes >= 2, 10, "a new connection")   # and it dials again
            finally:
                await c.close()
    run(main())


def test_live_relay_answers_the_keepalive_pings(derper) -> None:
    """Against the real relay (which sends KeepAlive only every 60 s) the client's Pings keep the link up."""
    srv = derper("--open-relay", tls=False)

    async def main():
        events = []
        c = DerpClient(new_key()[0], targets_for_url(srv.url), on_event=events.append,
                       on_packet=lambda s, d: None, config=P.ClientConfig(keepalive_interval=0.25))
        await c.start(timeout=5)
        try:   # (0.25 s: the 0.75 s of silence that ends the link is more than a loaded machine stalls)
            await asyncio.sleep(2.0)
            assert c.connected and not [e for e in events if type(e) is Disconnected], events
            assert c.stream.core.keepalive_pings >= 3
        finally:
            await c.close()
    run(main())


@pytest.mark.parametrize("tls", [False, True], ids=["http", "tls"])
@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_garbage_flood_is_fed_to_the_core_one_budget_per_turn_of_the_loop(tls, loop_kind) -> None:
    """While a relay floods RecvPacket garbage, every turn of the event loop sees at most READ_BUDGET bytes
    of DERP frames: other callbacks (the UDP data path) get their turn in between."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.derp.badrelay", "flood"] + (["--tls"] if tls else []),
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline().split()[1])
        url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/derp"

        async def main():
            got = [0]
            c = DerpClient(new_key()[0], targets_for_url(url, insecure=True),
                           on_packet=lambda s, d: got.__setitem__(0, got[0] + 1), on_event=lambda ev: None)
            await c.start(timeout=5)
            loop = asyncio.get_running_loop()
            most = [0, got[0]]   # largest step between two turns, count at the last turn

            def tick():
                most[0] = max(most[0], got[0] - most[1])
                most[1] = got[0]
                if got[0] < 100_000:
                    loop.call_soon(tick)
            loop.call_soon(tick)
            try:
                await until(lambda: got[0] >= 100_000, 40, "100,000 flooded packets")
                assert c.connected
                assert most[0] <= READ_BUDGET // len(GARBAGE) + 1, most
            finally:
                await c.close()
        if loop_kind == "uvloop":
            import uvloop
            uvloop.run(main())
        else:
            run(main())
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()


def test_tls_verification_failure_is_one_warning_naming_host_and_reason(tmp_path, caplog) -> None:
    ctx = self_signed_context(str(tmp_path))

    async def main():
        async with BadRelay("stall", ssl_ctx=ctx) as relay:
            c = DerpClient(new_key()[0], targets_for_url(relay.url), label="region 1",
                           on_packet=lambda s, d: None, on_event=lambda ev: None,
                           config=P.ClientConfig(log_interval=60))
            await c.start(wait=False)
            try:
                await until(lambda: c.stats.failures >= 4, 20, "4 failed dials")
            finally:
                await c.close()

    with caplog.at_level(logging.INFO, logger="derp.aio.client"):
        run(main())
    lines = [r for r in caplog.records if r.name == "derp.aio.client"]
    assert [(r.levelname, r.getMessage()) for r in lines] == [
        ("WARNING", "DERP region 1 (127.0.0.1): TLS certificate verify failed: self-signed certificate")]


def test_no_event_queue_without_a_reader() -> None:
    async def main():
        async with BadRelay("close") as relay:
            seen = []
            c = DerpClient(new_key()[0], targets_for_url(relay.url), on_packet=lambda s, d: None,
                           on_event=seen.append, config=P.ClientConfig(healthy_after=30))
            assert c.events is None
            await c.start(wait=False)
            try:
                await until(lambda: relay.handshakes >= 3, 20, "3 handshakes")
            finally:
                await c.close()
            assert sum(type(e) is Disconnected for e in seen) >= 2 and c.stats.dropped_queue_full == 0
            with pytest.raises(UsageError):
                await c.recv(0.1)
            reader = DerpClient(new_key()[0], targets_for_url(relay.url), queue_size=8)
            assert reader.events is not None and reader.events.maxsize == 8
    run(main())
