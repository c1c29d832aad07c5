"""Run the real Triton Inference Server locally: the `tritonserver` binary bundled in nvidia-pytriton.

The bundle carries only the python backend, so the local model repository uses the `cpu` profile
(python backend running onnxruntime; see export/triton_repo.py). The environment follows the shared
PLAYBOOK: the python-backend stub is installed beside the backend (its RPATH is relative to the wheel
layout), the venv's bin/ leads PATH (the stub's Python finds the venv's packages through it), and the
interpreter's LIBDIR leads LD_LIBRARY_PATH (otherwise the stub loads the system libpython).

`TritonServer` listens on free loopback ports, loads the given models explicitly (so `load` can swap in
a new version while the old one keeps serving), is ready when the server and every model are, and
stops with SIGTERM. On stop it also ends python-backend stubs that outlived the server and removes the
`/dev/shm` regions the server had mapped (both leak when the server is killed).

CLI (foreground until Ctrl-C): `python -m devstack.triton --repo DIR [--models NAME ...]`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import sys
import sysconfig
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import tritonclient.grpc as grpcclient

from contract import layout
from devstack.process import ManagedProcess, StartupError, child_pids, free_port, pid_alive

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "triton_python_backend_shm_region_"
STUB_NAME = "triton_python_backend_stub"
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Bundle:
    """Paths inside the nvidia-pytriton wheel."""

    root: Path  # .../site-packages/pytriton/tritonserver

    @classmethod
    def locate(cls) -> Bundle:
        spec = importlib.util.find_spec("pytriton")
        if spec is None or not spec.submodule_search_locations:
            raise StartupError("tritonserver: nvidia-pytriton is not installed (pip install '.[local]')")
        return cls(Path(spec.submodule_search_locations[0]) / "tritonserver")

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def backends(self) -> Path:
        return self.root / "backends"

    def install_stub(self) -> None:
        """Put this interpreter's python-backend stub beside the backend library, once."""
        target = self.backends / "python" / STUB_NAME
        if target.exists():
            return
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        source = self.root / "python_backend_stubs" / version / STUB_NAME
        if not source.exists():
            raise StartupError(f"tritonserver: no python-backend stub for Python {version} at {source}")
        partial = target.with_name(f"{STUB_NAME}.{os.getpid()}.partial")
        shutil.copy2(source, partial)
        os.replace(partial, target)  # atomic: safe when several processes install it at once


def server_environment() -> dict[str, str]:
    """os.environ plus the PATH and LD_LIBRARY_PATH the python-backend stub needs."""
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(filter(None, [venv_bin, env.get("PATH")]))
    libdir = sysconfig.get_config_var("LIBDIR")
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [libdir, env.get("LD_LIBRARY_PATH")]))
    return env


