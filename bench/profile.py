"""Profile the proxy under load: py-spy on `router serve` while 64 connections send JSON requests.

    .venv/bin/pip install py-spy        # a profiler, not a dependency of the proxy
    .venv/bin/python bench/profile.py [--seconds 20] [--stream] [--out profile.svg] [--raw]

The proxy (shipped router.yaml, log level info) is pinned to one core and the fake upstream and
load generator to the other, as in bench/run.py. Writes a flame graph (or, with --raw, folded
stacks that `sort | uniq` and grep can read) of the proxy's process, idle time left out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from run import BODY, ROOT, STREAM_BODY, listening, pinned, procs, server, throughput


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--stream", action="store_true", help="streamed requests instead of JSON")
    parser.add_argument("--out", default="profile.svg")
    parser.add_argument("--raw", action="store_true", help="folded stacks instead of an SVG")
    parser.add_argument("--config", default=str(ROOT / "router.yaml"))
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    os.sched_setaffinity(0, {1})
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="profile-") as tmp:
        work = Path(tmp)
        with server("direct", pinned([python, "-m", "router.fake"], "1"), work / "fake.log",
                    listening) as fake:
            port = procs.free_port()
            with server("proxy", pinned([str(Path(python).with_name("router")), "serve",
                                         "--config", args.config, "--port", str(port)], "0"),
                        work / "proxy.log", lambda _: f"http://127.0.0.1:{port}",
                        env={"ROUTER_UPSTREAM_URL": fake.url, "ROUTER_STATE_DIR": tmp}) as proxy:
                body = STREAM_BODY if args.stream else BODY
                asyncio.run(throughput(proxy, body, 2))  # warm up
                recorder = subprocess.Popen(
                    [spy, "record", "--pid", str(proxy.process.pid), "--rate", str(args.rate),
                     "--duration", str(int(args.seconds)), "--output", args.out,
                     "--format", "raw" if args.raw else "flamegraph", "--nonblocking"])
                rps, cpu_ms, _, _ = asyncio.run(throughput(proxy, body, args.seconds + 1))
                recorder.wait()
    print(f"{rps:.0f} req/s, {cpu_ms:.3f} ms CPU per request (under the profiler); "
          f"wrote {args.out}")


if __name__ == "__main__":
    main()
