"""``tds console``: a local web console that is a client of the connector's admin API.

The server (``app``) talks to its own connector over gRPC with the administrator
certificate, exactly as the CLI does (``backend``); it never opens the database. The
auditor's page hands the browser a signed checkpoint, an entry and its inclusion proof,
and the browser checks them itself with WebCrypto (``static/verify.js``).
"""

from connector.console.app import Console, build_app

__all__ = ["Console", "build_app"]
