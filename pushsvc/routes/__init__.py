"""Thin HTTP handlers; the logic they call lives in modules that tests reach directly."""
