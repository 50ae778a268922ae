"""What a run keeps on disk while it goes: its state after every finished request, and its logs.

State: ``<output_dir>/state/request_NNN/`` holds everything needed to continue after request NNN (the model's
weights, the method's tensors, the results and loss rows so far, the resolved config). It is written into a hidden
temporary folder and renamed into place, and ``state/latest.json`` (written atomically after the rename) names the
newest complete one, so a crash at any moment leaves either the previous state or the new one, never half of one.

Logs: ``log.csv`` gets a row per logged loss and per request metric as the run goes (flushed at once, so ``tail -f``
works), and TensorBoard event files go to ``<output_dir>/tensorboard`` when the ``tensorboard`` package is installed.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
from pathlib import Path

import torch

from .engine.plan import STATE_DIR, config_differences, resume_refusal
from .extras import available
from .io import load_weights, read_json, save_weights, write_json, write_text, write_yaml

LOG_FIELDS = ["request", "step", "name", "value"]


def crash_point(name: str) -> None:
    """Fault injection for the resume tests: ``FORGETKIT_CRASH_AT=<name>`` kills the process here (as ``kill -9``
    would), so a test can stop a run at an exact point. Without the variable this does nothing."""
    if os.environ.get("FORGETKIT_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


class RunState:
    """Save and load the state of a run at request boundaries."""

    def __init__(self, out: Path):
        self.root = Path(out) / STATE_DIR

    def begin(self, config: dict) -> None:
        """Mark the run as started, with its config (``state/run.yaml``): a run killed before its first request
        finished is then resumable (from the start) and recognised as unfinished."""
        self.root.mkdir(parents=True, exist_ok=True)
        write_yaml(self.root / "run.yaml", config)

    def save(self, completed: int, model: torch.nn.Module, method_state: dict[str, torch.Tensor],
             progress: dict) -> None:
        """State after ``completed`` requests: written beside, renamed into place, then pointed at."""
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"request_{completed:03d}"
        tmp = self.root / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_weights(tmp / "model.safetensors", model.state_dict())
        crash_point(f"save_{completed}")
        save_weights(tmp / "method.safetensors", method_state or {"_empty": torch.zeros(0)})
        write_json(tmp / "progress.json", progress)
        final = self.root / name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        crash_point(f"point_{completed}")
        write_json(self.root / "latest.json", {"completed": completed, "dir": name})
        for old in self.root.iterdir():  # earlier states are superseded
            if old.name not in (name, "latest.json", "run.yaml"):
                shutil.rmtree(old, ignore_errors=True)

    def load(self, config: dict) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]] | None:
        """(progress, model weights, method tensors) of the newest complete state, after checking that it was made
        by the same config; None when no request had finished (the run starts from the beginning)."""
        pointer = self.root / "latest.json"
        if not pointer.is_file():
            return None
        where = self.root / read_json(pointer)["dir"]
        progress = read_json(where / "progress.json")
        differ = config_differences(progress["config"], config)
        if differ:
            raise resume_refusal(self.root.parent, differ, progress["config"], config)
        method_state = {k: v for k, v in load_weights(where / "method.safetensors").items() if k != "_empty"}
        return progress, load_weights(where / "model.safetensors"), method_state


class RunLog:
    """``log.csv`` (always) and TensorBoard scalars (when installed), appended as the run goes."""

    def __init__(self, out: Path, keep_rows: int = 0, purge_step: int | None = None):
        self.path = Path(out) / "log.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # on resume, drop the rows of the request that was interrupted: they are written again
        rows = self.rows()[:keep_rows] if keep_rows else []
        write_text(self.path, self._csv([LOG_FIELDS] + [[r[k] for k in LOG_FIELDS] for r in rows]))
        self.count = len(rows)
        self._file = open(self.path, "a", newline="")
        self._writer = csv.writer(self._file)
        self._tb = _tensorboard(Path(out) / "tensorboard", purge_step)

    @staticmethod
    def _csv(rows: list[list]) -> str:
        import io

        buffer = io.StringIO()
        csv.writer(buffer).writerows(rows)
        return buffer.getvalue()

    def rows(self) -> list[dict]:
        if not self.path.is_file():
            return []
        with open(self.path, newline="") as fh:
            return list(csv.DictReader(fh))

    def log(self, request: int, step: int, values: dict[str, float | None], global_step: int) -> None:
        for name, value in values.items():
            if value is None:
                continue
            self._writer.writerow([request, step, name, f"{value:.6g}"])
            self.count += 1
            if self._tb is not None:
                self._tb.add_scalar(name, value, global_step)
        self._file.flush()

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _tensorboard(directory: Path, purge_step: int | None):
    """A TensorBoard writer, or None without the ``tensorboard`` extra. ``purge_step``: on resume, TensorBoard hides
    the events the interrupted request wrote past this step."""
    if not available("tensorboard"):  # the tensorboard extra; the CSV log is always written
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(directory), purge_step=purge_step)
