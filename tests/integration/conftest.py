"""The integration fixtures live in tests/support/stack.py, a plugin that tests/conftest.py loads
for the whole suite; the helpers are re-exported here for the modules that import them from here.
"""

from tests.support.stack import (
    API_KEY,
    ELEVEN,
    SECRET,
    WORKER_ENV,
    Responder,
    Send,
    wait_until,
)

__all__ = ["API_KEY", "ELEVEN", "SECRET", "WORKER_ENV", "Responder", "Send", "wait_until"]
