"""vlalign: Hugging Face-native vision-language alignment pretraining (ALBEF, SIMLA, CODIS, FDT).

Importing vlalign registers every method of the registry (`vlalign.methods`) with the transformers Auto classes and
adds the `zero-shot-image-text-retrieval` pipeline.
"""

from . import methods
from .auto import AutoModelForImageTextRetrieval
from .models import *  # noqa: F403
from .models import __all__ as _models_all
from .pipelines.retrieval import register_pipelines

methods.register_auto_classes()
register_pipelines()

__version__ = "0.1.0"
__all__ = [*_models_all, "AutoModelForImageTextRetrieval", "__version__"]
