"""dlpipe's Airflow operators: thin wrappers that build clients from Airflow and call the core.

Public API (import these in your own DAGs):

    SparkFeatureOperator, PetastormDatasetOperator, DataGateOperator,
    HorovodTrainOperator, ModelGateOperator, RegisterModelOperator, PromoteModelOperator
"""

from operators.dataset import PetastormDatasetOperator
from operators.features import SparkFeatureOperator
from operators.gates import DataGateOperator, ModelGateOperator
from operators.registry import PromoteModelOperator, RegisterModelOperator
from operators.train import HorovodTrainOperator

__all__ = [
    "SparkFeatureOperator", "PetastormDatasetOperator", "DataGateOperator",
    "HorovodTrainOperator", "ModelGateOperator", "RegisterModelOperator", "PromoteModelOperator",
]
