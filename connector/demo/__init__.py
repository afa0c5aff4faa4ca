"""A whole data space on one machine, for ``tds demo`` and the tests."""
