"""Keeping secrets out of messages: one function every adapter uses."""

from __future__ import annotations

__all__ = ["REDACTED", "redact"]

REDACTED = "***"
"""What a secret is replaced with."""


def redact(text: str, *secrets: str) -> str:
    """``text`` with every occurrence of each non-empty secret replaced by :data:`REDACTED`.

    Longer secrets go first, so a secret that contains another is masked whole.
    """
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text