@dataclass
class TritonServer:
    """The bundled tritonserver serving `models` from `repo` on loopback; a context manager.

    Ports left as None are picked free at start. `grpc_url` is `host:port` (what tritonclient.grpc and
    Settings.triton.url take); `http_url` and `metrics_url` are full http:// URLs.
    """

    repo: Path
    models: Sequence[str]
    log_path: Path
    grpc_port: int | None = None
    http_port: int | None = None
    metrics_port: int | None = None
    startup_timeout_s: float = 60.0
    exit_timeout_s: int = 5
    verbose: bool = False
    _process: ManagedProcess | None = field(default=None, init=False, repr=False)
    _client: grpcclient.InferenceServerClient | None = field(default=None, init=False, repr=False)
    _shm_regions: set[Path] = field(default_factory=set, init=False, repr=False)
    _stub_pids: set[int] = field(default_factory=set, init=False, repr=False)

    @property
    def grpc_url(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{HOST}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("tritonserver was never started")
        return self._process.pid

    def start(self) -> TritonServer:
        """Start the server and wait until it and every model are ready (StartupError with the log tail)."""
        bundle = Bundle.locate()
        bundle.install_stub()
        self.grpc_port = self.grpc_port or free_port(HOST)
        self.http_port = self.http_port or free_port(HOST)
        self.metrics_port = self.metrics_port or free_port(HOST)
        self._client = grpcclient.InferenceServerClient(self.grpc_url)
        self._process = ManagedProcess(
            name="tritonserver",
            argv=self._argv(bundle),
            log_path=self.log_path,
            ready=self.ready,
            env=server_environment(),
            startup_timeout_s=self.startup_timeout_s,
            stop_grace_s=self.exit_timeout_s + 10.0,
        )
        try:
            self._process.start()
        except BaseException:
            self._release_leftovers()
            raise
        self._track_children()
        return self

    def _argv(self, bundle: Bundle) -> list[str]:
        return [
            str(bundle.binary),
            f"--model-repository={Path(self.repo).resolve()}",
            f"--backend-directory={bundle.backends}",
            "--model-control-mode=explicit",
            *(f"--load-model={name}" for name in self.models),
            f"--grpc-address={HOST}",
            f"--grpc-port={self.grpc_port}",
            f"--http-address={HOST}",
            f"--http-port={self.http_port}",
            f"--metrics-address={HOST}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            f"--log-verbose={int(self.verbose)}",
            f"--exit-timeout-secs={self.exit_timeout_s}",
        ]

    def ready(self) -> bool:
        """True when the server answers and every model in `models` is ready."""
        if self._client is None:
            return False
        try:
            return self._client.is_server_ready(client_timeout=1.0) and all(
                self._client.is_model_ready(name, client_timeout=1.0) for name in self.models
            )
        except grpcclient.InferenceServerException:
            return False

    def load(self, model: str, timeout_s: float = 60.0) -> None:
        """(Re)load `model` from the repository: the newest version directory replaces the served one.

        Triton keeps serving the old version until the new one is ready; raises RuntimeError with the
        server's message (e.g. the model's initialize error) when the load fails.
        """
        if self._client is None:
            raise RuntimeError("tritonserver is not running")
        try:
            self._client.load_model(model, client_timeout=timeout_s)
        except grpcclient.InferenceServerException as error:
            raise RuntimeError(f"tritonserver: loading '{model}' failed: {error.message()}") from error
        self._track_children()

    def running(self) -> bool:
        return self._process is not None and self._process.running()

    def stub_pids(self) -> set[int]:
        """Pids of the server's python-backend stub processes right now."""
        if not self.running():
            return set()
        return {pid for pid in child_pids(self.pid) if _program_name(pid) == STUB_NAME}

    def shm_regions(self) -> set[Path]:
        """The python-backend shared-memory regions the server and its stubs have mapped right now."""
        pids = [self.pid, *self.stub_pids()] if self.running() else []
        return {region for pid in pids for region in _mapped_shm_regions(pid)}

    def _track_children(self) -> None:
        self._stub_pids |= self.stub_pids()
        self._shm_regions |= self.shm_regions()

    def stop(self) -> None:
        """SIGTERM the server (SIGKILL after the grace period), then end stray stubs and free shm regions."""
        if self._process is None:
            return
        self._track_children()
        self._process.stop()
        self._release_leftovers()

    def _release_leftovers(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        for pid in self._stub_pids:
            if pid_alive(pid) and _program_name(pid) == STUB_NAME:
                log.warning("tritonserver: killing orphaned python-backend stub %d", pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for region in self._shm_regions:
            if region.exists():
                log.warning("tritonserver: removing leaked shared-memory region %s", region)
                region.unlink(missing_ok=True)
        self._stub_pids.clear()
        self._shm_regions.clear()

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _program_name(pid: int) -> str:
    """Base name of the program `pid` runs ('' when it is gone)."""
    with contextlib.suppress(OSError):
        return Path(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()).name
    return ""


def _mapped_shm_regions(pid: int) -> set[Path]:
    with contextlib.suppress(OSError):
        lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
        paths = {Path(line.split(maxsplit=5)[-1]) for line in lines if f"{SHM_DIR}/{SHM_PREFIX}" in line}
        return {Path(str(p).removesuffix(" (deleted)")) for p in paths}
    return set()


def repository_models(repo: Path) -> list[str]:
    """Names of the models in a repository (directories holding a config.pbtxt)."""
    return sorted(p.parent.name for p in Path(repo).glob("*/config.pbtxt"))


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until Ctrl-C or SIGTERM (exit 0); 1 when the server fails to start or exits by itself."""
    parser = argparse.ArgumentParser(description="Serve a model repository with the bundled tritonserver.")
    parser.add_argument("--repo", type=Path, required=True, help="model repository directory")
    parser.add_argument("--models", nargs="*", help="models to load (default: all in the repository)")
    parser.add_argument("--grpc-port", type=int)
    parser.add_argument("--http-port", type=int)
    parser.add_argument("--metrics-port", type=int)
    parser.add_argument("--log", type=Path, default=layout.LOGS / "tritonserver.log")
    parser.add_argument("--verbose", action="store_true", help="tritonserver --log-verbose=1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    models = args.models or repository_models(args.repo)
    if not models:
        parser.error(f"--repo {args.repo}: no model directories with a config.pbtxt")
    # Stop cleanly through `finally` below. SIGINT explicitly too: a shell starting us in the background
    # without job control leaves SIGINT ignored, and Python then never raises KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = TritonServer(
        args.repo,
        models,
        args.log,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        verbose=args.verbose,
    )
    started = time.monotonic()
    try:
        server.start()
        log.info("tritonserver ready in %.1fs serving %s", time.monotonic() - started, ", ".join(models))
        log.info("grpc %s  http %s  metrics %s  log %s", server.grpc_url, server.http_url, server.metrics_url, args.log)
        while server.running():
            time.sleep(0.5)
        log.error("tritonserver exited by itself; see %s", args.log)
        return 1
    except StartupError as error:
        log.error("%s", error)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
