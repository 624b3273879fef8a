"""``FROM_CONFIG``: an argument left to the model config's value.

For options where None already means something (``max_det=None`` keeps every detection), the
default needs its own name; a magic number such as -1 would read as a count.
"""

from __future__ import annotations


class FromConfig:
    _instance = None

    def __new__(cls):  # one instance, so `is FROM_CONFIG` holds after copies and pickling
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __reduce__(self):
        return (FromConfig, ())

    def __repr__(self) -> str:
        return "FROM_CONFIG"


FROM_CONFIG = FromConfig()
