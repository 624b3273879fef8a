"""Fixtures for tests/data; helpers live in data_support.py (a unique module name, importable from any test)."""

from data_support import *  # noqa: F401,F403 - pytest collects the fixtures from this namespace
