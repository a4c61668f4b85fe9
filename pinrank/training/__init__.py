"""Running a training job: fit, reload the best checkpoint, evaluate, write ``metrics.json``."""

from pinrank.training.run import (
    fit_and_evaluate,
    summary_table,
    training_threads,
    write_run_record,
)

__all__ = ["fit_and_evaluate", "summary_table", "training_threads", "write_run_record"]
