"""The registry serial file, written by brokers that share a state folder at the same moment."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from broker.trust import _read_serial, _write_serial


def test_brokers_writing_the_serial_at_once_never_take_each_others_file(tmp_path: Path) -> None:
    """Eight writers, 50 writes each, to one serial file: none fails (each has its own temp
    file), the file holds one whole serial, and no temp file is left behind."""
    path = tmp_path / "broker" / "registry-serial"

    def writer(n: int) -> None:
        for i in range(50):
            _write_serial(path, n * 1000 + i)

    with ThreadPoolExecutor(max_workers=8) as pool:
        for done in [pool.submit(writer, n) for n in range(8)]:
            done.result(timeout=60)
    assert _read_serial(path) % 1000 == 49
    assert sorted(p.name for p in path.parent.iterdir()) == ["registry-serial"]
