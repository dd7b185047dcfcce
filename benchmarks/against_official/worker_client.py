"""The driver's end of the benchmark workers (`<method>_step_worker.py`, `albef_eval_worker.py`): each implementation
runs in its own process (the official code in a Python with its own dependencies), answering one JSON command per line
on stdin with one `@@`-prefixed JSON line on stdout, so a driver can interleave both implementations in one run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path


class Worker:
    def __init__(self, python: str, script: Path, name: str, arguments: list[str]):
        self.name = name
        command = [python, str(script), *arguments]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ready = self.read()

    def read(self) -> dict:
        for line in self.process.stdout:
            if line.startswith("@@"):
                return json.loads(line[2:])
        raise RuntimeError(f"the {self.name} worker exited with code {self.process.wait()} (its stderr is above)")

    def ask(self, **command) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self.read()

    def close(self) -> None:
        self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
        self.process.stdin.close()
        self.process.wait()


def reply(**payload) -> None:
    """A worker's answer to one command."""
    print("@@" + json.dumps(payload), flush=True)
