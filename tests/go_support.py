"""Running the Go interop programs under tests/interop/: the toolchain, with its module cache
under .cairn/go and the committed go.sum only (GOFLAGS=-mod=readonly), so a test checks our
output with Go's own golang.org/x/mod code. No Go toolchain is a failure, never a skip."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.samples import REPO

GO_TIMEOUT_S = 300.0  # seconds: the first run downloads golang.org/x/mod and compiles
#: The toolchain `make go` fetches when the machine has no Go (the Makefile's GO_TOOLCHAIN).
GO_TOOLCHAIN = "v0.0.1-go1.23.4.linux-amd64"


def go_binary() -> str:
    fetched = REPO / ".cairn" / "go-toolchain" / "golang.org" / f"toolchain@{GO_TOOLCHAIN}"
    found = next(
        (
            str(p)
            for p in (Path(shutil.which("go") or "/usr/local/go/bin/go"), fetched / "bin" / "go")
            if p.is_file()
        ),
        "go",
    )
    assert Path(found).is_file(), "the Go toolchain is required (make go fetches one)"
    return found


def go_env() -> dict[str, str]:
    cache = REPO / ".cairn" / "go"
    return {
        **os.environ,
        "GOPATH": str(cache),
        "GOMODCACHE": str(cache / "mod"),
        "GOCACHE": str(cache / "build"),
        "GOFLAGS": "-mod=readonly",
        "GOTOOLCHAIN": "local",
    }


def go_run(program: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``go run .`` in ``program`` with ``args``; the result, whatever its exit code."""
    return subprocess.run(
        [go_binary(), "run", ".", *args],
        cwd=program,
        env=go_env(),
        capture_output=True,
        text=True,
        timeout=GO_TIMEOUT_S,
        check=False,
    )
