"""The metric helpers record what they say, under the names the README documents."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from tasks import metrics


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture(autouse=True)
def _built() -> None:
    metrics.poll("pending")  # build the metrics once, so "before" values exist


def test_poll_outcomes_are_counted_by_label() -> None:
    before = {o: value("tts_polls_total", outcome=o) for o in ("pending", "retry", "failed")}
    metrics.poll("retry")
    metrics.poll("retry")
    metrics.poll("failed")
    assert value("tts_polls_total", outcome="retry") == before["retry"] + 2
    assert value("tts_polls_total", outcome="failed") == before["failed"] + 1
    assert value("tts_polls_total", outcome="pending") == before["pending"]


def test_poll_lag_is_actual_minus_planned_and_never_negative() -> None:
    count, total = value("tts_poll_lag_seconds_count"), value("tts_poll_lag_seconds_sum")
    le_1s = value("tts_poll_lag_seconds_bucket", le="1.0")
    metrics.poll_lag(100.0, now=102.5)
    metrics.poll_lag(100.0, now=99.0)  # a clock a little ahead: counted as on time
    metrics.poll_lag(None, now=5.0)  # no plan recorded: nothing to measure
    assert value("tts_poll_lag_seconds_count") == count + 2
    assert value("tts_poll_lag_seconds_sum") == pytest.approx(total + 2.5)
    assert value("tts_poll_lag_seconds_bucket", le="1.0") == le_1s + 1


def test_jobs_downloads_and_webhooks() -> None:
    done = value("tts_jobs_finished_total", outcome="TIMEOUT")
    size, n = value("tts_download_bytes_total"), value("tts_download_seconds_count")
    gone = value("tts_webhook_attempts_total", result="gone")
    metrics.job_finished("TIMEOUT")
    metrics.downloaded(1234, 0.3)
    metrics.webhook("gone")
    assert value("tts_jobs_finished_total", outcome="TIMEOUT") == done + 1
    assert value("tts_download_bytes_total") == size + 1234
    assert value("tts_download_seconds_count") == n + 1
    assert value("tts_webhook_attempts_total", result="gone") == gone + 1


def test_spend_by_model_and_payment_source() -> None:
    usd = value("tts_spend_total", model="m1", payment_source="USD")
    unknown = value("tts_spend_total", model="m1", payment_source="unknown")
    metrics.spent("m1", "USD", 0.0006)
    metrics.spent("m1", "USD", 0.0004)
    metrics.spent("m1", None, 0.5)
    metrics.spent("m1", "USD", None)  # NanoGPT did not say: nothing to count
    assert value("tts_spend_total", model="m1", payment_source="USD") == pytest.approx(usd + 0.001)
    assert value("tts_spend_total", model="m1", payment_source="unknown") == unknown + 0.5


def test_calls_and_waits_by_lane_with_a_bounded_number_of_tenant_labels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics, "_tenants", set())
    calls = value("tts_lane_calls_total", priority="interactive", tenant="app")
    waits = value("tts_lane_deferred_total", priority="bulk", tenant="none")
    metrics.lane_call("interactive", "app")
    metrics.lane_deferred("bulk", None)
    assert value("tts_lane_calls_total", priority="interactive", tenant="app") == calls + 1
    assert value("tts_lane_deferred_total", priority="bulk", tenant="none") == waits + 1
    # Past MAX_TENANT_LABELS tenants, the others are counted together.
    names = [f"t{i}" for i in range(metrics.MAX_TENANT_LABELS + 5)]
    labels = [metrics.tenant_label(name) for name in names]
    assert labels[: metrics.MAX_TENANT_LABELS - 1] == names[: metrics.MAX_TENANT_LABELS - 1]
    assert set(labels[metrics.MAX_TENANT_LABELS :]) == {metrics.OTHER_TENANTS}
    assert metrics.tenant_label("app") == "app"  # one seen before keeps its name
