"""vlalign: Hugging Face-native vision-language alignment pretraining (ALBEF, SIMLA, CODIS, FDT).

Importing vlalign registers every model family (`vlalign.auto.MODEL_FAMILIES`) with the transformers Auto classes and
adds the `zero-shot-image-text-retrieval` and `visual-question-answering` pipelines. It imports the models only:
training (`vlalign.training`), evaluation, hub publishing and the method registry (`vlalign.methods`) load when first
used.
"""

import importlib

from .auto import (
    AutoModelForImageTextRetrieval,
    AutoModelForTextAssignment,
    AutoModelForVisualEntailment,
    AutoModelForVisualReasoning,
    register_auto_classes,
)
from .models import *  # noqa: F403
from .models import __all__ as _models_all
from .models.pipeline_retrieval import register_pipelines
from .models.pipeline_vqa import register_vqa_pipeline

register_auto_classes()
register_pipelines()
register_vqa_pipeline()

__version__ = "0.1.0"
__all__ = [
    *_models_all,
    "AutoModelForImageTextRetrieval",
    "AutoModelForTextAssignment",
    "AutoModelForVisualEntailment",
    "AutoModelForVisualReasoning",
    "__version__",
]

_SUBMODULES = (
    "cli",
    "convert",
    "data",
    "evaluation",
    "hub",
    "methods",
    "metrics",
    "quickstart",
    "recipes",
    "training",
    "visualization",
)


def __getattr__(name: str):
    """`vlalign.methods`, `vlalign.training`, ... without importing them at `import vlalign`."""
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
