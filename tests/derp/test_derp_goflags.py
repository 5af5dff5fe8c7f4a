"""derper's and nefia-derp's command lines parse unchanged: Go durations, sizes and booleans (derp.units),
Go flag syntax (derp.goflags), and the environment (`$WGC_DERPER_<FLAG>`, `$DERP_HOSTNAME`,
`$NEFIA_DERP_METRICS_TOKEN`) under the command line. Hypothesis: garbage raises only ParseError, every
spelling of the same flags gives the same settings."""
from __future__ import annotations

import argparse

import pytest
from hypothesis import given, settings, strategies as st

from derp import goflags, units
from derp.aio import derper as D
from derp.aio.derper_args import flag_spec, parse_command_line
from derp.errors import ParseError, UsageError


def parse(argv: list[str], env: dict[str, str] | None = None) -> argparse.Namespace:
    return parse_command_line(D.build_parser(), argv, env or {})


# ---- durations, sizes, booleans ------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [
    ("30s", 30), ("1m30s", 90), ("500ms", 0.5), ("2h", 7200), ("0", 0), ("1.5h", 5400), (".5s", 0.5),
    ("1.s", 1), ("1h2m3.5s", 3723.5), ("10m0s", 600), ("250us", 250e-6), ("1µs", 1e-6), ("3ns", 3e-9),
    ("-1m", -60), ("+2s", 2), ("30", 30), ("0.25", 0.25), ("7d", 7 * 86400)])
def test_go_durations(text, seconds) -> None:
    assert units.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "1x", ".s", "-", "+", "1 s", "1h-5m", "nan", "inf", "1e3s", "0x10s",
                                  "9999999999h", "1..2s", "--1s"])
def test_bad_durations(text) -> None:
    with pytest.raises(ParseError):
        units.parse_duration(text)


@given(st.text(max_size=40))
def test_duration_garbage_raises_only_parse_error(text) -> None:
    try:
        value = units.parse_duration(text)
    except ParseError:
        return
    assert isinstance(value, float)


@given(st.integers(-(1 << 63) + 1, (1 << 63) - 1))
def test_formatted_durations_parse_back_exactly(ns) -> None:
    assert units.parse_duration_ns(units.format_duration_ns(ns)) == ns


@given(st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(["h", "m", "s", "ms", "us", "ns"])),
                min_size=1, max_size=6))
def test_a_duration_is_the_sum_of_its_parts(parts) -> None:
    size = {"h": 3600e9, "m": 60e9, "s": 1e9, "ms": 1e6, "us": 1e3, "ns": 1}
    text = "".join(f"{n}{u}" for n, u in parts)
    assert units.parse_duration_ns(text) == sum(n * int(size[u]) for n, u in parts)


@pytest.mark.parametrize("text, value", [("65536", 65536), ("100KB", 100_000), ("100k", 100_000),
                                         ("64KiB", 65536), ("1.5MB", 1_500_000), ("100KB/s", 100_000),
                                         ("1mib", 1 << 20), ("2G", 2 * 10**9), ("0", 0)])
def test_sizes(text, value) -> None:
    assert units.parse_size(text) == value


@given(st.text(max_size=30))
def test_size_garbage_raises_only_parse_error(text) -> None:
    try:
        assert units.parse_size(text) >= 0
    except ParseError:
        pass


def test_go_booleans() -> None:
    assert all(units.parse_bool(t) for t in ("1", "t", "T", "TRUE", "true", "True"))
    assert not any(units.parse_bool(t) for t in ("0", "f", "F", "FALSE", "false", "False"))
    for bad in ("yes", "on", "", "tRuE", " true"):
        with pytest.raises(ParseError):
            units.parse_bool(bad)


# ---- Go flag syntax ------------------------------------------------------------------------------------

SPEC = flag_spec(D.build_parser())


def test_go_syntax_is_rewritten_for_argparse() -> None:
    line = ["-a", ":443", "-hostname=derp.example.net", "--certmode", "manual", "-stun", "-stun=false",
            "-verify-clients=true", "--open-relay=0", "-http-port", "-1", "--no-stun", "-v", "-c=/k.json", "--",
            "-x"]
    assert goflags.normalize(line, SPEC) == [
        "--addr=:443", "--hostname=derp.example.net", "--certmode=manual", "--stun", "--no-stun",
        "--verify-clients", "--no-open-relay", "--http-port=-1", "--no-stun", "--verbose", "--config=/k.json",
        "--", "-x"]


