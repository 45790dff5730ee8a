"""Tests of the rebel SDK simulator (rbln_eval.sim)."""
