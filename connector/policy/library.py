"""Policy modules: the city library, providers' own modules, and the revision they make.

A *policy set* is the library's modules plus any provider modules, validated together;
its revision is the SHA-256 over every module's name and source, so a decision names
exactly the policies that made it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import regopy

from connector.errors import ConfigError, InvalidRequest

__all__ = [
    "ENTRYPOINT",
    "PROVIDER_PACKAGE",
    "PolicySet",
    "default_policy_dir",
    "load_library",
    "validate_provider_module",
]

ENTRYPOINT = "tds/main/decision"
PROVIDER_PACKAGE = "tds.provider"
MAX_MODULE_BYTES = 64 * 1024

# Builtins outside the subset both engines agree on, or that would make decisions depend
# on anything but the input: the network, the wall clock, randomness, the runtime.
_FORBIDDEN = re.compile(
    r"\b(http\.send|net\.cidr_\w+|net\.lookup_ip_addr|time\.now_ns|rand\.intn|"
    r"uuid\.rfc4122|opa\.runtime|trace)\s*\("
)
_PACKAGE = re.compile(r"^\s*package\s+([A-Za-z_][\w.]*)\s*$", re.MULTILINE)
_TEST_RULE = re.compile(r"^(test_\w+)\s+if\b", re.MULTILINE)


def default_policy_dir() -> Path:
    """``policies/`` of the tds checkout this package runs from."""
    return Path(__file__).resolve().parents[2] / "policies"


def package_of(source: str, name: str) -> str:
    """The single package a module declares."""
    found = _PACKAGE.findall(source)
    if len(found) != 1:
        raise InvalidRequest(f"{name}: a module declares exactly one package")
    return str(found[0])


def check_builtins(source: str, name: str) -> None:
    """Refuse builtins outside the agreed subset."""
    match = _FORBIDDEN.search(source)
    if match:
        raise InvalidRequest(
            f"{name}: {match.group(1)} is not allowed in tds policies "
            "(decisions depend only on their input)"
        )


def _compile(modules: dict[str, str], entrypoints: Iterable[str]) -> None:
    rego = regopy.Interpreter()
    try:
        for name, source in modules.items():
            rego.add_module(name, source)
        bundle = rego.build(None, list(entrypoints))
    except regopy.RegoError as exc:
        raise InvalidRequest(f"policy does not compile: {_first_error(str(exc))}") from None
    if not bundle.ok():
        raise InvalidRequest("policy does not compile")


def _first_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " ".join(lines[:3])[:300]


@dataclass(frozen=True)
class PolicySet:
    """Validated Rego modules by name, and their revision."""

    modules: dict[str, str] = field(default_factory=dict)

    @cached_property  # asked for on every decision; the modules never change
    def revision(self) -> str:
        """SHA-256 (hex) over every module's name and source, in name order."""
        h = hashlib.sha256()
        for name in sorted(self.modules):
            h.update(name.encode() + b"\0" + self.modules[name].encode() + b"\0")
        return h.hexdigest()

    def provider_source(self, module_id: str) -> str | None:
        """The source of provider module ``module_id`` in this set, or ``None``."""
        return self.modules.get(f"provider/{module_id}.rego")

    def with_provider_module(self, module_id: str, source: str) -> PolicySet:
        """This set plus a validated provider module (replacing one of the same id)."""
        validate_provider_module(module_id, source, self)
        modules = dict(self.modules)
        modules[f"provider/{module_id}.rego"] = source
        return PolicySet(modules)

    def with_changed_modules(
        self, library: PolicySet, added: Mapping[str, str], removed: Iterable[str] = ()
    ) -> PolicySet:
        """This set with provider modules ``added`` (id → source) and ``removed`` (ids).

        Each added module is validated against ``library`` alone: a provider module lives in
        its own package and only adds denials, so it compiles the same beside any others;
        the cost of a change is one module's, not the whole set's.
        """
        modules = dict(self.modules)
        for module_id in removed:
            modules.pop(f"provider/{module_id}.rego", None)
        for module_id, source in added.items():
            validate_provider_module(module_id, source, library)
            modules[f"provider/{module_id}.rego"] = source
        return PolicySet(modules)


def load_library(directory: Path | None = None) -> PolicySet:
    """Load ``tds/*.rego`` (tests excluded) from a policy directory and compile it."""
    root = (directory or default_policy_dir()) / "tds"
    files = sorted(p for p in root.glob("*.rego") if not p.name.endswith("_test.rego"))
    if not files:
        raise ConfigError(f"no policy modules in {root}: set policy.policy_dir")
    modules = {}
    for path in files:
        source = path.read_text()
        check_builtins(source, path.name)
        modules[f"tds/{path.name}"] = source
    try:
        _compile(modules, [ENTRYPOINT])
    except InvalidRequest as exc:
        raise ConfigError(f"the policy library in {root} is broken: {exc}") from None
    return PolicySet(modules)


def validate_provider_module(module_id: str, source: str, library: PolicySet) -> None:
    """A provider's module must parse, live in its own package and define ``deny``.

    Its only effect is through ``data.tds.provider.<id>.deny``, which the library adds to
    its own denials: it can add denials, never lift one.
    """
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", module_id):
        raise InvalidRequest("provider module id: lower-case letters, digits and '_' only")
    if len(source.encode()) > MAX_MODULE_BYTES:
        raise InvalidRequest(f"provider module is larger than {MAX_MODULE_BYTES} bytes")
    name = f"provider/{module_id}.rego"
    package = package_of(source, name)
    if package != f"{PROVIDER_PACKAGE}.{module_id}":
        raise InvalidRequest(
            f"{name}: declare 'package {PROVIDER_PACKAGE}.{module_id}' (got {package!r}); a "
            "provider module cannot add to or override the library's packages"
        )
    check_builtins(source, name)
    if not re.search(r"^\s*deny\s+contains\b", source, re.MULTILINE):
        raise InvalidRequest(f"{name}: define 'deny contains reason if ...' (the entrypoint)")
    modules = dict(library.modules)
    modules[name] = source
    _compile(modules, [ENTRYPOINT, f"tds/provider/{module_id}/deny"])


def test_rules(source: str) -> list[str]:
    """Names of the ``test_*`` rules a test module defines."""
    return sorted(set(_TEST_RULE.findall(source)))
