"""What a command may write, checked before it writes anything (torch-free): nothing already written is replaced
without ``--overwrite``, an input is never an output, and one folder has one writer at a time."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import ForgetkitError

LOCK_NAME = ".forgetkit.lock"


def refuse_replacing(marker: Path, overwrite: bool, what: str) -> None:
    """Refuse to write over the output whose ``marker`` file (a checkpoint's manifest.json, verify.json) exists,
    unless ``overwrite``."""
    if marker.exists() and not overwrite:
        raise ForgetkitError(f"{marker.parent} already holds {what}; pass --overwrite to replace it, or choose "
                             f"another --out")


def refuse_input_as_output(output: Path, inputs: list[Path | None], what: str = "--out") -> None:
    """Refuse an output folder that is, or holds, one of the command's inputs: writing there could change them."""
    out = output.resolve()
    for item in inputs:
        if item is None:
            continue
        source = Path(item).resolve()
        if source == out or out in source.parents:
            raise ForgetkitError(f"{what} {output} is or holds the input {item}; write to another folder (an input "
                                 f"checkpoint or file is never changed)")


class OutputLock:
    """An exclusive lock on an output folder while a command writes it (``fcntl.flock`` on ``.forgetkit.lock``,
    released by the kernel if the process dies, so a killed run never leaves the folder locked).

    ``with OutputLock(folder):`` locks at once; ``with OutputLock(folder, later=True) as lock:`` locks at
    ``lock.acquire()``, so that checks made before it leave no folder behind when they refuse."""

    def __init__(self, directory: Path, later: bool = False):
        self.directory, self.later = Path(directory), later
        self._file = None

    def __enter__(self) -> OutputLock:
        return self if self.later else self.acquire()

    def acquire(self) -> OutputLock:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            handle = open(self.directory / LOCK_NAME, "a+")
        except OSError as err:
            raise ForgetkitError(f"cannot write to {self.directory} ({err.strerror}); choose another output folder "
                                 f"with --out or output_dir") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise ForgetkitError(f"{self.directory} is being written by another forgetkit process (pid {holder}); "
                                 f"wait for it to finish, or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._file = handle
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
