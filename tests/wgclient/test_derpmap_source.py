"""The DERP map sources of `wgc up` (issue 10 §5) without an interface: several sources tried in order, the
last good map cached atomically and used when every source is down, refreshes (periodic and on request)
that hand each changed map on, and failed refreshes that keep the map in use. Sources are files and a
loopback HTTP server."""
from __future__ import annotations

import asyncio
import http.server
import json
import os
import threading

import pytest

from derp.aio.derpmap_loader import load_cached_map
from derp.derpmap import MapChange
from wgclient.aio.derpmap_source import DerpMapSource, default_cache_path
from wgclient.errors import UsageError

pytestmark = pytest.mark.timeout(30)


def region(rid: int, host: str = "127.0.0.1") -> dict:
    return {"RegionID": rid, "RegionCode": f"r{rid}", "Nodes": [
        {"Name": f"{rid}a", "RegionID": rid, "HostName": host, "DERPPort": 9}]}


def map_text(*rids: int) -> str:
    return json.dumps({"Regions": {str(r): region(r) for r in rids}})


class MapServer:
    """A loopback HTTP server answering /map with `body` (or `status`)."""

    def __init__(self, body: str) -> None:
        self.body, self.status, self.hits = body, 200, 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.hits += 1
                data = outer.body.encode()
                self.send_response(outer.status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/map"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = MapServer(map_text(900))
    yield s
    s.close()


def test_sources_are_tried_in_order_and_unusable_maps_skipped(tmp_path, server) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text('{"Regions": {}}')
    good = tmp_path / "good.json"
    good.write_text(map_text(901))
    src = DerpMapSource([str(tmp_path / "missing.json"), str(empty), server.url, str(good)], cache_path=None)
    assert set(src.load_initial().regions) == {900} and src.current.source == server.url
    loaded, errors = src.try_sources()
    assert len(errors) == 2 and "missing.json" in errors[0] and errors[1].endswith(
        "empty.json: the DERP map has no region with a DERP node")
    server.status = 500
    assert set(src.try_sources()[0].derpmap.regions) == {901}


def test_every_source_down_without_cache_names_each_failure(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"Regions": {"900": {"RegionID": 900, "Nodes": [{"Name": "x", "RegionID": 900}]}}}')
    src = DerpMapSource(["http://127.0.0.1:1/map", str(bad)], cache_path=str(tmp_path / "c.json"))
    with pytest.raises(UsageError) as info:
        src.load_initial()
    text = str(info.value)
    assert "127.0.0.1:1" in text and f"{bad}: region 900 node 'x': HostName is required" in text
    assert "no cached map at" in text
    with pytest.raises(UsageError, match="cannot read DERP map file"):   # one source, no cache: its error
        DerpMapSource([str(tmp_path / "nope")], cache_path=None).load_initial()


def test_every_source_down_at_start_uses_the_cache(tmp_path, server) -> None:
    cache = str(tmp_path / "state" / "wg9.derpmap.json")

    async def first_run():
        src = DerpMapSource([server.url], cache_path=cache, interval=0)
        src.load_initial()
        task = asyncio.create_task(src.run(lambda dm, change: None))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if os.path.exists(cache):
                break
        task.cancel()
    asyncio.run(first_run())
    assert set(load_cached_map(cache).regions) == {900}
    assert oct(os.stat(cache).st_mode & 0o777) == "0o644"
    assert [n for n in os.listdir(os.path.dirname(cache))] == ["wg9.derpmap.json"]   # no temp file left

    server.status = 503
    src = DerpMapSource([server.url, str(tmp_path / "missing")], cache_path=cache)
    assert set(src.load_initial().regions) == {900}
    assert src.current.source == "cache" and "503" in src.last_error
    assert src.cache_warning().startswith("every DERP map source failed (") and cache in src.cache_warning()


def test_a_damaged_cache_is_no_map(tmp_path) -> None:
    cache = tmp_path / "c.json"
    cache.write_text("{half")
    with pytest.raises(UsageError, match="is damaged"):
        DerpMapSource([str(tmp_path / "missing")], cache_path=str(cache)).load_initial()


def test_refresh_on_request_hands_on_changes_and_keeps_the_map_on_failure(tmp_path, server) -> None:
    cache = str(tmp_path / "c.json")
    changes: list[tuple[set, MapChange]] = []

    async def main():
        src = DerpMapSource([server.url], cache_path=cache, interval=3600)
        src.load_initial()
        task = asyncio.create_task(src.run(lambda dm, change: changes.append((set(dm.regions), change))))

        async def round_trip():
            before = src.refreshes + src.failures
            src.request_refresh()
            for _ in range(500):
                await asyncio.sleep(0.01)
                if src.refreshes + src.failures > before:
                    return
            raise AssertionError("no refresh round after request_refresh()")

        server.body = map_text(900, 901)
        await round_trip()
        server.body = map_text(900, 901)          # the same map again: nothing handed on
        await round_trip()
        server.status = 500                       # every source down: the map in use stays
        await round_trip()
        assert set(src.current.derpmap.regions) == {900, 901} and src.failures == 1
        server.status = 200
        server.body = map_text(901)
        await round_trip()
        task.cancel()
        return src

    src = asyncio.run(main())
    assert changes == [({900, 901}, MapChange(added=(901,))), ({901}, MapChange(removed=(900,)))]
    assert (src.refreshes, src.failures, src.changes) == (3, 1, 2) and src.last_error is None
    assert set(load_cached_map(cache).regions) == {901}


def test_periodic_refresh(tmp_path, server) -> None:
    async def main():
        src = DerpMapSource([server.url], cache_path=None, interval=0.05)
        src.load_initial()
        task = asyncio.create_task(src.run(lambda dm, change: None))
        await asyncio.sleep(0.6)
        task.cancel()
        return src
    src = asyncio.run(main())
    assert src.refreshes >= 3


def test_default_cache_path(monkeypatch) -> None:
    monkeypatch.delenv("WGC_STATE_DIR", raising=False)
    assert default_cache_path("wg0") == "/var/lib/wgc/wg0.derpmap.json"
    monkeypatch.setenv("WGC_STATE_DIR", "/tmp/x")
    assert default_cache_path("wg0") == "/tmp/x/wg0.derpmap.json"


def test_sighup_reloads_the_map_and_never_ends_the_daemon(caplog) -> None:
    from wgclient.aio import daemon

    class Source:
        asked = 0

        def request_refresh(self) -> None:
            self.asked += 1

    src = Source()
    with caplog.at_level("INFO", logger="wgclient.daemon"):
        daemon._on_sighup("wg0", src)
        daemon._on_sighup("wg1", None)
    assert src.asked == 1
    assert [r.getMessage() for r in caplog.records] == ["wg0: got SIGHUP: reloading the DERP map",
                                                         "wg1: got SIGHUP: nothing to reload (no --derpmap)"]
