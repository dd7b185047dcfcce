"""The model families vlalign registers with transformers' Auto classes, and `AutoModelForImageTextRetrieval`.

`import vlalign` registers each family of `MODEL_FAMILIES` (config, models, processor, image processor, tokenizer)
with the Auto classes and for remote code, so saved folders load through `AutoModel.from_pretrained` in this process
and with `trust_remote_code=True` where vlalign is not installed. This is the models' own table: it imports nothing
above `vlalign.models`. The method registry (`vlalign.methods`) points at these families.

`AutoModelForImageTextRetrieval` is the Auto class transformers does not have: a retrieval fine-tuned ALBEF folder
would load as the pretraining model through `AutoModelForPreTraining` (dropping its image-index queue, adding an MLM
head) and as the bare encoders through `AutoModel`; this class loads it as what it is, `AlbefForImageTextRetrieval`.
For a dual encoder (FDT) the retrieval model is its `<Method>Model`.

`AutoModelForVisualEntailment` is another: transformers has no image + text classification Auto class.
`AutoModelForSequenceClassification` is for text alone (its pipelines and callers pass no image), and
`AutoModelForImageClassification` for images alone; an entailment model needs both, so it gets its own class.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForPreTraining,
    AutoModelForVisualQuestionAnswering,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
    AutoTokenizer,
)
from transformers.models.auto import image_processing_auto
from transformers.models.auto.auto_factory import _BaseAutoModelClass, _LazyAutoMapping
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

from . import models


class AutoModelForImageTextRetrieval(_BaseAutoModelClass):
    _model_mapping = _LazyAutoMapping(CONFIG_MAPPING_NAMES, OrderedDict())


class AutoModelForVisualReasoning(_BaseAutoModelClass):
    """Loads an NLVR2 model (two images + a sentence → true/false): `<Method>ForVisualReasoning`."""

    _model_mapping = _LazyAutoMapping(CONFIG_MAPPING_NAMES, OrderedDict())


class AutoModelForTextAssignment(_BaseAutoModelClass):
    """Loads a text-assignment model (the NLVR2 pretraining step): `<Method>ForTextAssignment`."""

    _model_mapping = _LazyAutoMapping(CONFIG_MAPPING_NAMES, OrderedDict())


class AutoModelForVisualEntailment(_BaseAutoModelClass):
    """Loads a visual entailment (SNLI-VE) model: `<Method>ForVisualEntailment`."""

    _model_mapping = _LazyAutoMapping(CONFIG_MAPPING_NAMES, OrderedDict())


@dataclass(frozen=True)
class ModelFamily:
    """The classes of one method: what each Auto class loads for its `config_class`.

    `retrieval_class` is the retrieval fine-tuning model; None for dual encoders, whose `model_class` is the
    retrieval model. `question_answering_class` is the VQA model (`AutoModelForVisualQuestionAnswering`); None for a
    family without one.
    """

    config_class: type
    model_class: type
    pretraining_class: type
    retrieval_class: type | None
    processor_class: type
    image_processor_class: type
    tokenizer_class: type
    question_answering_class: type | None = None
    #: the NLVR2 model (`AutoModelForVisualReasoning`) and its text-assignment pretraining model
    #: (`AutoModelForTextAssignment`); None for a family without them
    visual_reasoning_class: type | None = None
    text_assignment_class: type | None = None
    #: the visual entailment model (`AutoModelForVisualEntailment`); None for a family without one
    visual_entailment_class: type | None = None

    @property
    def model_type(self) -> str:
        return self.config_class.model_type

    @property
    def retrieval_model_class(self) -> type:
        """What `AutoModelForImageTextRetrieval` loads: the retrieval fine-tuning model, or the dual encoder."""
        return self.retrieval_class or self.model_class

    @property
    def training_classes(self) -> tuple[type, ...]:
        """The models with training duties (momentum encoders, queues, codebooks): pretraining and retrieval."""
        return tuple(c for c in (self.pretraining_class, self.retrieval_class) if c is not None)

    @property
    def remote_code_files(self) -> tuple[str, ...]:
        """The code files named after the method that a saved folder carries for `trust_remote_code=True` (their
        relative imports travel with them)."""
        return tuple(
            f"{kind}_{self.model_type}.py" for kind in ("configuration", "modeling", "processing", "tokenization")
        )

    def register(self) -> None:
        """Register with the Auto classes, and for remote code so that saved folders carry their code."""
        config_class = self.config_class
        AutoConfig.register(self.model_type, config_class, exist_ok=True)
        AutoModel.register(config_class, self.model_class, exist_ok=True)
        AutoModelForPreTraining.register(config_class, self.pretraining_class, exist_ok=True)
        AutoModelForZeroShotImageClassification.register(config_class, self.model_class, exist_ok=True)
        AutoImageProcessor.register(config_class, image_processor_classes={"pil": self.image_processor_class},
                                    exist_ok=True)  # fmt: skip
        _default_to_pil_backend(self.image_processor_class.__name__)
        AutoTokenizer.register(config_class, tokenizer_class=self.tokenizer_class, exist_ok=True)
        AutoProcessor.register(config_class, self.processor_class, exist_ok=True)
        AutoModelForImageTextRetrieval.register(config_class, self.retrieval_model_class, exist_ok=True)
        if self.question_answering_class is not None:
            AutoModelForVisualQuestionAnswering.register(config_class, self.question_answering_class, exist_ok=True)
        for auto_class, model_class in (
            (AutoModelForVisualReasoning, self.visual_reasoning_class),
            (AutoModelForTextAssignment, self.text_assignment_class),
        ):
            if model_class is not None:
                auto_class.register(config_class, model_class, exist_ok=True)
                # what `register_for_auto_class` sets; it accepts only transformers' own Auto class names
                model_class._auto_class = auto_class.__name__
        if self.visual_entailment_class is not None:
            AutoModelForVisualEntailment.register(config_class, self.visual_entailment_class, exist_ok=True)

        config_class.register_for_auto_class()
        self.model_class.register_for_auto_class("AutoModel")
        self.pretraining_class.register_for_auto_class("AutoModelForPreTraining")
        if self.question_answering_class is not None:
            self.question_answering_class.register_for_auto_class("AutoModelForVisualQuestionAnswering")
        self.image_processor_class.register_for_auto_class("AutoImageProcessor")
        self.tokenizer_class.register_for_auto_class("AutoTokenizer")
        self.processor_class.register_for_auto_class()


def _default_to_pil_backend(image_processor_name: str) -> None:
    """Declare a PIL-only image processor as one whose default backend is PIL.

    Without `backend=`, `AutoImageProcessor` picks torchvision whenever it is installed, whatever the registered
    classes, and then warns "Requested torchvision backend is not available. Falling back to pil backend" for a
    processor registered for PIL only, as ours are (PIL for the official numerics). The processors transformers
    resolves to PIL by default are those named in `DEFAULT_TO_PIL_BACKEND_IMAGE_PROCESSORS`; ours join that list
    (a new list: on torchvision < 0.27 the old one is transformers' Lanczos list, which must stay as it is). A
    transformers without that list loads them as before (tests/test_warnings.py then reports the warning).
    """
    names = getattr(image_processing_auto, "DEFAULT_TO_PIL_BACKEND_IMAGE_PROCESSORS", None)
    if names is not None and image_processor_name not in names:
        image_processing_auto.DEFAULT_TO_PIL_BACKEND_IMAGE_PROCESSORS = [*names, image_processor_name]


MODEL_FAMILIES: dict[str, ModelFamily] = {
    family.model_type: family
    for family in (
        ModelFamily(
            config_class=models.AlbefConfig,
            model_class=models.AlbefModel,
            pretraining_class=models.AlbefForPreTraining,
            retrieval_class=models.AlbefForImageTextRetrieval,
            processor_class=models.AlbefProcessor,
            image_processor_class=models.AlbefImageProcessor,
            tokenizer_class=models.AlbefTokenizer,
            question_answering_class=models.AlbefForQuestionAnswering,
            visual_reasoning_class=models.AlbefForVisualReasoning,
            text_assignment_class=models.AlbefForTextAssignment,
            visual_entailment_class=models.AlbefForVisualEntailment,
        ),
        ModelFamily(
            config_class=models.CodisConfig,
            model_class=models.CodisModel,
            pretraining_class=models.CodisForPreTraining,
            retrieval_class=models.CodisForImageTextRetrieval,
            processor_class=models.CodisProcessor,
            image_processor_class=models.CodisImageProcessor,
            tokenizer_class=models.CodisTokenizer,
            question_answering_class=models.CodisForQuestionAnswering,
            visual_reasoning_class=models.CodisForVisualReasoning,
            text_assignment_class=models.CodisForTextAssignment,
            visual_entailment_class=models.CodisForVisualEntailment,
        ),
        ModelFamily(
            config_class=models.FdtConfig,
            model_class=models.FdtModel,
            pretraining_class=models.FdtForPreTraining,
            retrieval_class=None,
            processor_class=models.FdtProcessor,
            image_processor_class=models.FdtImageProcessor,
            tokenizer_class=models.FdtTokenizer,
        ),
        ModelFamily(
            config_class=models.SimlaConfig,
            model_class=models.SimlaModel,
            pretraining_class=models.SimlaForPreTraining,
            retrieval_class=models.SimlaForImageTextRetrieval,
            processor_class=models.SimlaProcessor,
            image_processor_class=models.SimlaImageProcessor,
            tokenizer_class=models.SimlaTokenizer,
            question_answering_class=models.SimlaForQuestionAnswering,
            visual_reasoning_class=models.SimlaForVisualReasoning,
            text_assignment_class=models.SimlaForTextAssignment,
            visual_entailment_class=models.SimlaForVisualEntailment,
        ),
    )
}


def model_family(model_type: str) -> ModelFamily:
    """The family of `model_type`; a clear error naming the choices otherwise."""
    if model_type not in MODEL_FAMILIES:
        raise ValueError(f"Unknown model type {model_type!r}; vlalign has {', '.join(sorted(MODEL_FAMILIES))}.")
    return MODEL_FAMILIES[model_type]


def family_of(model_or_config) -> ModelFamily:
    """The family of a model, config, or anything with a `.config` (by `model_type`); a clear error otherwise."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_FAMILIES:
        raise ValueError(
            f"{type(model_or_config).__name__} (model_type {model_type!r}) is not a vlalign model; vlalign has "
            f"{', '.join(sorted(MODEL_FAMILIES))}."
        )
    return MODEL_FAMILIES[model_type]


def register_auto_classes() -> None:
    """Register every family with the Auto classes (idempotent)."""
    for family in MODEL_FAMILIES.values():
        family.register()
    register_ve_pipeline()
    register_nlvr_pipeline()


def register_ve_pipeline() -> None:
    """Register the `visual-entailment` pipeline with `transformers.pipeline` (idempotent), loading its models with
    `AutoModelForVisualEntailment`."""
    from transformers.pipelines import PIPELINE_REGISTRY

    from .models.pipeline_ve import TASK, VisualEntailmentPipeline

    registered = PIPELINE_REGISTRY.supported_tasks.get(TASK)
    if registered is None or registered.get("impl") is not VisualEntailmentPipeline:
        PIPELINE_REGISTRY.register_pipeline(
            TASK, pipeline_class=VisualEntailmentPipeline, pt_model=AutoModelForVisualEntailment, type="multimodal"
        )


def register_nlvr_pipeline() -> None:
    """Register the `visual-reasoning` pipeline (NLVR2) with `transformers.pipeline` (idempotent), loading its models
    with `AutoModelForVisualReasoning`."""
    from transformers.pipelines import PIPELINE_REGISTRY

    from .models.pipeline_nlvr import TASK, VisualReasoningPipeline

    registered = PIPELINE_REGISTRY.supported_tasks.get(TASK)
    if registered is None or registered.get("impl") is not VisualReasoningPipeline:
        PIPELINE_REGISTRY.register_pipeline(
            TASK, pipeline_class=VisualReasoningPipeline, pt_model=AutoModelForVisualReasoning, type="multimodal"
        )


__all__ = [
    "MODEL_FAMILIES",
    "AutoModelForImageTextRetrieval",
    "AutoModelForTextAssignment",
    "AutoModelForVisualEntailment",
    "AutoModelForVisualReasoning",
    "ModelFamily",
    "family_of",
    "model_family",
    "register_auto_classes",
    "register_nlvr_pipeline",
    "register_ve_pipeline",
]
