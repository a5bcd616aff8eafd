# The program, integration and member fixtures are suite-wide: see tests/conftest.py.
