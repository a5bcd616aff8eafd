"""Settings split by environment: base (shared), dev (demo), test, production.

Values come from the environment through django-environ; see the README's
configuration table for every variable.
"""
