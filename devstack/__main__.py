"""`python -m devstack {up,down,status}`: run the local stack in the background and stop it again.

`up` starts a supervisor process that owns Triton, Milvus, the LLM server and the gateway, writes
`<state-dir>/state.json` once everything serves, and stops them all (in reverse order, each with its
own clean-stop procedure) when it receives SIGTERM or SIGINT. `up --foreground` runs the supervisor in
this terminal (Ctrl-C stops it). `down` signals the supervisor and waits for it to finish.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from devstack.local import LocalStack, StackConfig, gateway_serving
from devstack.process import pid_alive, tail

console = Console()
STATE = "state.json"


def run_supervisor(config: StackConfig) -> int:
    """Start the stack, publish its state, and hold it until SIGTERM/SIGINT."""
    stopping = False

    def request_stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    state_path = config.state_dir / STATE
    stack = LocalStack(config).start()
    try:
        state = {
            "supervisor_pid": os.getpid(),
            "gateway": stack.gateway_address,
            "metrics": stack.metrics_url,
            "triton": stack.triton.grpc_url,
            "milvus": stack.milvus.uri,
            "llm": stack.llm.url if stack.llm else None,
            "logs": str(config.logs),
        }
        state_path.write_text(json.dumps(state, indent=2) + "\n")
        console.print(f"[green]stack up[/green]: gateway {stack.gateway_address} (state in {state_path})")
        while not stopping:
            time.sleep(0.2)
    finally:
        console.print("stopping the stack")
        stack.stop()
        state_path.unlink(missing_ok=True)
    return 0


def up_detached(config: StackConfig, args: argparse.Namespace, timeout_s: float = 600.0) -> int:
    """Start the supervisor in its own session and wait until its state file says the stack serves."""
    state_path = config.state_dir / STATE
    if state_path.exists() and pid_alive(json.loads(state_path.read_text())["supervisor_pid"]):
        console.print(f"[yellow]the stack is already up[/yellow] ({state_path}); `make down` stops it")
        return 0
    state_path.unlink(missing_ok=True)
    config.logs.mkdir(parents=True, exist_ok=True)
    log_path = config.logs / "supervisor.log"
    argv = [sys.executable, "-m", "devstack", "up", "--foreground", *forwarded(args)]
    with open(log_path, "ab") as log:
        child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    with console.status("starting Milvus, Triton, the LLM server and the gateway"):
        while not state_path.exists():
            if child.poll() is not None or time.monotonic() > deadline:
                console.print(f"[red]the stack did not come up[/red]; {log_path}:\n{tail(log_path)}")
                if child.poll() is None:
                    child.terminate()
                return 1
            time.sleep(0.5)
    state = json.loads(state_path.read_text())
    console.print(f"[green]stack up[/green]: gateway {state['gateway']}, metrics {state['metrics']}")
    return 0


def down(config: StackConfig, timeout_s: float = 120.0) -> int:
    state_path = config.state_dir / STATE
    if not state_path.exists():
        console.print("the stack is not running (no state file)")
        return 0
    pid = json.loads(state_path.read_text())["supervisor_pid"]
    if pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        with console.status("stopping the stack"):
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
        if pid_alive(pid):
            console.print(f"[red]the supervisor (pid {pid}) did not stop within {timeout_s:.0f}s")
            return 1
    state_path.unlink(missing_ok=True)
    console.print("stack down")
    return 0


def status(config: StackConfig) -> int:
    state_path = config.state_dir / STATE
    if not state_path.exists():
        console.print("the stack is not running")
        return 1
    state = json.loads(state_path.read_text())
    serving = gateway_serving(state["gateway"])
    console.print_json(data={**state, "gateway_serving": serving})
    return 0 if serving else 1


def forwarded(args: argparse.Namespace) -> list[str]:
    return [
        "--state-dir",
        str(args.state_dir),
        "--repo",
        str(args.repo),
        "--tokenizers",
        str(args.tokenizers),
        "--port",
        str(args.port),
        "--metrics-port",
        str(args.metrics_port),
        *(["--no-llm"] if args.no_llm else []),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    parser.add_argument(
        "command",
        choices=["up", "down", "status"],
        help="up: start the stack in the background; down: stop it; status: print its state",
    )
    parser.add_argument("--foreground", action="store_true", help="up: run the supervisor in this terminal")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=StackConfig.state_dir,
        help="where the stack keeps its state file, data and logs (%(default)s)",
    )
    parser.add_argument(
        "--repo", type=Path, default=StackConfig.triton_repo, help="Triton model repository (%(default)s)"
    )
    parser.add_argument(
        "--tokenizers",
        type=Path,
        default=StackConfig.tokenizer_dir,
        help="tokenizer files written by `make export`, read by the gateway (%(default)s)",
    )
    parser.add_argument(
        "--port", type=int, default=StackConfig.gateway_port, help="gateway gRPC port, 0 = any free one (%(default)s)"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=StackConfig.metrics_port,
        help="gateway Prometheus /metrics port, 0 = any free one (%(default)s)",
    )
    parser.add_argument("--no-llm", action="store_true", help="no LLM server (Answer is then unavailable)")
    args = parser.parse_args(argv)
    config = StackConfig(
        triton_repo=args.repo,
        tokenizer_dir=args.tokenizers,
        state_dir=args.state_dir,
        gateway_port=args.port,
        metrics_port=args.metrics_port,
        llm=not args.no_llm,
    )
    if args.command == "down":
        return down(config)
    if args.command == "status":
        return status(config)
    return run_supervisor(config) if args.foreground else up_detached(config, args)


if __name__ == "__main__":
    sys.exit(main())
