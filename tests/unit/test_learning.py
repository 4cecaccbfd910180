"""What the fleet learns in Redis (tasks/pacing/learning.py): capped, per model, per database,
and never a reason for a poll to fail."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tasks.pacing import learning
from tasks.pacing.learning import Learning
from tests.support.budget import Clock


@pytest.fixture
def client(redis_client: redis.Redis) -> Iterator[redis.Redis]:
    redis_client.delete(*learning.keys(redis_client))
    yield redis_client
    redis_client.delete(*learning.keys(redis_client))


def test_generation_times_keep_the_newest_per_model(client: redis.Redis) -> None:
    clock = Clock()
    learned = Learning(client, clock=clock)
    for i in range(learning.GENERATION_SAMPLES + 44):
        learned.record_finished("model-a", i + 0.12345, i + 0.12345)
    learned.record_finished("model-b", 7.0, 7.0)
    gens = learned.fleet("model-a").generation_s
    assert len(gens) == learning.GENERATION_SAMPLES
    assert gens[0] == pytest.approx(learning.GENERATION_SAMPLES + 43.1234)
    assert gens[-1] == pytest.approx(44.1234)
    assert learned.fleet("model-b").generation_s == (7.0,)
    assert learned.fleet("model-c").generation_s == ()


def test_the_queue_speed_is_the_median_of_recent_moves(client: redis.Redis) -> None:
    clock = Clock()
    learned = Learning(client, clock=clock)
    assert learned.fleet(None).s_per_place() is None
    learned.record_move("m", 2, 1.0)  # 0.5 s a place
    learned.record_move("m", 1, 0.4)
    learned.record_move("m", 4, 40.0)  # one stall: the median does not follow it
    # Not moves: no place gained, a time too short to measure, nonsense.
    learned.record_move("m", 0, 3.0)
    learned.record_move("m", 3, 0.0)
    learned.record_move("m", 1, float("nan"))
    clock.advance(learning.CACHE_S)
    assert learned.fleet("m").s_per_place() == pytest.approx(0.5)
    assert learned.fleet("other").s_per_place() is None  # each model's queue is its own
    for _ in range(learning.QUEUE_SAMPLES):
        learned.record_move("m", 1, 2.0)
    clock.advance(learning.CACHE_S)
    assert learned.fleet("m").s_per_place_samples == (2.0,) * learning.QUEUE_SAMPLES


def test_reads_are_cached_for_a_moment(client: redis.Redis) -> None:
    clock = Clock()
    learned = Learning(client, clock=clock)
    assert learned.fleet("m").generation_s == ()
    Learning(client, clock=clock).record_finished("m", 3.0, 3.0)  # another worker learns
    assert learned.fleet("m").generation_s == ()
    clock.advance(learning.CACHE_S)
    assert learned.fleet("m").generation_s == (3.0,)


def test_junk_in_the_lists_is_ignored(client: redis.Redis) -> None:
    client.rpush(learning.key("m", "generation-s"), "4.5", "nan", "-1", "x", "inf", "2")
    assert Learning(client, clock=Clock()).fleet("m").generation_s == (4.5, 2.0)


def test_learned_keys_belong_to_their_database(quiet_redis_server: object) -> None:
    """A deployment (or a test) on another database learns nothing from this one's jobs."""
    url = quiet_redis_server.url  # type: ignore[attr-defined]
    one = redis.Redis.from_url(url.rsplit("/", 1)[0] + "/5", decode_responses=True)
    two = redis.Redis.from_url(url.rsplit("/", 1)[0] + "/6", decode_responses=True)
    try:
        Learning(one, clock=Clock()).record_finished("m", 9.0, 9.0)
        assert Learning(two, clock=Clock()).fleet("m").generation_s == ()
        assert learning.key("m", "generation-s") in learning.keys(one)
    finally:
        one.flushdb()
        two.flushdb()
        one.close()
        two.close()


class DeadPipeline:
    """A pipeline whose connection is gone when it is sent."""

    def __enter__(self) -> DeadPipeline:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def __getattr__(self, name: str) -> object:
        if name == "execute":

            def execute() -> object:
                raise redis.ConnectionError("Connection refused")

            return execute
        return lambda *args, **kwargs: None


class DeadRedis:
    def pipeline(self, transaction: bool = True) -> DeadPipeline:
        return DeadPipeline()


def test_a_redis_error_costs_the_aim_not_the_poll() -> None:
    learned = Learning(DeadRedis(), clock=Clock())  # type: ignore[arg-type]
    assert learned.fleet("m") == learning.Fleet()
    learned.record_finished("m", 3.0, 3.0)  # dropped, not raised
    learned.record_move("m", 1, 0.5)
    learned.record_position("m", 3, 1.0)


def test_the_fast_speed_is_a_low_quantile_once_enough_moves_are_known() -> None:
    few = learning.Fleet((), (1.0,) * (learning.MIN_MOVES - 1))
    assert few.fast_s_per_place() is None
    moves = tuple(float(i) for i in range(1, 21))  # 1 .. 20 s a place
    fleet = learning.Fleet((), moves)
    assert fleet.fast_s_per_place() == 2.0  # one in ten was faster
    assert fleet.s_per_place() == 10.5


def test_a_new_job_is_behind_what_is_left_of_the_lines_seen(client: redis.Redis) -> None:
    clock = Clock()
    learned = Learning(client, clock=clock)
    for _ in range(learning.MIN_MOVES):
        learned.record_move("m", 1, 0.5)  # fast: 0.5 s a place
    assert learned.fleet("m").places_ahead(clock()) == 0  # no line seen yet
    clock.advance(learning.CACHE_S)
    learned.record_position("m", 40, clock() - 4.0)  # 8 places cleared since, at the fastest
    learned.record_position("m", 10, clock())
    learned.record_position("m", 0, clock())  # at the head: not a place in line
    assert learned.fleet("m").places_ahead(clock()) == 32
    # A line long cleared says nothing.
    assert learned.fleet("m").places_ahead(clock() + 100.0) == 0
    assert learning.Fleet().places_ahead(clock()) == 0


def test_finished_intervals_are_read_as_times(client: redis.Redis) -> None:
    """A job done before it was seen generating keeps (0, by]; one seen generating (after, by];
    both come back as times within them (tasks/pacing/censoring.py); equal ends are that exact
    time."""
    learned = Learning(client, clock=Clock())
    learned.record_finished("m", -2.0, 7.0)  # last seen queued: nothing known of the start
    learned.record_finished("m", 7.0, 10.0)
    learned.record_finished("m", 5.0, 5.0)  # an exact time
    learned.record_finished("m", 6.0, 5.0)  # ends the wrong way round: dropped
    learned.record_finished("m", 3.0, float("inf"))  # nonsense: dropped
    raw = client.lrange(learning.key("m", "generation-s"), 0, -1)
    decoded = [x.decode() if isinstance(x, bytes) else x for x in raw]
    assert decoded == ["5.0:5.0", "7.0:10.0", "0.0:7.0"]
    exact, newest, oldest = learned.fleet("m").generation_s
    assert exact == 5.0
    assert 7.0 < newest <= 10.0
    assert 0.0 <= oldest <= 7.0
