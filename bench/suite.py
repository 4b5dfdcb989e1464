"""kquic, aioquic and qh3 side by side on loopback: throughput, streams, handshakes, CPU.

    python bench/suite.py [--quick] [--size 50M] [--large-size 200M] [--runs 3]
                          [--handshakes 600] [--impl kquic,aioquic,qh3]
                          [--sections SECTIONS] [--json FILE] [--png FILE]

Every implementation runs as its own server and client processes on 127.0.0.1 and
speaks the perf protocol of kquic-perf (the peers: tests/interop/aioquic_peer.py and
qh3_peer.py). Clients verify the server's certificate. Sections:

  throughput  SIZE bytes on one stream, upload and download, 1200-byte datagrams
  plpmtud     LARGE_SIZE bytes the same way, with datagrams as large as each
              implementation goes: kquic with PLPMTUD on both ends, qh3 with its
              client's path MTU discovery, aioquic (no discovery) with a fixed
              16383-byte datagram size, the largest it handles. LARGE_SIZE is one
              200 MiB stream by default, as the performance issue measures: 50 MiB
              move in a tenth of a second here, much of it start-up (slow start and
              the PLPMTUD search), not the bulk rate
  streams     SIZE bytes split over 1, 4 and 16 concurrent streams, both directions
  handshake   HANDSHAKES full handshakes in a row, split over RUNS client processes,
              each against its own server: latency p50/p90 of all of them pooled, and
              handshakes per second

Runs alternate between the implementations, so that drift in this machine's speed
reaches each alike. Transfers give MB/s (median of RUNS), and CPU seconds per GB on
each side: the client reports its own process CPU from connect to close, the server's
is the change of its process CPU-time clock over the client's run. qh3 is
skipped when not installed (pip install '.[bench]'). --quick is the CI smoke mode:
2 MB (both sizes), one run, 10 handshakes.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kquic_tools.perf import size  # noqa: E402
from tests.certs import make_pki  # noqa: E402
from tests.interop.conftest import PEERS, Server, perf_commands, python, run  # noqa: E402

IMPLS = ("kquic", "aioquic", "qh3")
SECTIONS = ("throughput", "plpmtud", "streams", "handshake")
DIRECTIONS = {"upload": "send", "download": "recv"}
STREAMS = (1, 4, 16)
# The plpmtud section: each implementation's arguments (both ends) and how it got there.
LARGE = {
    "kquic": (["--plpmtud"], "PLPMTUD (RFC 8899) on both ends"),
    "aioquic": (["--max-datagram-size", "16383"], "fixed 16383 (no discovery; larger fails)"),
    "qh3": (["--max-datagram-size", "65507"], "client path MTU discovery up to 65507"),
}
QUICK = {"size": size("2M"), "large_size": size("2M"), "runs": 1, "handshakes": 10}
DEFAULTS = {"size": size("50M"), "large_size": size("200M"), "runs": 3, "handshakes": 600}
CPUCLOCK_SCHED = 2  # the kernel's process CPU-time clock, as clock_getcpuclockid(3) names it


def process_cpu(pid: int) -> float:
    """CPU seconds of every thread ``pid`` has run, ended ones included. Read from the
    process's CPU-time clock, the id clock_getcpuclockid(3) gives (the pid's complement
    shifted by three, kind CPUCLOCK_SCHED): nanoseconds, where /proc/PID/stat counts
    10 ms clock ticks, as long as a whole 2 MiB transfer takes here."""
    return time.clock_gettime(((~pid) << 3) | CPUCLOCK_SCHED)


def against_server(server_argv: list[str], client_argv, what: str) -> tuple[dict, float]:
    """Start the server, run the client ``client_argv(port)`` against it; the client's
    last JSON line and the server's CPU seconds while the client ran."""
    server = Server(server_argv)
    try:
        before = process_cpu(server.proc.pid)
        result = run(client_argv(server.port))
        server_cpu = process_cpu(server.proc.pid) - before
    finally:
        server.stop()
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1]), server_cpu


