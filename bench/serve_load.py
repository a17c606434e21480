"""How does `facegan serve` hold up under concurrent clients?

Starts the server on a free loopback port (or uses --url), then drives it with --clients concurrent
clients (default 16): the first half of --seconds (default 30) on /face.png, the second half on
/grid.png?n=16, each request with a fresh random seed. It prints requests/s, p50 and p99 latency
and the error count (any non-200 answer, any non-PNG body, any connection error or timeout) for each,
and how many requests the server's worker took per thread hop. It stops by itself.

    python bench/serve_load.py
    python bench/serve_load.py --url http://127.0.0.1:8000 --seconds 60 --clients 32

The client runs on the same machine as a server it starts, so on a small CPU the two compete.
"""
import argparse
import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(generator: str, log) -> tuple[subprocess.Popen, str]:
    """`python -m facegan.serve` on a free loopback port; returns once /health answers."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "facegan.serve", "--port", str(port), "--generator", generator],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with status {proc.returncode}; its log is {log.name}")
        try:
            httpx.get(f"{url}/health", timeout=5).raise_for_status()
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the server did not answer within 120 s; its log is {log.name}")


async def drive(url: str, path: str, clients: int, seconds: float) -> tuple[list[float], int, float]:
    """Latencies (seconds) of the successful requests, the number of errors, and the seconds taken
    (the last requests end after the deadline)."""
    latencies, errors, end = [], 0, 0.0

    async def client(http: httpx.AsyncClient, rng: random.Random) -> None:
        nonlocal errors
        while time.monotonic() < end:
            start = time.perf_counter()
            try:
                r = await http.get(f"{path}&seed={rng.randrange(2**31)}")
                ok = r.status_code == 200 and r.content.startswith(PNG_MAGIC)
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - start)
            else:
                errors += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        await http.get(f"{path}&seed=0")  # warm-up, not counted
        start = time.monotonic()
        end = start + seconds
        await asyncio.gather(*(client(http, random.Random(i)) for i in range(clients)))
        return latencies, errors, time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=None, help="a running server (default: start one)")
    parser.add_argument("--generator", default=str(ROOT / "assets" / "models" / "small32-ema"),
                        help="a model folder or a .pt (default: the shipped small32-ema)")
    parser.add_argument("--seconds", type=float, default=30.0, help="total, split evenly between the endpoints")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--grid-n", type=int, default=16)
    args = parser.parse_args()

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    print(f"machine: {os.cpu_count()} CPUs, avx512_bf16: {'yes' if 'avx512_bf16' in flags else 'no'}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; {args.clients} clients, "
          f"{args.seconds / 2:g} s per endpoint")
    proc, log = None, tempfile.NamedTemporaryFile("w+b", prefix="serve_load_", suffix=".log", delete=False)
    try:
        url = args.url
        if url is None:
            proc, url = start_server(args.generator, log)
        url = url.rstrip("/")
        print(f"{'endpoint':<20}{'requests':>9}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
        total_errors = 0
        for path in ("/face.png?truncation=0", f"/grid.png?n={args.grid_n}&truncation=0"):
            latencies, errors, elapsed = asyncio.run(drive(url, path, args.clients, args.seconds / 2))
            total_errors += errors
            ms = np.percentile(latencies, [50, 99]) * 1000 if latencies else [float("nan")] * 2
            name = path.split("&")[0].replace("?truncation=0", "")
            print(f"{name:<20}{len(latencies):>9}{len(latencies) / elapsed:>9.1f}"
                  f"{ms[0]:>9.1f}{ms[1]:>9.1f}{errors:>8}", flush=True)
        worker = httpx.get(f"{url}/health", timeout=10).json().get("worker", {})
        if worker.get("hops"):
            print(f"server worker: {worker['requests']} requests in {worker['hops']} thread hops "
                  f"({worker['requests'] / worker['hops']:.1f} per hop, largest {worker['largest_hop']})")
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            os.unlink(log.name)
    sys.exit(1 if total_errors else 0)


if __name__ == "__main__":
    main()
