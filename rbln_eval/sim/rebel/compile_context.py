"""Simulated `rebel.compile_context`."""

from rbln_eval.sim.compiler import CompileContext

__all__ = ["CompileContext"]