def transfer(impl: str, pki, direction: str, nbytes: int, streams: int, extra: list) -> dict:
    """One perf transfer: the client's JSON figures plus the server's CPU seconds."""
    server_argv, client_argv = perf_commands(impl, pki, DIRECTIONS[direction], nbytes)
    figures, server_cpu = against_server(
        [*server_argv, *extra],
        lambda port: [*client_argv(port), "--streams", str(streams), *extra],
        f"{impl} {direction}",
    )
    return {**figures, "server_cpu_seconds": round(server_cpu, 3)}


def summarise(runs: list[dict]) -> dict:
    def per_gb(key: str) -> float:
        return statistics.median(r[key] / (r["bytes"] / 1e9) for r in runs)

    return {
        "MBps": statistics.median(r["MBps"] for r in runs),
        "client_cpu_s_per_GB": per_gb("cpu_seconds"),
        "server_cpu_s_per_GB": per_gb("server_cpu_seconds"),
        "max_datagram_size": max(r["max_datagram_size"] for r in runs),
        "runs": runs,
    }


def handshakes(impl: str, pki, count: int) -> dict:
    """``count`` sequential handshakes against a fresh server: the client's figures plus
    the server's CPU seconds."""
    server_argv, _ = perf_commands(impl, pki, "recv", 0)
    if impl == "kquic":
        client = python(str(ROOT / "bench" / "kquic_handshakes.py"))
    else:
        client = python("-m", PEERS[impl], "handshake-client")
    raw, server_cpu = against_server(
        server_argv,
        lambda port: [*client, "--port", str(port), "--count", str(count), "--ca", str(pki.ca)],
        f"{impl} handshakes",
    )
    return {**raw, "server_cpu_seconds": server_cpu}


def summarise_handshakes(runs: list[dict]) -> dict:
    """The runs' latencies pooled; rates and CPU over all of them."""
    latencies = sorted(x for r in runs for x in r["latency_ms"])
    count = sum(r["handshakes"] for r in runs)
    deciles = statistics.quantiles(latencies, n=10) if len(latencies) > 1 else latencies * 9
    return {
        "p50_ms": statistics.median(latencies),
        "p90_ms": deciles[8],
        "per_second": count / sum(r["seconds"] for r in runs),
        "client_cpu_ms_per_handshake": 1000 * sum(r["cpu_seconds"] for r in runs) / count,
        # each server's CPU covers its client's untimed warm-up handshake too
        "server_cpu_ms_per_handshake": 1000
        * sum(r["server_cpu_seconds"] for r in runs)
        / (count + len(runs)),
        "runs": runs,
    }


