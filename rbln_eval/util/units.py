"""Human-readable quantities."""

from __future__ import annotations


def human_size(num: int) -> str:
    """``1536`` → ``"1.5 KB"`` (binary multiples)."""
    value = float(num)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{num} B"
