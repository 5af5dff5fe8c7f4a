"""The DERP map beyond plain JSON (issue 10 §5): Tailscale's policy-file wrapper `{"derpMap": {...}}` (JSON
and HuJSON) with its `OmitDefaultRegions`, fields nobody reads as warnings, the difference between two
maps, and round trips of the encoding (hypothesis)."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, strategies as st

from derp.derpmap import (DerpHomeParams, DerpMap, MapChange, diff_derpmaps, parse_derpmap,
                          standardize_hujson)
from derp.errors import ParseError
from tests.derp.test_derp_map import derp_maps

REGION = {"RegionID": 900, "RegionCode": "fra", "RegionName": "Frankfurt",
          "Nodes": [{"Name": "900a", "RegionID": 900, "HostName": "derp.example.net"}]}

POLICY = """// tailnet policy file
{
  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],   // everyone
  "derpMap": {
    "OmitDefaultRegions": true,
    /* our own relays */
    "Regions": {
      "900": {"RegionID": 900, "RegionCode": "fra", "RegionName": "Frankfurt",
              "Nodes": [{"Name": "900a", "RegionID": 900, "HostName": "derp.example.net",},],},
    },
  },
}
"""


def test_policy_file_wrapper_gives_the_inner_map() -> None:
    m = parse_derpmap(json.dumps({"derpMap": {"OmitDefaultRegions": True, "Regions": {"900": REGION}}}))
    assert set(m.regions) == {900} and m.regions[900].region_code == "fra"
    assert m.omit_default_regions is True


def test_omit_default_regions_in_every_spelling_and_place() -> None:
    for key in ("OmitDefaultRegions", "omitDefaultRegions", "omitdefaultregions"):
        assert parse_derpmap(json.dumps({key: True, "Regions": {"900": REGION}})).omit_default_regions
        assert parse_derpmap(json.dumps({"derpmap": {key: True, "Regions": {}}})).omit_default_regions
    assert not parse_derpmap(json.dumps({"derpMap": {"Regions": {"900": REGION}}})).omit_default_regions
    # it survives the encoding (what the cache keeps and `wgc derpmap show` prints)
    m = parse_derpmap(json.dumps({"derpMap": {"OmitDefaultRegions": True, "Regions": {"900": REGION}}}))
    assert parse_derpmap(m.to_json()) == m and json.loads(m.to_json())["omitDefaultRegions"] is True


def test_hujson_policy_file_with_comments_and_trailing_commas() -> None:
    m = parse_derpmap(POLICY)
    assert m.omit_default_regions and m.regions[900].nodes[0].host_name == "derp.example.net"
    assert parse_derpmap(POLICY.encode()) == m


def test_hujson_keeps_strings_and_positions() -> None:
    text = '{"a": "x // not a comment /* nor this */", "b": "q\\"//",} // end'
    out = standardize_hujson(text)
    assert len(out) == len(text)
    assert json.loads(out) == {"a": "x // not a comment /* nor this */", "b": 'q"//'}


def test_errors_inside_the_wrapper_name_the_field() -> None:
    bad = {"derpMap": {"Regions": {"900": {**REGION, "Nodes": [{"Name": "900a", "RegionID": 900,
                                                                 "HostName": "h", "DERPPort": 70000}]}}}}
    with pytest.raises(ParseError, match=r"^derpMap: region 900 node '900a': DERPPort 70000 out of range"):
        parse_derpmap(json.dumps(bad))
    with pytest.raises(ParseError, match="derpMap: DERP map: expected a JSON object"):
        parse_derpmap('{"derpMap": [1]}')
    with pytest.raises(ParseError, match="not valid JSON"):
        parse_derpmap('{"derpMap": {"Regions": {}')


def test_a_policy_file_without_derp_map_is_an_empty_map() -> None:
    assert parse_derpmap('{"derpMap": null}').regions == {}
    assert parse_derpmap('{"acls": []}').regions == {}


def test_unknown_fields_are_warned_about_when_asked() -> None:
    node = {"Name": "900a", "RegionID": 900, "HostName": "h", "Port": 443, "derpport": 8443}
    text = json.dumps({"Regions": {"900": {**REGION, "Nodes": [node], "Codes": "x"}}, "Omit": True})
    warnings: list[str] = []
    m = parse_derpmap(text, warnings)
    assert m.regions[900].nodes[0].derp_port == 8443
    assert warnings == ["region 900 node '900a': unknown field 'Port' (ignored)",
                        "region 900: unknown field 'Codes' (ignored)",
                        "DERP map: unknown field 'Omit' (ignored)"]
    assert parse_derpmap(text) == m   # without a list: silent, as Go


def test_diff_names_added_removed_and_changed_regions() -> None:
    base = parse_derpmap(json.dumps({"Regions": {"900": REGION, "901": {**REGION, "RegionID": 901, "Nodes": []}}}))
    moved = {**REGION, "Nodes": [{"Name": "900a", "RegionID": 900, "HostName": "derp2.example.net"}]}
    new = parse_derpmap(json.dumps({"Regions": {"900": moved, "902": {**REGION, "RegionID": 902, "Nodes": []}}}))
    change = diff_derpmaps(base, new)
    assert change == MapChange(added=(902,), removed=(901,), changed=(900,))
    assert change.describe(new) == "added 902 (fra); removed 901; changed 900 (fra)"
    assert change.describe(new, base) == "added 902 (fra); removed 901 (fra); changed 900 (fra)"
    assert not diff_derpmaps(base, parse_derpmap(base.to_json()))
    scored = DerpMap(base.regions, home_params=DerpHomeParams({900: 0.5}))
    assert diff_derpmaps(base, scored) == MapChange(other=True) and diff_derpmaps(base, scored)


scores = st.none() | st.dictionaries(st.integers(1, 2**53 - 1), st.floats(-10, 10, allow_nan=False), max_size=3)


@given(derp_maps(), scores, st.booleans())
def test_round_trip_with_home_params_and_the_policy_wrapper(m: DerpMap, region_score, wrap: bool) -> None:
    m = DerpMap(m.regions, m.omit_default_regions, None if region_score is None else DerpHomeParams(region_score))
    text = json.dumps({"derpMap": m.to_dict()}) if wrap else m.to_json()
    assert parse_derpmap(text) == m
    assert diff_derpmaps(m, parse_derpmap(text)) == MapChange()


@given(st.text(max_size=200))
def test_hujson_garbage_raises_only_parse_error(text: str) -> None:
    try:
        parse_derpmap(text)
    except ParseError:
        pass
