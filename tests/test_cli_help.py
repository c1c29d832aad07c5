"""Each command line's --help: no missing help text, no file that does not exist, sensible defaults."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from server.config import RagSettings

ROOT = Path(__file__).resolve().parents[1]
ARGUMENT_SECTIONS = {"positional arguments:", "options:", "optional arguments:"}


def help_text(*module_and_args: str) -> str:
    """`python -m <module> <args> --help`, run from the repository root."""
    env = {**os.environ, "COLUMNS": "120"}
    done = subprocess.run(
        [sys.executable, "-m", *module_and_args, "--help"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def entries_without_help(text: str) -> list[str]:
    """Arguments listed in an argparse help text with nothing after their names."""
    entries: list[list[str]] = []
    in_arguments = False
    for line in text.splitlines():
        if not line.startswith(" "):  # a section title (or a blank line) ends the current entry
            in_arguments = line in ARGUMENT_SECTIONS or (in_arguments and not line)
            entries.append([])
        elif in_arguments and re.match(r"  \S", line):
            entries.append([line.strip()])
        elif in_arguments and entries:
            entries[-1].append(line.strip())
    return [e[0] for e in entries if len(e) == 1 and len(re.split(r"\s{2,}", e[0])) == 1]


def test_the_checker_finds_an_argument_without_help() -> None:
    text = "options:\n  -h, --help     show this help\n  --state-dir STATE_DIR\n  --port PORT    gateway port\n"
    assert entries_without_help(text) == ["--state-dir STATE_DIR"]


def test_gateway_help_names_only_files_that_exist() -> None:
    text = help_text("server")
    named = re.findall(r"configs/[\w./-]+\.yaml", text)
    assert named and all((ROOT / path).is_file() for path in named), named
    assert entries_without_help(text) == []


def test_ask_help_shows_the_servers_default_number_of_passages() -> None:
    text = " ".join(help_text("server.cli", "ask").split())
    assert f"passages to retrieve (default: the server's, {RagSettings().default_k} unless configured)" in text
    assert "(0)" not in text


def test_every_recstack_argument_has_help() -> None:
    for command in ((), ("recommend",), ("search",), ("ask",), ("health",)):
        assert entries_without_help(help_text("server.cli", *command)) == [], command


def test_every_devstack_argument_has_help() -> None:
    text = help_text("devstack")
    assert "--metrics-port" in text and "--state-dir" in text
    assert entries_without_help(text) == []


def test_every_argument_of_the_operations_commands_has_help() -> None:
    commands = [
        ("server.cli", "feedback"),
        ("server.rollout",),
        ("server.rollout", "rollout"),
        ("benchmarks.loop",),
        ("benchmarks.reliability",),
        ("benchmarks.workers",),
    ]
    for command in commands:
        assert entries_without_help(help_text(*command)) == [], command
