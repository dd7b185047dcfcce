"""`AutoModelForImageTextRetrieval`: the Auto class transformers does not have, for retrieval fine-tuned folders.

transformers maps a config to one class per Auto class; a retrieval fine-tuned ALBEF folder would load as the
pretraining model through `AutoModelForPreTraining` (dropping its image-index queue, adding an MLM head) and as the
bare encoders through `AutoModel`. This Auto class loads it as what it is, `AlbefForImageTextRetrieval`; for a dual
encoder (FDT) the retrieval model is its `<Method>Model`. The method registry fills the mapping.
"""

from __future__ import annotations

from collections import OrderedDict

from transformers.models.auto.auto_factory import _BaseAutoModelClass, _LazyAutoMapping
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES


class AutoModelForImageTextRetrieval(_BaseAutoModelClass):
    _model_mapping = _LazyAutoMapping(CONFIG_MAPPING_NAMES, OrderedDict())


__all__ = ["AutoModelForImageTextRetrieval"]
