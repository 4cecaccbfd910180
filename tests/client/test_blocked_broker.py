"""An app's submit to a RabbitMQ in memory alarm raises instead of waiting for the alarm to end.

RabbitMQ blocks every publishing connection while an alarm lasts and never confirms; with
publisher confirms and no timeout, ``submit()`` (in a web request, say) would wait as long as
the alarm. A node of the test's own (tests/reliability/rabbit_node.py; never the shared one).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import kombu.exceptions
import pytest

from tests.reliability import rabbit_node
from tests.reliability.rabbit_node import PrivateNode
from tts_client import TTSClient

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Far beyond the client's bound (two attempts of 5 s and two 5 s closes): a submit still
# running then is held by the alarm.
SUBMIT_WAIT_S = 60.0


@pytest.fixture
def blocked_node(tmp_path: Path) -> Iterator[PrivateNode]:
    rabbit_node.require()
    node = PrivateNode(tmp_path / "rabbitmq").start()
    try:
        node.ctl("set_vm_memory_high_watermark", "0.0000001")
        assert "memory" in node.alarms()
        yield node
    finally:
        node.stop()


@pytest.mark.timeout(180)
def test_submit_to_a_node_in_memory_alarm_raises(blocked_node: PrivateNode) -> None:
    outcome: list[BaseException | str] = []

    def submit() -> None:
        try:
            with TTSClient(blocked_node.url) as tts:
                outcome.append(tts.submit("Hello", "Elevenlabs-Turbo-V2.5"))
        except BaseException as exc:
            outcome.append(exc)

    sender = threading.Thread(target=submit, daemon=True)
    sender.start()
    sender.join(SUBMIT_WAIT_S)
    assert not sender.is_alive(), f"submit() still waiting after {SUBMIT_WAIT_S:.0f} s"
    [raised] = outcome
    assert isinstance(raised, kombu.exceptions.OperationalError), raised
