"""What the figures were measured on: CPU, memory, load, and the versions that matter."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import psutil

from bench import rabbit
from workers.embedded_redis import server_binary


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def redis_server_version() -> str:
    binary = server_binary()
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    version = next((w for w in out.stdout.split() if w.startswith("v=")), "v=?")
    return f"{version[2:]} ({binary})"


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def facts() -> dict[str, str]:
    """The machine and software facts BENCHMARKS.md reports, as display strings."""
    memory_gib = psutil.virtual_memory().total / 2**30
    return {
        "date (UTC)": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
        "CPU": cpu_model(),
        "cores": f"{os.cpu_count()} (logical)",
        "RAM": f"{memory_gib:.1f} GiB",
        "OS": f"{platform.system()} {platform.release()}",
        "load average at start (1/5/15 min)": load_average(),
        "Python": platform.python_version(),
        "Celery": metadata.version("celery"),
        "kombu": metadata.version("kombu"),
        "redis-py": metadata.version("redis"),
        "redis-server": redis_server_version(),
        "RabbitMQ": rabbit.server_version() or "not reachable",
    }


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
