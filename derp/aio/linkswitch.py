"""The DERP client's transport switching (docs/derp-quic.md, "Client transport choice"): carries out the pure
`derp.transport_choice` for one `derp.aio.client.DerpClient`.

- QUIC dials (`derp.aio.quic_client.dial_quic`) are bounded by `ChoiceConfig.connect_timeout` (the client's
  own `connect_timeout` when QUIC is forced); a failure backs QUIC off, and the client goes on to TCP.
- While the link is TCP or WebSocket, one background task tries QUIC when the choice says so; once a QUIC
  link connects it replaces the old one make-before-break: NotePreferred/WatchConns go out on it, packets
  are written to it from then on, the old link is still read for `swap_drain` seconds (packets in flight
  on it are delivered), then closed; the client emits `TransportChanged`, not Disconnected/Connected.
- While the link is QUIC, the stall watch: one timer per link that polls the client's packet counters and
  the time of the last UDP datagram from the relay (`QuicDerpConn.last_rx`: its ACKs of what we send are
  progress too), and sends a DERP Ping as a probe when the relay has been silent; a stall closes the link, and the client
  dials TCP at once (QUIC backs off and is tried again in the background); when TCP connects the client
  emits `TransportChanged` (Disconnected only when TCP fails too).
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from derp import transport_choice as TC
from derp.aio.clientconn import ConnectError, describe_error
from derp.aio.targets import DialTarget
from derp.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    from derp.aio.client import DerpClient

log = logging.getLogger("derp.aio.client")
DIAL_ERRORS = (ConnectError, OSError, asyncio.TimeoutError, ssl.SSLError)


@dataclass(frozen=True)
class TransportChanged:
    """The client's link moved to another transport, the relay never counted as down: a background QUIC
    link took over (make-before-break), or TCP took over at once from a QUIC link that broke or stalled."""

    transport: str
    previous: str
    reason: str


class LinkSwitch:
    """QUIC dials, the background QUIC retry with its swap, and the stall watch of one DerpClient."""

    def __init__(self, client: "DerpClient", choice: TC.TransportChoice) -> None:
        self.client = client
        self.choice = choice
        self._task: asyncio.Task | None = None     # the background QUIC retry
        self._timer: asyncio.TimerHandle | None = None   # the stall watch's
        self._watch: TC.StallWatch | None = None
        self._draining: dict[Any, asyncio.TimerHandle] = {}

    # -- inputs from the client --------------------------------------------------------------------------
    def set_udp(self, udp: TC.UDP) -> None:
        if self.choice.set_udp(udp) and self.client.stream is not None and self.client.link != TC.QUIC:
            self._restart_background()

    async def dial_quic(self, target: DialTarget) -> Any:
        try:
            from derp.aio.quic_client import dial_quic
        except ImportError as exc:   # aioquic missing: QUIC is one transport fewer, never a crash
            raise ConnectError(f"DERP over QUIC is not available: {exc}") from None
        client = self.client
        timeout = self.choice.config.connect_timeout if self.choice.forced is None else client.connect_timeout
        return await asyncio.wait_for(dial_quic(client, target, target.quic_port), timeout)

    def quic_failed(self, target: DialTarget, exc: BaseException, errors: list[str], fallback: bool) -> None:
        """A foreground QUIC dial failed; `fallback`: the client goes on to TCP."""
        client = self.client
        now = asyncio.get_running_loop().time()
        self.choice.on_quic_failed(now)
        what = describe_error(exc)
        errors.append(f"{target.host}:{target.quic_port}/udp: QUIC: {what}")
        if fallback:
            client.stats.quic_fallbacks += 1
        client._log.log(logging.INFO if fallback else logging.WARNING, ("quic", target.host, type(exc).__name__),
                        now, "DERP %s: QUIC failed: %s%s", client._name(target), what,
                        "; trying TCP" if fallback else "")

    def link_up(self, stream: Any, mode: str, now: float) -> None:
        if mode == TC.QUIC:
            self.choice.on_quic_up(now)
            self._start_watch(stream, now)
        else:
            self._restart_background()

    def link_down(self, stream: Any, link: str, now: float) -> bool:
        """The client's link ended; True when it was QUIC chosen by "auto" and it broke or stalled: the
        client dials again at once (TCP: QUIC is backing off now)."""
        self._stop_watch()
        self._cancel_background()
        if link != TC.QUIC:
            return False
        failed = stream.restarting is None and not self.client._closing
        self.choice.on_quic_down(now, failed)
        if failed and self.choice.forced is None:
            self.client.stats.quic_fallbacks += 1
            return True
        return False

    def stop(self) -> None:
        self._stop_watch()
        self._cancel_background()
        for stream, handle in list(self._draining.items()):
            handle.cancel()
            stream._finish("closed by the caller")
        self._draining.clear()

    # -- background QUIC ---------------------------------------------------------------------------------
    def _cancel_background(self) -> None:
        if self._task is not None and not self._task.done() and self._task is not asyncio.current_task():
            self._task.cancel()
        self._task = None

    def _restart_background(self) -> None:
        self._cancel_background()
        loop = asyncio.get_running_loop()
        if self.choice.background_at(loop.time(), self.client.link) is not None:
            self._task = loop.create_task(self._background())

    def _quic_target(self) -> DialTarget | None:
        client = self.client
        current = client.targets[client.target_index]
        if current.quic_port:
            return current
        return next((t for t in client.targets if t.quic_port), None)

    async def _background(self) -> None:
        client = self.client
        loop = asyncio.get_running_loop()
        while True:
            at = self.choice.background_at(loop.time(), client.link)
            if at is None or client.stream is None or client._closing:
                return
            if at > loop.time():
                await asyncio.sleep(at - loop.time())
                continue     # the choice may have changed meanwhile (netcheck, a failure)
            target = self._quic_target()
            if target is None:
                return
            client.stats.quic_retries += 1
            try:
                stream = await self.dial_quic(target)
            except DIAL_ERRORS as exc:
                now = loop.time()
                self.choice.on_quic_failed(now)
                client._log.log(logging.INFO, ("quic-retry", type(exc).__name__), now,
                                "DERP %s: QUIC still failing (%s); staying on %s", client._name(target),
                                describe_error(exc), client.link or "TCP")
                continue
            except UsageError as exc:      # e.g. the CA file: no later try would do better
                log.warning("DERP %s: not trying QUIC: %s", client._name(target), exc)
                return
            old = client.stream
            if old is None or old.done.done() or client._closing:
                stream._finish("not needed any more")
                return
            self._swap(old, stream, target)
            return

    def _swap(self, old: Any, new: Any, target: DialTarget) -> None:
        client = self.client
        loop = asyncio.get_running_loop()
        previous = client.link
        self._task = None    # this task ends here; the new link's watch starts in _install
        client.target_index = client.targets.index(target)
        client._install(new, TC.QUIC, swap=True)
        client.stats.quic_swaps += 1
        log.info("DERP %s: QUIC works again; moved from %s to QUIC", client._name(target), previous)
        client._event(TransportChanged(TC.QUIC, previous, "QUIC connected in the background"))
        self._draining[old] = loop.call_later(self.choice.config.swap_drain, self._drained, old)

    def _drained(self, old: Any) -> None:
        self._draining.pop(old, None)
        old._finish("replaced by a QUIC link")

    # -- the stall watch ---------------------------------------------------------------------------------
    def _stop_watch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._watch = None

    def _start_watch(self, stream: Any, now: float) -> None:
        self._stop_watch()
        st = self.client.stats
        watch = self._watch = TC.StallWatch(now, self.choice.config)
        watch.tick(now, st.sent, st.received)
        self._arm(stream, watch, now)

    def _arm(self, stream: Any, watch: TC.StallWatch, now: float) -> None:
        self._timer = asyncio.get_running_loop().call_at(watch.next_deadline(now), self._tick, stream, watch)

    def _tick(self, stream: Any, watch: TC.StallWatch) -> None:
        self._timer = None
        client = self.client
        if client.stream is not stream or stream.done.done() or watch is not self._watch:
            return
        now = asyncio.get_running_loop().time()
        last_rx = getattr(stream, "last_rx", None)   # any UDP from the relay, its ACKs included (monotonic)
        if last_rx is not None:
            rx_at = now - (time.monotonic() - last_rx)
            if rx_at > watch.heard_at:
                watch.on_heard(rx_at)
        verdict = watch.tick(now, client.stats.sent, client.stats.received)
        if verdict is TC.Verdict.STALLED:
            client.stats.quic_stalls += 1
            wait = self.choice.config.stall_after
            client._log.log(logging.WARNING, ("quic-stall",), now, "DERP %s: QUIC link stalled (no answer "
                            "for %.0f s); falling back to TCP", client._name(stream.target), wait)
            stream._finish(f"QUIC link stalled: no answer from the relay for {wait:g} s")
            return
        if verdict is TC.Verdict.PROBE:
            self._probe(stream, watch, now)
        self._arm(stream, watch, now)

    def _probe(self, stream: Any, watch: TC.StallWatch, now: float) -> None:
        core = stream.core
        if core is None:
            return
        loop = asyncio.get_running_loop()
        data, frame = core.ping(now)
        fut = loop.create_future()
        stream.pings[data] = fut

        def answered(f: asyncio.Future) -> None:
            if f.cancelled() or f.exception() is not None:
                return
            now = loop.time()
            watch.on_heard(now, self.client.stats.sent)
            if watch is self._watch and self._timer is not None:   # the next tick from this answer on
                self._timer.cancel()
                self._arm(stream, watch, now)

        fut.add_done_callback(answered)
        stream.write(frame)
        stream._arm()


__all__ = ["LinkSwitch", "TransportChanged"]
