"""Fixtures shared by the recipe tests: the small quickstart run lives in tests/conftest.py (the deploy tests
serve and export it too)."""
