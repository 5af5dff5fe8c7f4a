"""wgc-userspace's WGC_DERPMAP goes through the same DERP map source as `wgc up --derpmap`: sources in
order, the cache of the last good map, a source object the path manager refreshes (and marks) while up."""
from __future__ import annotations

import json

import pytest

from wgclient.cli import userspace
from wgclient.errors import UsageError

MAP = {"Regions": {"900": {"RegionID": 900, "RegionCode": "lab", "RegionName": "Lab", "Nodes": [
    {"Name": "900a", "RegionID": 900, "HostName": "198.18.1.2", "IPv4": "198.18.1.2"}]}}}


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("WGC_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("WGC_DERP_CA_FILE", raising=False)
    return tmp_path


def test_sources_in_order_and_the_source_handed_on(env, monkeypatch):
    good = env / "map.json"
    good.write_text(json.dumps(MAP))
    monkeypatch.setenv("WGC_DERPMAP", f"{env / 'missing.json'} {good}")
    kwargs = userspace._options("wgx0")
    assert list(kwargs["derpmap"].regions) == [900]
    source = kwargs["derpmap_source"]
    assert source.sources == [str(env / "missing.json"), str(good)]
    assert source.cache_path == str(env / "state" / "wgx0.derpmap.json")


def test_the_cached_map_is_used_when_every_source_fails(env, monkeypatch, capsys):
    good = env / "map.json"
    good.write_text(json.dumps(MAP))
    monkeypatch.setenv("WGC_DERPMAP", str(good))
    source = userspace._options("wgx0")["derpmap_source"]
    source._save()                     # what the running source does with the map it started with
    good.unlink()
    kwargs = userspace._options("wgx0")
    assert list(kwargs["derpmap"].regions) == [900]
    assert "cache" in capsys.readouterr().err


def test_no_source_and_no_cache_is_one_clear_error(env, monkeypatch):
    monkeypatch.setenv("WGC_DERPMAP", str(env / "missing.json"))
    with pytest.raises(UsageError, match=r"^WGC_DERPMAP: cannot read DERP map file"):
        userspace._options("wgx0")
