"""Where the training and batch-scoring stages run: ``local`` (one process) or ``dask`` (a cluster).

Both engines run the same stages and write the same bundle (``scoring.bundle``); they differ only
in how the data is held: ``local`` keeps the table in one process's memory, ``dask`` reads it in
partitions on a Dask cluster and reduces per-partition results (see ``training/engines/dask.py``).
The Dask engine is imported only when asked for, so the local path never needs Dask installed.
"""

ENGINES = ("local", "dask")
