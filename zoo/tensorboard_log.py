"""Optional training logs beside ``metrics.jsonl``: TensorBoard scalars in ``OUT/tensorboard/``.

``train(..., loggers=("tensorboard",))`` / ``zoo train ... --log tensorboard`` writes, per epoch (the
TensorBoard step is the epoch, counted from 1 as in ``metrics.jsonl``), ``train/loss``, ``train/lr``,
``train/targets_per_second`` and ``valid/<metric>`` for every validation metric, and when the run
ends ``test/<metric>`` of the kept weights at the step of their epoch (the best validation epoch).
Only the main process writes. The ``tensorboard`` package is an optional dependency (the ``log``
extra); :func:`check_loggers` refuses a logger that cannot run before anything is trained.

This module imports nothing heavy: torch's ``SummaryWriter`` is imported when a log is opened.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

LOGGERS = ("tensorboard",)
LOG_EXTRA_INSTALL = "pip install 'seqrec-zoo[log]'"
TENSORBOARD_DIR = "tensorboard"
EVENT_FILES = "events.out.tfevents.*"


def check_loggers(names: str | Sequence[str]) -> tuple[str, ...]:
    """``names`` as a tuple of known logger names, each once (one name may be given as a string).

    An unknown name is a ``ValueError`` listing the known ones; ``"tensorboard"`` without the
    ``tensorboard`` package (or with a broken one) is an ``ImportError`` naming the install command.
    """
    names = (names,) if isinstance(names, str) else tuple(names)
    unknown = [name for name in names if name not in LOGGERS]
    if unknown:
        raise ValueError(f"unknown logger{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                         f"known loggers: {', '.join(LOGGERS)}")
    if "tensorboard" in names:
        summary_writer_class()
    return tuple(dict.fromkeys(names))


def summary_writer_class() -> type:
    """torch's ``SummaryWriter``; an ``ImportError`` naming the install command when ``tensorboard`` is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ImportError(
            f"the tensorboard logger (--log tensorboard) needs the tensorboard package, which is missing or cannot be "
            f"imported ({exc}); install it with: {LOG_EXTRA_INSTALL}"
        ) from exc
    return SummaryWriter


def epoch_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The TensorBoard scalars of one ``metrics.jsonl`` record (an epoch with no measured throughput has none)."""
    scalars = {"train/loss": record["loss"], "train/lr": record["lr"],
               "train/targets_per_second": record["targets_per_second"]}
    scalars.update({f"valid/{metric}": value for metric, value in record["valid"].items()})
    return {tag: float(value) for tag, value in scalars.items() if value is not None}


class TensorBoardLog:
    """A run's scalars as TensorBoard event files in ``out_dir/tensorboard/``, equal to ``metrics.jsonl``.

    Resuming: :meth:`open` deletes the folder's event files and writes the restored history again
    into a fresh one, then each new epoch is appended. So every epoch is in the log exactly once,
    like ``metrics.jsonl``, which is rewritten from the checkpointed history in the same way. Keeping
    the old files and writing only later epochs (with ``purge_step``) would not be enough: the
    points a crashed run logged after its last checkpoint, and the ``test/`` points of a finished
    run that is lengthened, would stay in the files; TensorBoard hides them behind the purge marker,
    but any other reader of the event files sees them twice. Rewriting also completes the log of a
    run that was resumed once without ``--log tensorboard``. Rewritten points keep their place in
    time: an epoch's wall time is the run's start plus its record's ``wall`` seconds.
    """

    def __init__(self, writer: Any, origin: float) -> None:
        self.writer, self.origin = writer, origin

    @classmethod
    def open(cls, out_dir: Path, history: Sequence[Mapping[str, Any]], wall: float) -> TensorBoardLog:
        """A fresh log holding the epochs of ``history`` (the run has run ``wall`` seconds so far)."""
        folder = out_dir / TENSORBOARD_DIR
        for path in folder.glob(EVENT_FILES):
            path.unlink()
        board = cls(summary_writer_class()(log_dir=str(folder)), origin=time.time() - wall)
        for record in history:
            board.add_epoch(record)
        return board

    def add_epoch(self, record: Mapping[str, Any]) -> None:
        """Log one ``metrics.jsonl`` record at its epoch and flush, so a watching TensorBoard sees it now."""
        for tag, value in epoch_scalars(record).items():
            self.writer.add_scalar(tag, value, global_step=record["epoch"], walltime=self.origin + record["wall"])
        self.writer.flush()

    def add_test(self, metrics: Mapping[str, float], epoch: int) -> None:
        """Log the kept weights' test metrics at ``epoch``, the epoch they come from."""
        for metric, value in metrics.items():
            self.writer.add_scalar(f"test/{metric}", float(value), global_step=epoch)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()
