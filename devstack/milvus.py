"""Run a real Milvus server locally: standalone v2.3.5 with embedded etcd from the PyPI `milvus` package.

`MilvusServer(data_dir).start()` prepares DIR the way the package's `milvus-server --data DIR` does,
with the package's own code (binaries unpacked into DIR/bin, ~250 MB, a few seconds the first time;
DIR/configs/milvus.yaml rendered from its template), then runs `DIR/bin/milvus run standalone` itself.
It does not run the `milvus-server` wrapper process: the wrapper probes each port by binding it without
SO_REUSEADDR and silently moves to the next one when the probe fails, which it does for a minute after
a stop while the old connections sit in TIME_WAIT, so a restart would come back on another client port
(and with a stale etcd session pointing at a moved component port, Milvus crashed); and on Ctrl-C it
SIGKILLs Milvus after 1 s (SIGTERM to it orphans Milvus). Here every port is fixed for the life of the
MilvusServer, Milvus is the managed process itself, and `stop` is SIGINT, then SIGKILL after the grace.

Data (etcd metadata, rocksmq log, segments) lives under DIR/data and survives restarts; acknowledged
writes need no flush to survive a stop or a SIGKILL (tests/test_reliability_stack.py, `make chaos`):
until the data node writes them into segments (`dataNode.segment.syncPeriod` 600 s, or 16 MB of a
segment) they are in the rocksmq log (rocksdb, DIR/data/rocksmq), which a restart replays. What that
covers is the Milvus process dying; a machine crash or power loss is not tested and not claimed
(rocksdb appends its write-ahead log without an fsync per write unless told to).

Ready means client calls work, reads of every loaded collection included: ~9 s on a new directory,
~18 s for a restart (see `session_ttl_s`). If the Python process dies
without calling `stop`, Milvus keeps running (it has its own session): stop it by pid (DIR/logs).

Settings the template lacks go in as environment variables, which Milvus maps onto its config keys:
ETCD_CONFIG_PATH (the embedded etcd's listeners) and QUERYNODE_GRACEFULSTOPTIMEOUT (on stop the query
node otherwise waits 30 s+ to hand its data to other nodes, which a standalone does not have).

Addresses: the client port (`port`, free if 0), the component, metrics and etcd ports (free) are chosen
per server, so several servers run side by side; etcd listens on 127.0.0.1 only and every component
advertises 127.0.0.1. NOT LOOPBACK-ONLY: Milvus 2.3.5 opens its gRPC servers with
`net.Listen("tcp", ":port")` and its metrics/health HTTP server on `:$METRICS_PORT`, so the client,
component and metrics ports listen on ALL interfaces, and no setting changes that (`<role>.ip` is only
the advertised address; milvus-io/milvus#26538). This is a development stand-in: keep the machine on a
private network or firewall those ports, and point `Settings.milvus.uri` at a properly deployed Milvus
anywhere else.

CLI (foreground until Ctrl-C): `python -m devstack.milvus --data DIR [--port 19530]`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from milvus import MilvusServerConfig
from milvus import _initialize_data_files as unpack_binaries  # the wrapper's unpacker; milvus is pinned
from pymilvus import MilvusClient
from pymilvus.client.types import LoadState

from devstack.process import ManagedProcess, StartupError, port_open

log = logging.getLogger(__name__)
# The readiness probe's failures while Milvus starts are expected; pymilvus would log each with a traceback.
logging.getLogger("pymilvus").setLevel(logging.CRITICAL)

HOST = "127.0.0.1"
# The template's port settings besides the client port (`proxy_port`).
COMPONENT_PORTS = (
    "proxy_internal_port",
    "root_coord_port",
    "query_coord_port",
    "query_node_port",
    "index_coord_port",
    "index_node_port",
    "data_coord_port",
    "data_node_port",
    "etcd_port",
)
# Ports that are not template settings: the etcd peer listener and the metrics/health HTTP server.
ETCD_PEER_PORT = "etcd_peer_port"
METRICS_PORT = "metrics_port"
# Sections of milvus.yaml whose `ip` is the address the component advertises.
ROLES = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")
ETCD_CONFIG = "recstack-etcd.yaml"


@dataclass
class MilvusServer:
    """Milvus standalone serving `uri` from `data_dir`; a context manager.

    `port` 0 picks a free port at the first start; it and every other port stay the same for restarts
    (clients keep their URI). A port that is taken at start raises StartupError.
    `session_ttl_s` is Milvus's etcd session lease (`common.session.ttl`, 30 s upstream): Milvus 2.3.5
    does not revoke its sessions on stop, and after a restart reads wait until the old ones expire
    (measured restart: ~50 s at 30 s, ~18 s at 10 s); a server stalled longer than this loses its
    sessions and exits.
    `time_tick_ms` sets `proxy.timeTickInterval` (None keeps Milvus's 200 ms): Strong reads, and
    Session reads right after a write, wait for the next tick, so a shorter tick makes them faster at
    the cost of idle CPU (10 ms: ~14% of a core, shared PLAYBOOK).
    `auto_compaction` False turns off Milvus's background compaction (`dataCoord.compaction.
    enableAutoCompaction`); manual compactions still run. Benchmarks turn it off, so that no merge and
    re-index (minutes of both cores for a 1M-row catalog) starts beside their measurements.
    """

    data_dir: Path
    port: int = 0
    time_tick_ms: int | None = None
    session_ttl_s: int = 10
    auto_compaction: bool = True
    startup_timeout_s: float = 120.0
    stop_grace_s: float = 15.0
    _process: ManagedProcess | None = field(default=None, init=False, repr=False)
    _ports: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    @property
    def uri(self) -> str:
        """What Settings.milvus.uri (and pymilvus) take, once started."""
        if not self.port:
            raise RuntimeError("milvus was never started")
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("milvus was never started")
        return self._process.pid

    @property
    def binary(self) -> Path:
        return self.data_dir / "bin" / "milvus"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "logs" / "milvus.log"

    def start(self) -> MilvusServer:
        """Prepare DIR, start Milvus and wait until it is ready (StartupError with the log tail)."""
        self.data_dir = Path(self.data_dir).resolve()
        if not self._ports:
            names = (*COMPONENT_PORTS, ETCD_PEER_PORT, METRICS_PORT)
            *chosen, spare = _free_ports(len(names) + 1)
            self.port = self.port or spare
            self._ports = dict(zip(names, chosen, strict=True))
        if port_open(HOST, self.port):
            raise StartupError(f"milvus: port {self.port} is already in use (another Milvus?); use port=0")
        self._prepare()
        self._process = ManagedProcess(
            name="milvus",
            argv=[str(self.binary), "run", "standalone"],
            log_path=self.log_path,
            ready=self.ready,
            env=self._environment(),
            cwd=self.data_dir,
            startup_timeout_s=self.startup_timeout_s,
            stop_signal=signal.SIGINT,
            stop_grace_s=self.stop_grace_s,
        )
        self._process.start()
        return self

    def _prepare(self) -> None:
        """Unpack the binaries (once) and write milvus.yaml and the etcd config with this server's ports."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        unpack_binaries(str(self.data_dir))
        config = MilvusServerConfig(data_dir=str(self.data_dir))
        config.resolve_storage()  # data, logs and etcd directories under DIR
        config.set("proxy_port", self.port)
        for name in COMPONENT_PORTS:
            config.set(name, self._ports[name])
        for role in ROLES:
            config.set(f"{role}.ip", HOST)
        config.set("common.session.ttl", self.session_ttl_s)
        config.set("dataCoord.compaction.enableAutoCompaction", "true" if self.auto_compaction else "false")
        if self.time_tick_ms is not None:
            config.set("proxy.timeTickInterval", self.time_tick_ms)
        config.write_config()
        (self.data_dir / ETCD_CONFIG).write_text(_etcd_config(self._ports["etcd_port"], self._ports[ETCD_PEER_PORT]))

    def _environment(self) -> dict[str, str]:
        bin_dir = str(self.binary.parent)
        return {
            **os.environ,
            "DEPLOY_MODE": "STANDALONE",
            "METRICS_PORT": str(self._ports[METRICS_PORT]),
            "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [bin_dir, os.environ.get("LD_LIBRARY_PATH")])),
            "ETCD_CONFIG_PATH": str(self.data_dir / ETCD_CONFIG),
            "QUERYNODE_GRACEFULSTOPTIMEOUT": "1",
        }

    def ready(self) -> bool:
        """True when the server answers and every collection it has loaded serves reads.

        Right after a restart the server answers before reads work: they wait until the previous
        run's etcd sessions expire (`session_ttl_s`) and the query nodes catch up.
        """
        if not port_open(HOST, self.port):
            return False
        try:
            client = MilvusClient(self.uri, timeout=1.0, dedicated=True)
        except Exception:  # pymilvus raises MilvusException or grpc errors while the server starts
            return False
        try:
            for name in client.list_collections(timeout=1.0):
                if client.get_load_state(name, timeout=1.0)["state"] != LoadState.NotLoad:
                    client.query(name, filter="", output_fields=["count(*)"], timeout=1.0)
            return True
        except Exception:
            return False
        finally:
            client.close()

    def running(self) -> bool:
        return self._process is not None and self._process.running()

    def stop(self) -> None:
        """SIGINT (Milvus shuts down in ~1.5 s), SIGKILL after the grace period; safe to call twice."""
        if self._process is not None:
            self._process.stop()

    def __enter__(self) -> MilvusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _etcd_config(client_port: int, peer_port: int) -> str:
    """The embedded etcd's own config file: loopback listeners on the given ports."""
    client, peer = f"http://{HOST}:{client_port}", f"http://{HOST}:{peer_port}"
    return (
        "name: default\n"
        f"listen-client-urls: {client}\n"
        f"advertise-client-urls: {client}\n"
        f"listen-peer-urls: {peer}\n"
        f"initial-advertise-peer-urls: {peer}\n"
        f"initial-cluster: default={peer}\n"
    )


def _free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on HOST right now (all held open while choosing)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run Milvus standalone 2.3.5 (PyPI `milvus`) in the foreground.")
    parser.add_argument("--data", type=Path, required=True, help="data directory (binaries, config, data, logs)")
    parser.add_argument("--port", type=int, default=19530, help="client port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--time-tick-ms", type=int, help="proxy.timeTickInterval (default: Milvus's 200 ms)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Stop cleanly through `finally` below, also when started with SIGINT ignored (a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = MilvusServer(args.data, port=args.port, time_tick_ms=args.time_tick_ms)
    started = time.monotonic()
    try:
        server.start()
        log.info(
            "milvus ready in %.1fs at %s (pid %d, log %s)",
            time.monotonic() - started,
            server.uri,
            server.pid,
            server.log_path,
        )
        while server.running():
            time.sleep(0.5)
        log.error("milvus exited; see %s", server.log_path)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
