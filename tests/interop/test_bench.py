"""bench/suite.py in its CI smoke mode: every section runs for kquic and aioquic (and qh3
when installed) and the JSON holds a positive figure for each. The figures themselves
are never asserted: timing belongs to the benchmark, not to the tests."""

from __future__ import annotations

import functools
import importlib.util
import json
import subprocess
import sys

from tests.interop.conftest import ROOT, env

SMOKE_TIMEOUT = 60


def positive_numbers(tree) -> list[float]:
    """Every figure of a summary, leaving out the raw runs."""
    if isinstance(tree, dict):
        return [n for k, v in tree.items() if k != "runs" for n in positive_numbers(v)]
    if isinstance(tree, (int, float)) and not isinstance(tree, bool):
        return [tree]
    return []


def test_suite_quick_mode_reports_every_section(tmp_path) -> None:
    impls = ["kquic", "aioquic"] + (["qh3"] if importlib.util.find_spec("qh3") else [])
    out = tmp_path / "results" / "bench.json"  # a folder not there yet, as in the README
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
    assert document["config"]["large_size"] == document["config"]["size"]  # both 2M quick
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
        assert sum(run["handshakes"] for run in handshakes["runs"]) == 10


def test_unusable_output_is_refused_before_any_run(tmp_path) -> None:
    """An output the suite could not write ends it at once, with one line naming the
    problem, before minutes of measuring are lost (suite.py exits before its runs: no
    server starts, so this takes a fraction of a second)."""
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    for option, target, problem in (
        ("--json", not_a_folder / "x.json", "is not a directory"),
        ("--json", tmp_path, "is a directory"),  # --png would need matplotlib
    ):
        result = subprocess.run(
            [sys.executable, "bench/suite.py", "--quick", option, str(target)],
            capture_output=True,
            text=True,
            env=env(),
            cwd=ROOT,
            timeout=SMOKE_TIMEOUT,
        )
        assert result.returncode == 2, result.stderr
        assert problem in result.stderr and "Traceback" not in result.stderr
        assert result.stdout == ""


def test_runs_alternate_between_implementations(monkeypatch) -> None:
    """The suite takes one run of each implementation in turn, so a slow stretch of the
    machine does not fall on one implementation's runs alone; figures measured for one
    section (one stream at 1200 bytes) are not measured again for another."""
    import argparse

    from bench import suite

    order: list[tuple] = []

    def transfer(impl, pki, direction, nbytes, streams, extra) -> dict:
        order.append((impl, direction, streams, bool(extra)))
        return {
            "MBps": 1.0,
            "bytes": nbytes,
            "cpu_seconds": 1.0,
            "server_cpu_seconds": 1.0,
            "max_datagram_size": 1200,
        }

    def handshakes(impl, pki, count) -> dict:
        order.append((impl, "handshake", count))
        return {
            "handshakes": count,
            "seconds": 1.0,
            "latency_ms": [1.0] * count,
            "cpu_seconds": 1.0,
            "server_cpu_seconds": 1.0,
        }

    monkeypatch.setattr(suite, "transfer", transfer)
    monkeypatch.setattr(suite, "handshakes", handshakes)
    monkeypatch.setattr(suite, "make_pki", lambda path: None)
    args = argparse.Namespace(
        sections=["throughput", "streams", "handshake"],
        runs=2,
        impl=["kquic", "aioquic"],
        size=1000,
        handshakes=7,
    )
    results = suite.Suite(args).run()
    one_stream = [o for o in order if o[1] == "upload" and o[2] == 1]
    assert one_stream == [("kquic", "upload", 1, False), ("aioquic", "upload", 1, False)] * 2
    assert [o for o in order if o[1] == "handshake"] == [
        ("kquic", "handshake", 4),
        ("aioquic", "handshake", 4),
        ("kquic", "handshake", 3),
        ("aioquic", "handshake", 3),
    ]
    assert len(order) == 2 * 2 * (2 * 3 + 1)  # runs x impls x (transfers + handshakes)
    assert results["handshake"]["kquic"]["p50_ms"] == 1.0
    assert len(results["streams"]["aioquic"]["download"]["1"]["runs"]) == 2


def test_longpath_moves_the_data_for_each_implementation(tmp_path) -> None:
    """bench/longpath.py's transfers, small: each implementation's core delivers every
    byte over the simulated path (its figures are the benchmark's, not asserted)."""
    from bench import longpath
    from tests.certs import make_pki

    pki = make_pki(tmp_path)
    link = (10e6, 0.02)  # 10 MB/s, 40 ms round trip
    for transfer in (
        longpath.kquic,
        longpath.kquic_fixed,
        functools.partial(longpath.peer, "aioquic"),
    ):
        seconds, dropped = transfer(1 << 20, link, pki)
        assert 0.04 < seconds < 60 and dropped >= 0, transfer
