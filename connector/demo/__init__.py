"""A whole data space on one machine, for ``tds demo`` and the tests."""

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
"""Where the flood early warning scenario looks for NATS JetStream unless told (kept here,
light to import, for the CLI's ``--nats`` default)."""
