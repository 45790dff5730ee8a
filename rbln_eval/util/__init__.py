"""Helpers every layer may use: atomic writes, hashing, units, interrupts, network faults, constants, text values, logging filters."""
