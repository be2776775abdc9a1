"""Lowering: fixed-shape verify graphs over static KV caches (``hfspec.compile``)."""

from hfspec.lowering.plan import BACKENDS, CompiledPlan, compile, export_verify

__all__ = ["BACKENDS", "CompiledPlan", "compile", "export_verify"]
