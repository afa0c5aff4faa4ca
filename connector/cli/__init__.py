"""The ``tds`` command-line interface."""
