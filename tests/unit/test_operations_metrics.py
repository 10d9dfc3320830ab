"""The overview (`rod topics --json`) as Prometheus metrics: what an operator's alert reads."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from services.operations.metrics import OverviewCollector

OVERVIEW = {
    "topics": [{"name": "rod.results.v1", "partitions": 6, "messages": 120, "approximate": True}],
    "groups": [
        {"group": "rod-distributor", "topic": "rod.results.v1", "status": "STOPPED", "lag": 7, "members": 0,
         "partitions": [{"partition": 0, "committed": 10, "lag": 4, "status": "STOPPED"},
                        {"partition": 1, "committed": None, "lag": 3, "status": "STOPPED"}]},
    ],
    "subscriptions": [
        {"name": "cibg-big", "state": "paused", "pending": 5, "pending_age_seconds": 42.5, "held": 0},
        {"name": "extract", "state": "running", "pending": 0, "pending_age_seconds": None, "held": 2},
    ],
    "consumers": [
        {"name": "cibg-prod", "subscription": "cibg-big", "unacknowledged": 12,
         "oldest_unacknowledged_age_seconds": 2400.0, "last_fetch_at": "2026-11-30T10:00:00+00:00"},
        {"name": "mijn", "subscription": "mijnoverheid", "unacknowledged": 0,
         "oldest_unacknowledged_age_seconds": None, "last_fetch_at": None},
    ],
    "deadletters": {"open": 1, "total": 3, "by_service": {"audit": {"open": 1, "total": 3}}},
}


def scrape(overview: dict | None) -> str:
    registry = CollectorRegistry()
    registry.register(OverviewCollector(lambda: overview))
    return generate_latest(registry).decode()


def test_a_stopped_group_keeps_its_lag_and_one_status_per_group() -> None:
    text = scrape(OVERVIEW)
    group, topic = 'group="rod-distributor"', 'topic="rod.results.v1"'
    assert f'rod_consumer_lag_messages{{{group},partition="0",{topic}}} 4.0' in text
    assert f'rod_consumer_lag_messages{{{group},partition="1",{topic}}} 3.0' in text
    assert f'rod_consumer_group_status{{{group},status="STOPPED",{topic}}} 1.0' in text
    assert f'rod_consumer_group_status{{{group},status="OK",{topic}}} 0.0' in text
    assert 'rod_consumer_committed_offset{group="rod-distributor",partition="1"' not in text  # none yet


def test_subscriptions_pending_age_paused_and_dead_letters_per_service() -> None:
    text = scrape(OVERVIEW)
    assert 'rod_subscription_pending_events{subscription="cibg-big"} 5.0' in text
    assert 'rod_subscription_pending_age_seconds{subscription="cibg-big"} 42.5' in text
    assert 'rod_subscription_pending_age_seconds{subscription="extract"} 0.0' in text
    assert 'rod_subscription_paused{subscription="cibg-big"} 1.0' in text
    assert 'rod_subscription_held_deliveries{subscription="extract"} 2.0' in text
    assert 'rod_deadletters_open{service="audit"} 1.0' in text
    assert 'rod_deadletters_total{service="audit"} 3.0' in text
    assert 'rod_deadletters_open{service="distributor"} 0.0' in text


def test_before_the_first_overview_only_the_refresh_time_shows() -> None:
    text = scrape(None)
    assert "rod_overview_last_refresh_timestamp_seconds 0.0" in text
    assert "rod_consumer_lag_messages{" not in text


def test_http_feed_consumers_unacknowledged_and_how_long_the_oldest_waits() -> None:
    text = scrape(OVERVIEW)
    cibg = 'consumer="cibg-prod",subscription="cibg-big"'
    assert f"rod_feed_unacknowledged_messages{{{cibg}}} 12.0" in text
    assert f"rod_feed_oldest_unacknowledged_age_seconds{{{cibg}}} 2400.0" in text
    assert f"rod_feed_last_fetch_timestamp_seconds{{{cibg}}} 1.7960328e+09" in text
    mijn = 'consumer="mijn",subscription="mijnoverheid"'
    assert f"rod_feed_oldest_unacknowledged_age_seconds{{{mijn}}} 0.0" in text
    assert f"rod_feed_last_fetch_timestamp_seconds{{{mijn}}} 0.0" in text
