"""Running the Go interop programs under tests/interop/ (go: x/mod, tessera and formats clients;
go-witness: transparency-dev's omniwitness): the toolchain (the machine's Go if at least
GO_MIN, else the one `make go` fetches), with the module and build caches under .cairn/go and
the committed go.sum only (GOFLAGS=-mod=readonly), so a test checks our output with Go code
that shares none with ours. No Go toolchain is a failure, never a skip."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

from tests.samples import REPO

GO_TIMEOUT_S = 300.0  # seconds: the first run downloads the modules and compiles
#: The toolchain `make go` fetches when the machine has no Go as recent as GO_MIN (the
#: Makefile's GO_TOOLCHAIN and GO_MIN; GO_MIN is tests/interop/go/go.mod's go directive).
GO_TOOLCHAIN = "v0.0.1-go1.26.8.linux-amd64"
GO_MIN = (1, 25)


def _recent(go: Path) -> bool:
    """Whether ``go`` is a Go toolchain at least GO_MIN (``go env GOVERSION``: go1.N[.P])."""
    try:
        version = subprocess.run(
            [str(go), "env", "GOVERSION"],
            env={**os.environ, "GOTOOLCHAIN": "local"},
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
        major, minor = version.removeprefix("go").split(".")[:2]
        return (int(major), int(minor)) >= GO_MIN
    except (OSError, subprocess.SubprocessError, ValueError):
        return False


@functools.cache
def go_binary() -> str:
    """The machine's Go if recent enough, else the one `make go` fetched; none fails."""
    fetched = REPO / ".cairn" / "go-toolchain" / "golang.org" / f"toolchain@{GO_TOOLCHAIN}"
    machine = Path(shutil.which("go") or "/usr/local/go/bin/go")
    found = next((p for p in (machine, fetched / "bin" / "go") if p.is_file() and _recent(p)), None)
    assert found is not None, (
        f"a Go toolchain of at least go{GO_MIN[0]}.{GO_MIN[1]} is required (make go fetches one)"
    )
    return str(found)


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


def go_build(program: Path, package: str, out: Path, *, timeout_s: float = GO_TIMEOUT_S) -> Path:
    """``go build`` of ``package`` (``./cmd`` or an import path) in the module ``program``
    into the binary ``out``; a failure fails the test with Go's message."""
    result = subprocess.run(
        [go_binary(), "build", "-o", str(out), package],
        cwd=program,
        env=go_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert result.returncode == 0, f"go build {package}: {result.stderr}"
    return out


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
