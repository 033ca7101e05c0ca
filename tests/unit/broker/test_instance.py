"""Every broker process gets a transactional id of its own, and a restarted one its old id."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from broker.config import Settings
from broker.instance import (
    INSTANCES_DIR,
    InstanceUnavailable,
    SlotLock,
    acquire_instance,
    host_name,
)

# A process that takes an instance, prints its id and holds it until it is killed.
HOLDER = textwrap.dedent(
    """
    import sys, time
    from broker.config import Settings
    from broker.instance import acquire_instance
    instance = acquire_instance(Settings(state_dir=sys.argv[1]), worker=int(sys.argv[2]))
    print(instance.transactional_id, flush=True)
    time.sleep(60)
    """
)


def _settings(state: Path, **values: object) -> Settings:
    return Settings(state_dir=state, **values)  # type: ignore[arg-type]


def _holder(state: Path, worker: int = 0) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(state), str(worker)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()  # the child is killed after 60 s at the latest
    assert line, "the holder process printed no id"
    return proc, line


def _end(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


def test_the_id_is_base_host_and_slot(tmp_path: Path) -> None:
    """The id is <transactional_id>.<host>.<slot>: the setting is the base, slot 0 first."""
    with acquire_instance(_settings(tmp_path, transactional_id="cairn-x")) as instance:
        assert instance.transactional_id == f"cairn-x.{host_name()}.0"
        assert instance.name == f"{host_name()}.0"
        assert (tmp_path / INSTANCES_DIR / f"{host_name()}.0.lock").is_file()
    assert Settings().transactional_id == "cairn-broker"


def test_two_acquisitions_in_one_process_get_different_ids(tmp_path: Path) -> None:
    """Two instances in one process hold two slots; a released slot is the next one taken."""
    settings = _settings(tmp_path)
    first = acquire_instance(settings)
    second = acquire_instance(settings, worker=1)
    assert (first.slot, second.slot) == (0, 1)
    assert first.transactional_id != second.transactional_id
    first.release()
    first.release()  # idempotent
    assert not first.held
    third = acquire_instance(settings)
    assert third.slot == 0  # the lowest free slot: the one just released
    second.release()
    third.release()


def test_two_processes_get_different_ids_and_a_killed_ones_slot_is_taken_back(
    tmp_path: Path,
) -> None:
    """Another process holds slot 0, so this one gets 1; once it is SIGKILLed, 0 is free."""
    proc, theirs = _holder(tmp_path)
    try:
        mine = acquire_instance(_settings(tmp_path))
        assert theirs.endswith(".0")
        assert mine.slot == 1
        assert mine.transactional_id != theirs
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        again = acquire_instance(_settings(tmp_path))
        assert again.transactional_id == theirs  # the killed broker's id, fencing only it
        again.release()
        mine.release()
    finally:
        _end(proc)


def test_a_process_takes_the_slot_this_one_released(tmp_path: Path) -> None:
    """A slot released here is the one the next process on the host takes."""
    settings = _settings(tmp_path)
    held = [acquire_instance(settings) for _ in range(3)]
    held[1].release()
    proc, theirs = _holder(tmp_path, worker=4)
    try:
        assert theirs == held[1].transactional_id
        lock = tmp_path / INSTANCES_DIR / f"{host_name()}.1.lock"
        assert lock.read_text() == f"pid={proc.pid} worker=4\n"
    finally:
        _end(proc)
        for instance in held:
            instance.release()


def test_all_slots_held_is_a_clear_error(tmp_path: Path) -> None:
    """With every slot held the next acquisition says so and how to fix it."""
    settings = _settings(tmp_path, instance_slots=2)
    with (
        acquire_instance(settings),
        acquire_instance(settings),
        pytest.raises(InstanceUnavailable, match=r"all 2 slots .* CAIRN_INSTANCE_SLOTS"),
    ):
        acquire_instance(settings)
    with acquire_instance(settings) as instance:
        assert instance.slot == 0


def test_an_unusable_state_folder_is_a_clear_error(tmp_path: Path) -> None:
    """A state folder that cannot hold the lock folder is an error naming CAIRN_STATE_DIR."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InstanceUnavailable, match="CAIRN_STATE_DIR"):
        acquire_instance(_settings(blocker))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("broker-1", "broker-1"),
        ("broker-1.example.org", "broker-1-example-org"),
        ("__weird__name__", "weird-name"),
        ("...", "host"),
        ("x" * 80, "x" * 63),
        ("Ünïcode-Box", "n-code-Box"),
    ],
)
def test_the_host_is_reduced_to_letters_digits_and_hyphens(raw: str, expected: str) -> None:
    """Any host name becomes [A-Za-z0-9-], at most 63 characters, never empty."""
    assert host_name(raw) == expected


def test_slot_locks_are_not_inherited_by_child_processes(tmp_path: Path) -> None:
    """A child started (without closing fds) while a slot is held does not keep it."""
    lock = SlotLock(tmp_path, "thing", 4)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], close_fds=False)
    try:
        lock.release()
        # The kernel lets the parent of a vfork run on before the child's exec has closed
        # its close-on-exec descriptors: allow that moment, never the child's 30 seconds.
        for _ in range(20):
            again = SlotLock(tmp_path, "thing", 4)
            again.release()
            if again.slot == 0:
                break
            time.sleep(0.1)
        assert again.slot == 0
    finally:
        child.kill()
        child.wait(10)
