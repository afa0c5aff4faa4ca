"""The Dataspace Protocol 2025-1 HTTPS binding, beside the gRPC services (DESIGN §10).

Off unless ``[dsp] listen`` is configured. It serves the same catalog, negotiation state
machine, stores, policies and audit log as gRPC; see docs/dsp.md for what a connector of
another make must present and which endpoints are built.
"""

from connector.dsp.server import DspBinding, tls_context

__all__ = ["DspBinding", "tls_context"]
