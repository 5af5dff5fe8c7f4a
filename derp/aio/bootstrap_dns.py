"""derper's `/bootstrap-dns`: the addresses of `-bootstrap-dns-names`, resolved by the relay and served as
JSON `{"name": ["ip", ...]}` to clients whose own DNS does not work yet, and `-unpublished-bootstrap-dns-names`,
answered only to a query naming them (`/bootstrap-dns?q=name`, just that name).

Both lists are resolved at start and every REFRESH seconds (10 min, as derper), each name within
RESOLVE_TIMEOUT; a name that does not resolve keeps its previous addresses. Each name's addresses are
shuffled at every refresh so clients do not all prefer the same one. derper's `name/txtname` rollout
form (a TXT record with a percentage) is not supported and refused at start.
"""
from __future__ import annotations

import asyncio
import json
import logging
import random
import socket

from derp.errors import UsageError

log = logging.getLogger("derper.bootstrap_dns")
REFRESH = 600.0
RESOLVE_TIMEOUT = 60.0
MAX_QUERIED = 500


def parse_names(text: str, flag: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if "/" in name:
            raise UsageError(f"{flag}: the rollout form {name!r} (name/TXT record) is not supported; "
                             "give plain host names")
        if any(c.isspace() for c in name) or len(name) > 253:
            raise UsageError(f"{flag}: {name[:60]!r} is not a host name")
    return names


class BootstrapDNS:
    def __init__(self, published: list[str], unpublished: list[str]) -> None:
        self.published_names, self.unpublished_names = published, unpublished
        self.published: dict[str, list[str]] = {}
        self.unpublished: dict[str, list[str]] = {}
        self.published_json = b"{}"
        self.queried: set[str] = set()
        self.counters = {"requests": 0, "published_hits": 0, "published_misses": 0, "unpublished_hits": 0,
                         "unpublished_misses": 0}
        self.task: asyncio.Task | None = None

    def answer(self, query: str) -> bytes:
        """The body for a request with `?q=` = query ('' for none)."""
        self.counters["requests"] += 1
        if query:
            if len(self.queried) >= MAX_QUERIED:
                self.queried.clear()
            self.queried.add(query)
            ips = self.unpublished.get(query)
            if ips:
                self.counters["unpublished_hits"] += 1
                return json.dumps({query: ips}, indent="\t").encode()
            if query in self.published:
                self.counters["published_hits" if self.published[query] else "published_misses"] += 1
            else:
                self.counters["unpublished_misses"] += 1
        return self.published_json

    async def refresh(self) -> None:
        """Both lists at once, installed together: once the published names answer, so do the others."""
        self.published, self.unpublished = await asyncio.gather(
            _resolve_all(self.published_names, self.published),
            _resolve_all(self.unpublished_names, self.unpublished))
        self.published_json = json.dumps(self.published, indent="\t").encode()

    def start(self) -> None:
        if not (self.published_names or self.unpublished_names):
            return

        async def loop() -> None:
            while True:
                await self.refresh()
                await asyncio.sleep(REFRESH)
        self.task = asyncio.create_task(loop())

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()


async def _resolve_all(names: list[str], previous: dict[str, list[str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    results = await asyncio.gather(*(_resolve(n) for n in names))
    for name, ips in zip(names, results):
        if ips is None:
            if name in previous:
                out[name] = previous[name]
            continue
        random.shuffle(ips)
        out[name] = ips
    return out


async def _resolve(name: str) -> list[str] | None:
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(name, None, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT)
    except (OSError, asyncio.TimeoutError, UnicodeError) as exc:
        log.warning("bootstrap DNS lookup %r: %s", name, exc)
        return None
    ips: list[str] = []
    for info in infos:
        ip = str(info[4][0]).split("%", 1)[0]
        if ip not in ips:
            ips.append(ip)
    return ips
