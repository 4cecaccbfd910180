"""What deploy/ sizes a worker pod on: its memory at concurrency 8, and what a probe costs.

    .venv/bin/python bench/worker_footprint.py

Starts a real worker against a private Redis (no NanoGPT calls), reads the RSS of the main
process and its pool children from /proc, then runs each liveness probe five times:
``celery inspect ping`` (the usual one) and the file-age check deploy/ uses.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.worker import WorkerProcess
from workers.embedded_redis import EmbeddedRedis

RUNS = 5


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def probe_cost_ms(argv: list[str], env: dict[str, str]) -> tuple[int, float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    code = 0
    for _ in range(RUNS):
        code = subprocess.run(argv, env=env, capture_output=True, check=False).returncode
    wall_ms = (time.monotonic() - started) / RUNS * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return code, wall_ms, cpu_s / RUNS * 1000


def main() -> None:
    scratch = Path(tempfile.mkdtemp(prefix="tts-footprint-"))
    alive = scratch / "alive"
    with EmbeddedRedis() as server:
        env = {
            "CELERY_BROKER_URL": server.url,
            "NANOGPT_API_KEY": "footprint",
            "TTS_LIVENESS_FILE": str(alive),
        }
        worker = WorkerProcess(env, scratch / "worker.log", concurrency=8, name="fp@%h").start()
        try:
            time.sleep(2)  # let the pool settle
            assert worker.process is not None
            pid = worker.process.pid
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            child_mib = [rss_mib(int(c)) for c in children]
            total = rss_mib(pid) + sum(child_mib)
            print(
                f"RSS: main {rss_mib(pid):.0f} MiB, {len(child_mib)} pool processes "
                f"~{sum(child_mib) / len(child_mib):.0f} MiB each, total {total:.0f} MiB"
            )
            full_env = {**os.environ, **env}
            probes = {
                "celery inspect ping": [
                    sys.executable, "-m", "celery", "-A", "workers.app",
                    "inspect", "ping", "-d", f"fp@{os.uname().nodename}",
                ],
                "file-age probe": [
                    "sh", "-c", f"test $(( $(date +%s) - $(stat -c %Y {alive}) )) -lt 60",
                ],
            }  # fmt: skip
            for label, argv in probes.items():
                code, wall_ms, cpu_ms = probe_cost_ms(argv, full_env)
                print(f"{label}: exit {code}, {wall_ms:.0f} ms wall, {cpu_ms:.0f} ms CPU per run")
        finally:
            worker.stop()


if __name__ == "__main__":
    main()
