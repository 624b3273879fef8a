"""Fixtures for tests/explain; helpers live in explain_support.py (a unique module name, importable from any test)."""

from explain_support import *  # noqa: F401,F403 - pytest collects the fixtures from this namespace
