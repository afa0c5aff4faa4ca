"""tds: a connector for city trusted data spaces.

Every participant runs a connector: mutual TLS with certificates from the data-space CA,
short-lived membership tokens from the operator's registry, and (in later modules) data
products, contracts, Rego policies and a verifiable log.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
