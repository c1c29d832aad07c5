"""Helpers shared by the Milvus tests: rows for both collections, a ready-made Lite catalog to copy,
and /proc readers for what a server process listens on and which processes are left.

A session-wide real server for other suites is one fixture (conftest):
    with MilvusServer(tmp_path_factory.mktemp("milvus")) as server: yield server
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from server.config import MilvusSettings
from server.milvus import MilvusStore

NEWS_DIM = 8
PASSAGE_DIM = 4


def news_row(row_id: str, vector: np.ndarray, **fields: Any) -> dict[str, Any]:
    """A complete news row; `fields` override the defaults."""
    return {
        "id": row_id,
        "vector": np.asarray(vector, dtype=np.float32),
        "title": f"title of {row_id}",
        "abstract": "",
        "category": "news",
        "subcategory": "",
        "published": 0,
        "popularity": 0.0,
        **fields,
    }


def passage_row(row_id: str, vector: np.ndarray, **fields: Any) -> dict[str, Any]:
    """A complete passage row; `fields` override the defaults."""
    return {
        "id": row_id,
        "vector": np.asarray(vector, dtype=np.float32),
        "text": f"text of {row_id}",
        "title": "",
        "category": "",
        "doc_id": row_id,
        "published": 0,
        **fields,
    }


def lite_settings(path: Path, **overrides: Any) -> MilvusSettings:
    """Settings for a Milvus Lite catalog at `path` (a directory ending in .db)."""
    return MilvusSettings(uri=str(path), **overrides)


def make_lite_catalog(path: Path) -> Path:
    """Create both collections in a Lite catalog at `path` and release it (Lite index setup takes ~1 s)."""

    async def create() -> None:
        async with MilvusStore(lite_settings(path)) as store:
            await store.ensure_collections(NEWS_DIM, PASSAGE_DIM)

    asyncio.run(create())
    return path


def copy_lite_catalog(template: Path, target: Path) -> Path:
    """A fresh copy of a released Lite catalog (milliseconds, instead of creating collections again)."""
    shutil.copytree(template, target)
    return target


def listening_addresses(pid: int) -> set[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]]:
    """(address, port) of every TCP socket `pid` listens on, read from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    listening = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                listening.add(_address(local))
    return listening


def _address(hex_address: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """/proc/net/tcp{,6} 'ADDR:PORT' (address bytes in host order per 32-bit word) to (address, port)."""
    address, port = hex_address.split(":")
    raw = bytes.fromhex(address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words), int(port, 16)


def processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains `text`."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if text.encode() in cmdline.read_bytes() and not _zombie(cmdline.parent):
                pids.append(int(cmdline.parent.name))
    return pids


def _zombie(proc: Path) -> bool:
    with contextlib.suppress(OSError):
        return (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    return True