class Suite:
    """Runs alternate between the implementations (kquic, aioquic, qh3, kquic, ...), so
    that this machine's drift in speed over a suite reaches each alike: the figures of
    one implementation are never all taken in a fast or a slow stretch."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.pki = make_pki(tempfile.mkdtemp(prefix="bench-pki-"))
        # Measurements by (impl, what): throughput and one-stream figures are shared.
        self.samples: dict[tuple, list[dict]] = {}

    def run(self) -> dict:
        args = self.args
        results: dict[str, dict] = {}
        for section in args.sections:
            for i in range(args.runs):
                for impl in args.impl:
                    print(f"... {section} {impl} {i + 1}/{args.runs}", file=sys.stderr, flush=True)
                    for key in self.keys(section, impl):
                        self.sample(key, i)
            results[section] = {impl: self.section(section, impl) for impl in args.impl}
        return results

    def keys(self, section: str, impl: str) -> list[tuple]:
        """What ``section`` measures of ``impl``: (impl, direction, streams, large)
        for transfers, (impl, "handshake") for handshakes."""
        if section == "handshake":
            return [(impl, "handshake")]
        if section == "streams":
            return [(impl, d, n, False) for d in DIRECTIONS for n in STREAMS]
        return [(impl, d, 1, section == "plpmtud") for d in DIRECTIONS]

    def sample(self, key: tuple, run: int) -> None:
        """Run ``key``'s measurement for the ``run``-th time, unless another section
        already did."""
        samples = self.samples.setdefault(key, [])
        if len(samples) > run:
            return
        impl = key[0]
        if key[1] == "handshake":
            total, runs = self.args.handshakes, self.args.runs
            share = max(1, total // runs + (run < total % runs))  # HANDSHAKES in all
            samples.append(handshakes(impl, self.pki, share))
            return
        _, direction, streams, large = key
        extra = LARGE[impl][0] if large else []
        nbytes = self.args.large_size if large else self.args.size
        samples.append(transfer(impl, self.pki, direction, nbytes, streams, extra))

    def section(self, section: str, impl: str) -> dict:
        if section == "handshake":
            return summarise_handshakes(self.samples[(impl, "handshake")])
        if section == "streams":
            return {
                d: {str(n): summarise(self.samples[(impl, d, n, False)]) for n in STREAMS}
                for d in DIRECTIONS
            }
        large = section == "plpmtud"
        figures = {d: summarise(self.samples[(impl, d, 1, large)]) for d in DIRECTIONS}
        if large:
            figures["how"] = LARGE[impl][1]
        return figures


def machine() -> dict:
    versions = {}
    for package in ("kquic", "aioquic", "qh3", "cryptography", "matplotlib"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": versions,
        "commit": commit or None,
    }


# --- the table ---------------------------------------------------------------------------


def rows(results: dict) -> list[tuple[str, dict | None]]:
    """(label, {impl: value}) rows; a None value marks a heading."""
    out: list[tuple[str, dict | None]] = []

    def pick(section: str, path) -> dict:
        return {impl: path(fig) for impl, fig in results[section].items()}

    for section, title in (
        ("throughput", "one stream, 1200-byte datagrams"),
        ("plpmtud", "one stream, large datagrams"),
    ):
        if section not in results:
            continue
        out.append((title, None))
        for d in DIRECTIONS:
            out.append((f"{d} MB/s", pick(section, lambda f, d=d: f[d]["MBps"])))
        for d in DIRECTIONS:
            for side in ("client", "server"):
                key = f"{side}_cpu_s_per_GB"
                out.append((f"{d} {side} CPU s/GB", pick(section, lambda f, d=d, k=key: f[d][k])))
        if section == "plpmtud":
            for d in DIRECTIONS:
                sizes = pick(section, lambda f, d=d: f[d]["max_datagram_size"])
                out.append((f"{d} largest datagram", sizes))
    if "streams" in results:
        out.append(("concurrent streams, 1200-byte datagrams", None))
        for d in DIRECTIONS:
            for n in STREAMS:
                mbps = pick("streams", lambda f, d=d, n=n: f[d][str(n)]["MBps"])
                out.append((f"{d} x{n} MB/s", mbps))
    if "handshake" in results:
        out.append(("sequential handshakes", None))
        for key, label in (
            ("p50_ms", "latency p50 ms"),
            ("p90_ms", "latency p90 ms"),
            ("per_second", "handshakes/s"),
            ("client_cpu_ms_per_handshake", "client CPU ms each"),
            ("server_cpu_ms_per_handshake", "server CPU ms each"),
        ):
            out.append((label, pick("handshake", lambda f, k=key: f[k])))
    return out


def table(results: dict, impls: list[str], header: str) -> str:
    ratios = [other for other in ("aioquic", "qh3") if "kquic" in impls and other in impls]
    head = f"{'':<34}" + "".join(f"{impl:>10}" for impl in impls)
    head += "".join(f"{'kquic/' + other:>15}" for other in ratios)
    lines = [header, "", head]
    for label, values in rows(results):
        if values is None:
            lines.append(label)
            continue
        line = f"  {label:<32}" + "".join(f"{fmt(values.get(impl)):>10}" for impl in impls)
        for other in ratios:
            mine, theirs = values.get("kquic"), values.get(other)
            ratio = mine / theirs if mine and theirs and "datagram" not in label else None
            line += f"{fmt(ratio, ratio=True):>15}"
        lines.append(line)
    if "plpmtud" in results:
        lines.append("")
        lines.append("large datagrams:")
        for impl in impls:
            lines.append(f"  {impl}: {results['plpmtud'][impl]['how']}")
    return "\n".join(lines)


def fmt(value, ratio: bool = False) -> str:
    if value is None:
        return "-"
    if ratio:
        return f"{value:.2f}"
    if isinstance(value, int) or value >= 1000:
        return f"{value:.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


# --- the plot ----------------------------------------------------------------------------


def throughput_groups(results: dict) -> list[tuple[str, dict]]:
    """(group name, {impl: MB/s}) for every throughput figure; one stream at 1200 bytes
    is the throughput section's, so streams adds 4 and 16."""
    groups = []
    for section, suffix in (("throughput", "1200 B"), ("plpmtud", "large")):
        for d in DIRECTIONS:
            if section in results:
                figures = {impl: fig[d]["MBps"] for impl, fig in results[section].items()}
                groups.append((f"{d}\n{suffix}", figures))
    for d in DIRECTIONS:
        for n in STREAMS[1:] if "throughput" in results else STREAMS:
            if "streams" in results:
                figures = {impl: fig[d][str(n)]["MBps"] for impl, fig in results["streams"].items()}
                groups.append((f"{d}\n{n} streams", figures))
    return groups


