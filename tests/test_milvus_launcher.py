"""MilvusServer without starting Milvus: a taken port is refused up front; settings reach milvus.yaml."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from devstack.milvus import COMPONENT_PORTS, ETCD_PEER_PORT, METRICS_PORT, MilvusServer
from devstack.process import StartupError


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


@pytest.mark.parametrize("auto_compaction", [True, False])
def test_auto_compaction_setting_reaches_milvus_yaml(tmp_path: Path, auto_compaction: bool) -> None:
    server = MilvusServer(tmp_path / "data", port=19999, auto_compaction=auto_compaction)
    server._ports = dict.fromkeys((*COMPONENT_PORTS, ETCD_PEER_PORT, METRICS_PORT), 20000)
    server._prepare()  # writes the config only; nothing starts

    config = yaml.safe_load((tmp_path / "data" / "configs" / "milvus.yaml").read_text())
    assert config["dataCoord"]["compaction"]["enableAutoCompaction"] is auto_compaction
    assert config["dataCoord"]["enableCompaction"] is True  # settle()'s manual compaction still runs
