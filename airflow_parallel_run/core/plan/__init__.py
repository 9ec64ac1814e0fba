"""The plan: a job's inputs numbered into mini-batches (`plan`, `plan_inputs`), the manifests that carry a
plan from `DatasetPartitionSensor` to the operator, and the completeness rules the sensor polls with."""

from __future__ import annotations

from .planner import Plan, iter_plan, plan, plan_inputs

__all__ = ["Plan", "iter_plan", "plan", "plan_inputs"]
