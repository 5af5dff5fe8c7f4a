"""The DERP-over-QUIC benchmark (`python3 -m tools.bench quic`) runs end to end on tiny settings and prints
its two tables (a smoke test: figures are not checked, they depend on the machine)."""
from __future__ import annotations

import pytest

from tools.bench.__main__ import main


def test_the_quic_benchmark_prints_both_tables(capsys):
    assert main(["quic", "--rate", "2", "--time", "1", "--count", "200", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "wgc-tunnel" in out and "ours/reno" in out
    for loss in ("0%", "1%", "3%"):
        assert any(line.lstrip().startswith(loss) for line in out.splitlines()), loss
    assert "µs per 1300-byte datagram" in out and "pacing, qlog, 32 per call" in out


def test_bad_options_get_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["quic", "--rate", "0"])
    assert exc.value.code == 2
    assert "--rate 0.1-1000" in capsys.readouterr().err