def plot(results: dict, impls: list[str], path: str, header: str) -> None:
    """A grouped bar chart of the throughput figures, one bar per implementation."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--png needs matplotlib: pip install '.[bench]'") from None
    groups = throughput_groups(results)
    if not groups:
        print("--png: no throughput figures to draw", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(max(8, 1.2 * len(groups)), 5))
    width = 0.8 / len(impls)
    for i, impl in enumerate(impls):
        xs = [g + (i - (len(impls) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [figures.get(impl, 0) for _, figures in groups], width, label=impl)
    ax.set_xticks(range(len(groups)), [name for name, _ in groups], fontsize=8)
    ax.set_ylabel("MB/s")
    # The header names sizes, runs and machine; wrapped so a wide one is not cut off.
    ax.set_title(f"Loopback throughput\n{textwrap.fill(header, 110)}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def output_problem(target: str | None) -> str | None:
    """Why the run's output could not be written to ``target``, found before minutes of
    measuring would be lost; its folder is made if missing (bench/results is not in git)."""
    if not target:
        return None
    folder = Path(target).parent
    if folder.exists() and not folder.is_dir():
        return f"{folder} is not a directory"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot make {folder}: {exc.strerror}"
    if Path(target).is_dir():
        return f"{target} is a directory"
    if not os.access(folder, os.W_OK):
        return f"{folder} is not writable"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke: 2M, 1 run, 10 handshakes")
    parser.add_argument("--size", type=size)
    parser.add_argument("--large-size", type=size, help="bytes per transfer in the plpmtud section")
    parser.add_argument("--runs", type=int)
    parser.add_argument("--handshakes", type=int)
    parser.add_argument("--impl", default=",".join(IMPLS))
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--png", metavar="FILE")
    args = parser.parse_args()
    defaults = QUICK if args.quick else DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.impl = [i for i in args.impl.split(",") if i]
    args.sections = [s for s in args.sections.split(",") if s]
    for name, known in (("impl", IMPLS), ("sections", SECTIONS)):
        unknown = set(getattr(args, name)) - set(known)
        if unknown:
            parser.error(f"--{name}: unknown {', '.join(sorted(unknown))}")
    skipped = [i for i in args.impl if i != "kquic" and importlib.util.find_spec(i) is None]
    for impl in skipped:
        print(f"{impl} is not installed: skipped (pip install '.[bench]')", file=sys.stderr)
    args.impl = [i for i in args.impl if i not in skipped]
    if args.png:  # fail before the runs, not after
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--png needs matplotlib: pip install '.[bench]'")
    for name in ("json", "png"):
        problem = output_problem(getattr(args, name))
        if problem:
            parser.error(f"--{name}: {problem}")

    info = machine()
    results = Suite(args).run()
    header = (
        f"{args.size / 2**20:g} MiB per transfer ({args.large_size / 2**20:g} MiB with large "
        f"datagrams), median of {args.runs}; "
        f"{args.handshakes} handshakes; {info['nproc']} CPUs ({info['cpu']}), "
        f"Linux {info['kernel']}, Python {info['python']}"
    )
    print(table(results, args.impl, header))
    if args.json:
        document = {
            "machine": info,
            "config": {
                "size": args.size,
                "large_size": args.large_size,
                "runs": args.runs,
                "handshakes": args.handshakes,
                "impl": args.impl,
                "skipped": skipped,
                "sections": args.sections,
                "quick": args.quick,
            },
            "results": results,
        }
        Path(args.json).write_text(json.dumps(document, indent=2))
    if args.png:
        plot(results, args.impl, args.png, header)
    return 0


if __name__ == "__main__":
    sys.exit(main())
