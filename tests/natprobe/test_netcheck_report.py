"""The Report's JSON form (stable schema, round trip) and the `tailscale netcheck`-style text."""
from __future__ import annotations

import datetime as dt
import json

import pytest
from hypothesis import given, strategies as st

from natprobe.errors import ParseError
from natprobe.regions import Region
from natprobe.report import Report, format_human, go_duration, go_time

REGIONS = {1: Region(1, "nyc", "New York City"), 2: Region(2, "tor", "Toronto"),
           3: Region(3, "sfo", "San Francisco"), 4: Region(4, "sin", "Singapore")}


def sample() -> Report:
    return Report(now=1787413736.123456, udp=True, ipv4=True, ipv4_can_send=True, os_has_ipv6=True,
                  mapping_varies_by_dest_ip=False, upnp=True, pmp=True, pcp=False, preferred_derp=1,
                  region_latency={1: 0.0098, 2: 0.0213, 3: 0.070}, region_v4_latency={1: 0.0098},
                  global_v4="203.0.113.7:58132", global_v4_counters={"203.0.113.7:58132": 3},
                  captive_portal=False)


def test_human_output_matches_tailscale_layout():
    text = format_human(sample(), REGIONS, tz=dt.timezone(dt.timedelta(hours=-4)))
    assert text == (
        "\nReport:\n"
        "\t* Time: 2026-08-22 11:48:56.123456-04:00\n"
        "\t* UDP: true\n"
        "\t* IPv4: yes, 203.0.113.7:58132\n"
        "\t* IPv6: no, but OS has support\n"
        "\t* MappingVariesByDestIP: false\n"
        "\t* PortMapping: UPnP, NAT-PMP\n"
        "\t* CaptivePortal: false\n"
        "\t* Nearest DERP: New York City\n"
        "\t* DERP latency:\n"
        "\t\t- nyc: 9.8ms   STUN  (New York City)\n"
        "\t\t- tor: 21.3ms  STUN  (Toronto)\n"
        "\t\t- sfo: 70ms    STUN  (San Francisco)\n"
        "\t\t- sin:               (Singapore)\n")


def test_human_output_without_udp_and_verbose_ids():
    rep = Report(now=0.0)
    text = format_human(rep, REGIONS, tz=dt.timezone.utc)
    assert "\t* Time: 1970-01-01 00:00:00Z\n" in text
    assert "\t* UDP: false\n\t* IPv4: (no addr found)\n\t* IPv6: no, unavailable in OS\n" in text
    assert "\t* MappingVariesByDestIP: \n\t* PortMapping: not checked\n" in text
    assert text.endswith("\t* Nearest DERP: unknown (no response to latency probes)\n")
    verbose = format_human(sample(), REGIONS, verbose=True)
    assert "\t\t- nyc: 9.8ms   STUN  (derp1, New York City)\n" in verbose


def test_json_uses_go_names_and_nanoseconds():
    data = sample().to_json()
    assert data["Now"] == "2026-08-22T15:48:56.123456Z"
    assert data["RegionLatency"] == {"1": 9800000, "2": 21300000, "3": 70000000}
    assert data["MappingVariesByDestIP"] is False and data["PCP"] is False and data["UPnP"] is True
    assert set(data) == {"Now", "UDP", "IPv4", "IPv6", "IPv4CanSend", "IPv6CanSend", "OSHasIPv6", "ICMPv4",
                         "MappingVariesByDestIP", "UPnP", "PMP", "PCP", "PreferredDERP", "RegionLatency",
                         "RegionV4Latency", "RegionV6Latency", "GlobalV4", "GlobalV6", "GlobalV4Counters",
                         "GlobalV6Counters", "CaptivePortal", "RegionLatencyProbe", "RegionICMPLatency"}
    assert data["RegionLatencyProbe"] == {"1": "STUN", "2": "STUN", "3": "STUN"} and data["RegionICMPLatency"] == {}
    again = Report.from_json(json.loads(json.dumps(data)))
    assert again.to_json() == data


