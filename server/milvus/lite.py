"""Milvus Lite's lifecycle: a URI that is a path ending in `.db` (pymilvus's rule) opens Lite in this
process, one in-process server per file, which must be released for the file to be reopened."""

from __future__ import annotations

from pathlib import Path


def is_lite(uri: str) -> bool:
    """True when `uri` names a Milvus Lite file rather than a server."""
    return uri.endswith(".db")


def prepare(uri: str) -> None:
    """Create the Lite file's parent directory (Lite creates the file itself); nothing for a server."""
    if is_lite(uri):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)


def release(uri: str) -> None:
    """Stop Lite's in-process server for `uri`, so the file is released; nothing for a server."""
    if is_lite(uri):
        from milvus_lite.server_manager import server_manager_instance  # only installed where Lite is used

        server_manager_instance.release_server(uri)
