"""MilvusServer without starting Milvus: a taken port is refused up front with a clear error."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from server.stack.milvus import MilvusServer
from server.stack.process import StartupError


def test_a_port_already_in_use_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = MilvusServer(tmp_path / "data", port=port)
        with pytest.raises(StartupError, match=f"port {port} is already in use"):
            server.start()
    assert not server.running()
    assert not (tmp_path / "data" / "bin").exists()
