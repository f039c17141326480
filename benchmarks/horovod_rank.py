"""``training.train_eta`` under horovodrun, timed the way benchmarks/horovod_overhead.py times its
plain loop.

    horovodrun -np N python -m benchmarks.horovod_rank --spec SPEC.json

The same trainer and loop (``training.horovod_loop.main`` with ``EtaTrainer``). train_eta's own
``train_seconds`` also covers building the loaders, the row-count allreduce, the batch-count
allgather, the parameter broadcast and a checkpoint per epoch, none of which the plain loop
does; so each rank also measures its epochs, and rank 0's metrics.json gets:

- ``bench_loop_s``: the epochs' training loops, from asking for the first batch to the end of the
  epoch's loss allreduce (which waits for the last step), checkpoints left out;
- ``bench_checkpoint_s``: the checkpoints rank 0 writes after each epoch;
- ``bench_samples``: the samples trained, all ranks together.

The rest of ``train_seconds`` is the set-up (loaders, allreduce, allgather, broadcast).
"""

from __future__ import annotations

import sys
import time

from training import checkpoint
from training.horovod_loop import main
from training.train_eta import EtaTrainer


class TimedEtaTrainer(EtaTrainer):
    """EtaTrainer that times its epochs and, inside them, its checkpoints."""

    epochs_s = 0.0
    checkpoint_s = 0.0

    def run_epoch(self, epoch: int) -> None:
        # run_epoch looks checkpoint.save up at each call, so a wrapper in its place sees it
        save = checkpoint.save

        def timed_save(*args, **kwargs):
            t = time.perf_counter()
            try:
                return save(*args, **kwargs)
            finally:
                self.checkpoint_s += time.perf_counter() - t

        checkpoint.save = timed_save
        t = time.perf_counter()
        try:
            super().run_epoch(epoch)
        finally:
            checkpoint.save = save
        self.epochs_s += time.perf_counter() - t

    def final_metrics(self) -> dict:
        # called on every rank (the allreduce in total() needs them all); rank 0's are written
        metrics = super().final_metrics()
        metrics.update({"bench_loop_s": round(self.epochs_s - self.checkpoint_s, 4),
                        "bench_checkpoint_s": round(self.checkpoint_s, 4),
                        "bench_samples": int(self.total(self.samples))})
        return metrics


if __name__ == "__main__":
    sys.exit(main(TimedEtaTrainer))
