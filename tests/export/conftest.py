"""Fixtures for tests/export; helpers live in export_support.py (a unique module name, importable from any test)."""

from deploy_support import *  # noqa: F401,F403 - `deployed`: one session fixture for every module
from export_support import *  # noqa: F401,F403 - pytest collects the fixtures from this namespace
