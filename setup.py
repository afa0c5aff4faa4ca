"""The one thing pyproject.toml cannot say without a warning: the C extension.

connector/_speedups.c is the delivery's per-value work (OpenSSL's HMAC for the hash mask,
the CSV lines). It is optional: without a C compiler or OpenSSL's headers the install goes
on without it, and the same bytes come from the Python path, more slowly (`tds --version`
says which is in use; see connector/speedups.py).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "connector._speedups",
            sources=["connector/_speedups.c"],
            libraries=["crypto"],
            optional=True,
        )
    ]
)