def test_unknown_flags_and_stray_words_pass_through_to_argparse() -> None:
    assert goflags.normalize(["-bogus=1", "word", "-", "---x", "-a:443"], SPEC) == \
        ["-bogus=1", "word", "-", "---x", "-a:443"]
    with pytest.raises(UsageError, match="unrecognized arguments: -bogus=1"):
        parse(["-bogus=1"])
    with pytest.raises(UsageError, match="unrecognized arguments: false"):
        parse(["-stun", "false"])   # as in Go, a boolean takes its value only after "="


def test_a_bad_boolean_is_one_error_naming_the_flag() -> None:
    with pytest.raises(UsageError, match="invalid boolean value 'maybe' for -stun"):
        parse(["-stun=maybe"])


words = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
dashed = st.builds(lambda d, n, v: d + n + v, st.sampled_from(["-", "--", ""]),
                   st.sampled_from(sorted(SPEC) + ["x", "no-x", ""]), st.sampled_from(["", "=", "=1", "=false", "=x"]))


@given(st.lists(st.one_of(words, dashed), max_size=8))
def test_normalize_garbage_raises_only_parse_error(argv) -> None:
    try:
        out = goflags.normalize(argv, SPEC)
    except ParseError:
        return
    assert all(isinstance(a, str) for a in out)


# Flags with a value each spelling may carry, and the bools: the same settings whatever the spelling.
VALUES = {"addr": "127.0.0.1:8443", "hostname": "derp.example.net", "http-port": "-1", "stun-port": "3479",
          "max-clients": "10000", "ping-interval": "30s", "tcp-user-timeout": "1m30s", "metrics-port": "9090",
          "allowed-keys-file": "/etc/nefia/allowed-keys.txt", "verify-client-url": "http://127.0.0.1:1/admit",
          "client-rate-limit": "100KB", "bindings-identity": "header:X-Client-Id", "accept-connection-limit": "50"}
BOOLS = ["stun", "verify-clients", "open-relay", "trust-proxy", "verify-client-url-fail-open", "derp"]


def value_spelling(name: str, value: str, style: int) -> list[str]:
    return [[f"-{name}={value}"], [f"--{name}={value}"], [f"-{name}", value], [f"--{name}", value]][style]


def bool_spelling(name: str, on: bool, style: int) -> list[str]:
    if on:
        return [[f"-{name}"], [f"--{name}"], [f"-{name}=true"], [f"--{name}=1"], [f"-{name}=T"]][style]
    return [[f"--no-{name}"], [f"-{name}=false"], [f"--{name}=0"], [f"-{name}=F"], [f"-{name}=FALSE"]][style]


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(VALUES)), st.integers(0, 3), max_size=6),
       st.dictionaries(st.sampled_from(BOOLS), st.tuples(st.booleans(), st.integers(0, 4)), max_size=4))
def test_every_spelling_gives_the_same_settings(values, bools) -> None:
    canonical, go = [], []
    for name, style in values.items():
        canonical.append(f"--{name}={VALUES[name]}")
        go += value_spelling(name, VALUES[name], style)
    for name, (on, style) in bools.items():
        canonical.append(f"--{name}" if on else f"--no-{name}")
        go += bool_spelling(name, on, style)
    assert vars(parse(go)) == vars(D.build_parser().parse_args(canonical))


def test_nefia_and_derper_names_are_aliases() -> None:
    a = parse(["--addr=:8443", "--ping-interval=30s", "--metrics-port=9090", "--max-clients=10000"])
    assert (a.addr, a.keepalive_interval, a.metrics_addr, a.max_clients) == (":8443", 30.0, "127.0.0.1:9090", 10000)
    b = parse(["-a", ":8443", "--keepalive-interval", "30", "--metrics-addr", "127.0.0.1:9090"])
    assert (b.addr, b.keepalive_interval, b.metrics_addr) == (":8443", 30.0, "127.0.0.1:9090")


def test_durations_wherever_a_flag_takes_time() -> None:
    a = parse(["-tcp-keepalive-time=10m", "-tcp-user-timeout=15s", "-tcp-write-timeout=500ms",
               "--read-header-timeout=1m30s", "--shutdown-timeout=2h", "--verify-client-url-timeout=250ms",
               "--verify-client-url-cache=0", "--verify-clients-interval=1s", "--cert-watch-interval=1m"])
    assert (a.tcp_keepalive_time, a.tcp_user_timeout, a.tcp_write_timeout, a.read_header_timeout,
            a.shutdown_timeout, a.verify_client_url_timeout, a.verify_client_url_cache,
            a.verify_clients_interval, a.cert_watch_interval) == (600, 15, 0.5, 90, 7200, 0.25, 0, 1, 60)
    with pytest.raises(UsageError, match="--tcp-user-timeout: bad duration '15 sec'"):
        parse(["-tcp-user-timeout=15 sec"])
    with pytest.raises(UsageError, match="--ping-interval: 50ms is out of range"):
        parse(["--ping-interval=50ms"])


