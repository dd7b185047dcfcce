"""Model families. Each lives in flat `configuration_*`/`modeling_*`/`processing_*` files, laid out like a Hub model
repository, so a saved checkpoint carries its own code and loads with `trust_remote_code=True`."""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForPreTraining,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
    AutoTokenizer,
)

from .configuration_albef import AlbefConfig, AlbefTextConfig, AlbefVisionConfig
from .modeling_albef import (
    AlbefForImageTextRetrieval,
    AlbefForPreTraining,
    AlbefModel,
    AlbefPreTrainedModel,
    AlbefTextModel,
    AlbefVisionModel,
)
from .processing_albef import AlbefImageProcessor, AlbefProcessor
from .tokenization_albef import AlbefTokenizer


def register_auto_classes() -> None:
    """Register every family with the Auto classes, and for remote code so saved folders ship their code."""
    AutoConfig.register("albef", AlbefConfig, exist_ok=True)
    AutoModel.register(AlbefConfig, AlbefModel, exist_ok=True)
    AutoModelForPreTraining.register(AlbefConfig, AlbefForPreTraining, exist_ok=True)
    AutoModelForZeroShotImageClassification.register(AlbefConfig, AlbefModel, exist_ok=True)
    AutoImageProcessor.register(AlbefConfig, image_processor_classes={"pil": AlbefImageProcessor}, exist_ok=True)
    AutoTokenizer.register(AlbefConfig, tokenizer_class=AlbefTokenizer, exist_ok=True)
    AutoProcessor.register(AlbefConfig, AlbefProcessor, exist_ok=True)

    AlbefConfig.register_for_auto_class()
    AlbefModel.register_for_auto_class("AutoModel")
    AlbefForPreTraining.register_for_auto_class("AutoModelForPreTraining")
    AlbefImageProcessor.register_for_auto_class("AutoImageProcessor")
    AlbefTokenizer.register_for_auto_class("AutoTokenizer")
    AlbefProcessor.register_for_auto_class()


__all__ = [
    "AlbefConfig",
    "AlbefForImageTextRetrieval",
    "AlbefForPreTraining",
    "AlbefImageProcessor",
    "AlbefModel",
    "AlbefPreTrainedModel",
    "AlbefProcessor",
    "AlbefTextConfig",
    "AlbefTextModel",
    "AlbefTokenizer",
    "AlbefVisionConfig",
    "AlbefVisionModel",
    "register_auto_classes",
]
