"""Spark's Python worker daemon, with the batch layer's heavy imports done once before it forks.

PySpark forks every Python worker from one daemon per executor. Great Expectations takes seconds
to import, and each new worker paid it again before checking its first partition (py-spy over
`python -m bench.batch_bench`: 34 s of imports in GX's workers over two 300k-row runs, 4 of every
10 s of the validate step). Imported here, every worker inherits it already loaded (fork shares
the pages). Nothing else runs before the fork: no context, no thread. batch/spark.py names this
module as `spark.python.daemon.module`.
"""

import gc
import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no usage statistics sent from workers

import great_expectations  # noqa: E402,F401  (imported for the forked workers)
import pandas  # noqa: E402,F401
import pyarrow  # noqa: E402,F401
from pyspark import daemon  # noqa: E402

if __name__ == "__main__":
    # The imported objects move to the collector's permanent generation: a worker's collections
    # then neither scan them (GX's heap made each full collection of a parsing worker slow) nor
    # write to their pages (which would copy them in every forked worker).
    gc.freeze()
    daemon.manager()
