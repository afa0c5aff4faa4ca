"""Issue 18 finding 11: product sources are read only from the data directory and the
configured ``transfer.source_roots`` — not through an absolute path, ``..`` or a symlink
that leads elsewhere, whether at publish or later, when a symlink is swapped."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from connector._proto.tds.v1 import admin_pb2, transfer_pb2, transfer_pb2_grpc
from connector.demo.space import LocalSpace
from connector.errors import NotFound
from connector.identity.names import Role
from tests.support.exchange import admin, agree, offer, publish


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSpace]:
    """gov's data directory holds ``inside.bin`` and ``sub/file.bin``; ``outside``, beyond
    every root, holds a secret of the same size."""
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.bin").write_bytes(b"S" * 4096)
    (outside / "sub").mkdir()
    (outside / "sub" / "file.bin").write_bytes(b"S" * 4096)
    parts = [("gov", Role.GOVERNMENT), ("a", Role.ENTERPRISE)]
    with LocalSpace.create(tmp_path_factory.mktemp("confined"), parts) as sp:
        sp.start_registry()
        sp.start_connector("gov")
        sp.start_connector("a")
        data = sp.configs["gov"].data_dir
        (data / "inside.bin").write_bytes(b"I" * 4096)
        (data / "sub").mkdir()
        (data / "sub" / "file.bin").write_bytes(b"I" * 4096)
        sp.outside = outside  # type: ignore[attr-defined]
        yield sp


def _product(pid: str, path: str) -> dict[str, object]:
    return {
        "id": pid,
        "title": pid,
        "grade": "general",
        "source": {"kind": "file", "path": path},
        "offers": [offer()],
    }


def _publish_in_data_dir(space: LocalSpace, description: dict[str, object]) -> None:
    """Published with its path as given: relative to the data directory, resolved at
    each transfer (``tds product add`` resolves it once, against the file's directory)."""
    admin(space, "gov").AddProduct(
        admin_pb2.AddProductRequest(description=json.dumps(description), format="json"),
        timeout=10,
    )


def _gov_as_a(space: LocalSpace) -> transfer_pb2_grpc.TransferServiceStub:
    return transfer_pb2_grpc.TransferServiceStub(space.nodes["a"]._member_channel("gov"))


def test_a_source_outside_the_roots_is_refused_at_publish(space: LocalSpace) -> None:
    data = space.configs["gov"].data_dir
    outside: Path = space.outside  # type: ignore[attr-defined]
    (data / "link.bin").symlink_to(outside / "secret.bin")
    escapes = {
        "absolute": str(outside / "secret.bin"),
        "dotdot": os.path.relpath(outside / "secret.bin", data),
        "symlink": "link.bin",
    }
    for name, path in escapes.items():
        with pytest.raises(grpc.RpcError) as err:
            publish(space, "gov", _product(f"escape-{name}", path), data)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, err.value.details())
        assert "outside the data directory and transfer.source_roots" in (err.value.details() or "")
        catalog = space.nodes["gov"].catalog
        assert catalog is not None
        with pytest.raises(NotFound):  # nothing was stored
            catalog.own(f"escape-{name}")


def test_a_symlink_swapped_after_publish_is_not_followed(space: LocalSpace) -> None:
    data = space.configs["gov"].data_dir
    outside: Path = space.outside  # type: ignore[attr-defined]
    gov = _gov_as_a(space)
    # A symlink inside the data directory to a file inside it is a fine source...
    (data / "swap.bin").symlink_to(data / "inside.bin")
    _publish_in_data_dir(space, _product("swapped", "swap.bin"))
    agreement = agree(space, "gov", "a", "swapped")
    # ... until it is pointed elsewhere.
    (data / "swap.bin").unlink()
    (data / "swap.bin").symlink_to(outside / "secret.bin")
    start = transfer_pb2.StartTransferRequest(agreement_id=agreement)
    with pytest.raises(grpc.RpcError) as err:
        gov.StartTransfer(start, timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value.details()
    assert "outside the data directory" in (err.value.details() or "")

    # A directory on the path swapped for a symlink after the transfer started: the file
    # there has the same size and time, and it is still not read.
    _publish_in_data_dir(space, _product("nested", "sub/file.bin"))
    agreement = agree(space, "gov", "a", "nested")
    m = gov.StartTransfer(transfer_pb2.StartTransferRequest(agreement_id=agreement), timeout=10)
    st = (data / "sub" / "file.bin").stat()
    os.utime(outside / "sub" / "file.bin", ns=(st.st_atime_ns, st.st_mtime_ns))
    shutil.rmtree(data / "sub")
    (data / "sub").symlink_to(outside / "sub")
    with pytest.raises(grpc.RpcError) as err:
        list(gov.Pull(transfer_pb2.PullRequest(transfer_id=m.transfer_id), timeout=10))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value.details()
    assert "outside the data directory" in (err.value.details() or "")
