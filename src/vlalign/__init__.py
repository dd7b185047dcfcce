"""vlalign: Hugging Face-native vision-language alignment pretraining (ALBEF, SIMLA, CODIS, FDT).

Importing vlalign registers every model family with the transformers Auto classes.
"""

from .models import *  # noqa: F403
from .models import __all__ as _models_all
from .models import register_auto_classes
from .pipelines.retrieval import register_pipelines

register_auto_classes()
register_pipelines()

__version__ = "0.1.0"
__all__ = [*_models_all, "__version__"]
