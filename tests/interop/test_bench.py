"""bench/suite.py in its CI smoke mode: every section runs for kquic and aioquic (and qh3
when installed) and the JSON holds a positive figure for each. The figures themselves
are never asserted: timing belongs to the benchmark, not to the tests."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

from tests.interop.conftest import ROOT, env

SMOKE_TIMEOUT = 60


def positive_numbers(tree) -> list[float]:
    """Every figure of a summary, leaving out the raw runs."""
    if isinstance(tree, dict):
        return [n for k, v in tree.items() if k not in ("runs", "raw") for n in positive_numbers(v)]
    if isinstance(tree, (int, float)) and not isinstance(tree, bool):
        return [tree]
    return []


def test_suite_quick_mode_reports_every_section(tmp_path) -> None:
    impls = ["kquic", "aioquic"] + (["qh3"] if importlib.util.find_spec("qh3") else [])
    out = tmp_path / "bench.json"
    argv = ["bench/suite.py", "--quick", "--impl", ",".join(impls), "--json", str(out)]
    result = subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        env=env(),
        cwd=ROOT,
        timeout=SMOKE_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "kquic/aioquic" in result.stdout
    document = json.loads(out.read_text())
    assert {"nproc", "kernel", "python", "packages"} <= set(document["machine"])
    results = document["results"]
    assert set(results) == {"throughput", "plpmtud", "streams", "handshake"}
    for section, by_impl in results.items():
        assert set(by_impl) == set(impls), section
        for impl, figures in by_impl.items():
            numbers = positive_numbers(figures)
            assert numbers, (section, impl)
            assert all(n > 0 for n in numbers), (section, impl, figures)
    for impl in impls:
        for direction in ("upload", "download"):
            moved = results["throughput"][impl][direction]
            assert {"MBps", "client_cpu_s_per_GB", "server_cpu_s_per_GB"} <= set(moved)
            assert set(results["streams"][impl][direction]) == {"1", "4", "16"}
        handshakes = results["handshake"][impl]
        assert {"p50_ms", "p90_ms", "per_second"} <= set(handshakes)
        assert handshakes["raw"]["handshakes"] == 10