def test_derper_defaults() -> None:
    a = parse([])
    assert (a.tcp_keepalive_time, a.tcp_user_timeout, a.accept_connection_limit, a.verify_client_url_fail_open,
            a.stun, a.run_derp, a.certmode) == (600, 15, float("inf"), True, True, True, None)


# ---- the environment ---------------------------------------------------------------------------------------

def test_every_flag_has_an_environment_form_and_the_command_line_wins() -> None:
    env = {"WGC_DERPER_HOSTNAME": "env.example.net", "WGC_DERPER_STUN": "false", "WGC_DERPER_MAX_CLIENTS": "7",
           "WGC_DERPER_PING_INTERVAL": "45s", "WGC_DERPER_VERIFY_CLIENTS": "1", "WGC_DERPER_ADDR": ":8443"}
    a = parse([], env)
    assert (a.hostname, a.stun, a.max_clients, a.keepalive_interval, a.verify_clients, a.addr) == \
        ("env.example.net", False, 7, 45.0, True, ":8443")
    b = parse(["-hostname=flag.example.net", "-stun", "--max-clients", "9", "-verify-clients=false"], env)
    assert (b.hostname, b.stun, b.max_clients, b.verify_clients) == ("flag.example.net", True, 9, False)


def test_edge_core_names_and_their_precedence() -> None:
    assert parse([], {"DERP_HOSTNAME": "edge-relay-1.example.com"}).hostname == "edge-relay-1.example.com"
    env = {"DERP_HOSTNAME": "alias.example.com", "WGC_DERPER_HOSTNAME": "wgc.example.com"}
    assert parse([], env).hostname == "wgc.example.com"
    assert parse(["--hostname", "flag.example.com"], env).hostname == "flag.example.com"
    assert parse([], {"DERP_ACME_EMAIL": "ops@example.com"}).acme_email == "ops@example.com"


def test_empty_variables_are_ignored_and_bad_ones_are_named() -> None:
    assert parse([], {"WGC_DERPER_HOSTNAME": "", "WGC_DERPER_STUN": ""}).stun is True
    with pytest.raises(UsageError, match=r"^\$WGC_DERPER_STUN_PORT: argument --stun-port: 99999 is out of range"):
        parse([], {"WGC_DERPER_STUN_PORT": "99999"})
    with pytest.raises(UsageError, match=r"\$WGC_DERPER_OPEN_RELAY: invalid boolean 'yes'"):
        parse([], {"WGC_DERPER_OPEN_RELAY": "yes"})


def test_version_and_help_are_not_read_from_the_environment() -> None:
    assert parse([], {"WGC_DERPER_VERSION": "true", "WGC_DERPER_HELP": "1"}).version is False


def test_metrics_token_order(monkeypatch) -> None:
    for var in (D.TOKEN_ENV, D.NEFIA_TOKEN_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(D.NEFIA_TOKEN_ENV, "nefia-token")
    assert D.metrics_token(parse([])) == "nefia-token"
    monkeypatch.setenv(D.TOKEN_ENV, "wgc-token")
    assert D.metrics_token(parse([])) == "wgc-token"
    assert D.metrics_token(parse(["--metrics-token=flag-token"])) == "flag-token"


# ---- docs/derp.md's flags table stays true -------------------------------------------------------------------

def _table() -> list[list[str]]:
    import pathlib
    import re
    text = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "derp.md").read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| `") and ln.count("|") == 7]
    return [[re.findall(r"`([^`]*)`", cell) for cell in row.split("|")[1:-1]] for row in rows]


def test_the_flags_table_lists_every_flag_and_its_names_parse() -> None:
    parser = D.build_parser()
    documented = {name for row in _table() for name in row[0]}
    flags = {o for a in parser._actions for o in a.option_strings
             if not o.startswith("--no-") and o not in ("-h", "--help")}
    assert flags - documented == set(), "flags missing from docs/derp.md's table"
    for row in _table():
        for name in row[1] + row[2]:                 # derper's and nefia-derp's spellings are accepted
            assert name.lstrip("-") in SPEC, name
        for var in row[3]:
            if var.startswith("WGC_DERPER_") and not var.endswith("..."):
                name = var[len("WGC_DERPER_"):].lower().replace("_", "-")
                assert name in SPEC, var
