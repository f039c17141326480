"""dlpipe: retryable, auditable deep-learning pipelines on Airflow.

The core package knows nothing about Airflow, Spark or Horovod: it owns storage, manifests
(the commit protocol), the audit log, gates and the model registry.
"""

__version__ = "0.1.0"