@given(st.one_of(st.none(), st.integers(), st.text(), st.lists(st.integers()),
                 st.dictionaries(st.sampled_from(["Now", "RegionLatency", "UPnP", "PreferredDERP",
                                                  "RegionLatencyProbe", "RegionICMPLatency"]),
                                 st.one_of(st.none(), st.integers(), st.text(), st.booleans(),
                                           st.dictionaries(st.text(max_size=3), st.integers()),
                                           st.dictionaries(st.sampled_from(["1", "x"]),
                                                           st.one_of(st.sampled_from(["STUN", "ICMP"]),
                                                                     st.lists(st.integers())))))))
def test_garbage_report_json_raises_parse_error(data):
    try:
        Report.from_json(data)
    except ParseError:
        pass


@given(st.dictionaries(st.sampled_from(["RegionLatency", "RegionLatencyProbe", "RegionICMPLatency", "UPnP"]),
                       st.one_of(st.none(), st.integers(), st.text(), st.lists(st.text()),
                                 st.dictionaries(st.one_of(st.text(max_size=3), st.sampled_from(["1", "2"])),
                                                 st.one_of(st.integers(), st.text(max_size=6), st.none(),
                                                           st.sampled_from(["STUN", "HTTPS", "ICMP"]))))))
def test_garbage_fields_of_a_valid_report_raise_parse_error(fields):
    try:
        Report.from_json(dict(sample().to_json(), **fields))
    except ParseError:
        pass


@pytest.mark.parametrize("seconds,text", [(0.0098, "9.8ms"), (0.07, "70ms"), (1.2, "1.2s"), (0.00031, "300µs"),
                                          (0.01234, "12.3ms"), (0.0, "0s")])
def test_go_duration(seconds, text):
    assert go_duration(seconds) == text


def test_json_time_trims_trailing_zeros_like_go():
    assert Report(now=1.5).to_json()["Now"] == "1970-01-01T00:00:01.5Z"
    assert Report(now=0.0).to_json()["Now"] == "1970-01-01T00:00:00Z"


def test_go_time_utc_has_z_and_trims_fraction():
    assert go_time(1.5, dt.timezone.utc) == "1970-01-01 00:00:01.5Z"


def test_each_latency_names_its_probe_and_icmp_never_makes_a_region_nearest():
    rep = Report(now=0.0, preferred_derp=2)
    rep.add_latency(2, 0.0213, None, "HTTPS")
    rep.add_icmp_latency(1, 0.0006)            # a host answered a ping at 600 µs: not a relay answer
    rep.add_icmp_latency(2, 0.0190)
    text = format_human(rep, REGIONS, tz=dt.timezone.utc)
    assert text.endswith("\t* Nearest DERP: Toronto\n"
                         "\t* DERP latency:\n"
                         "\t\t- tor: 21.3ms  HTTPS (Toronto)\n"
                         "\t\t- nyc: 600µs   ICMP  (New York City)\n"
                         "\t\t- sfo:               (San Francisco)\n"
                         "\t\t- sin:               (Singapore)\n"
                         "\t* ICMP: only the node's address answered a ping, not its relay: never the nearest DERP\n")
    data = rep.to_json()
    assert data["RegionLatency"] == {"2": 21300000} and data["RegionLatencyProbe"] == {"2": "HTTPS"}
    assert data["RegionICMPLatency"] == {"1": 600000, "2": 19000000} and data["ICMPv4"] is True
    assert Report.from_json(data).to_json() == data
    with pytest.raises(ParseError):
        Report.from_json(dict(data, RegionLatencyProbe={"2": "ICMP"}))


def test_a_preferred_region_without_a_relay_answer_is_not_called_nearest():
    rep = Report(now=0.0, preferred_derp=1)    # e.g. a stale or forced choice
    rep.add_icmp_latency(1, 0.0006)
    assert "\t* Nearest DERP: unknown (no relay answered STUN or HTTPS)\n" in format_human(rep, REGIONS)
    rep.add_latency(3, 0.070, 4)
    assert "\t* Nearest DERP: [none]\n" in format_human(rep, REGIONS)
