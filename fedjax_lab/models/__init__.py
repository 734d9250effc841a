"""Models: a byte-level transformer LM and image classifiers, as Tasks."""

from fedjax_lab.models.classifiers import classifier_train_flops_per_example
from fedjax_lab.models.classifiers import CNN
from fedjax_lab.models.classifiers import MLP
from fedjax_lab.models.tasks import classifier_task
from fedjax_lab.models.tasks import lm_task
from fedjax_lab.models.tasks import Task
from fedjax_lab.models.transformer import transformer_num_params
from fedjax_lab.models.transformer import transformer_train_flops_per_token
from fedjax_lab.models.transformer import TransformerLM
from fedjax_lab.models.transformer import VOCAB_SIZE

__all__ = [
    "CNN",
    "MLP",
    "Task",
    "TransformerLM",
    "VOCAB_SIZE",
    "classifier_task",
    "classifier_train_flops_per_example",
    "lm_task",
    "transformer_num_params",
    "transformer_train_flops_per_token",
]
