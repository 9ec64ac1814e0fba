"""Hypothesis settings shared by the reader property tests: the same examples every run, so they cannot flake."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

REPEATABLE = settings(
    max_examples=60,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
