"""The method registry: one declaration per alignment method, read by everything above the models.

Auto-class registration, the CLI (`--method`), the quick start, the Trainer's optimizer groups, evaluation (ITM
re-rank or not), the retrieval pipeline, model cards and the registry-parametrised tests all look a method up here,
by name or by a config's `model_type`. Adding a method means writing its model files and one `Method` entry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForPreTraining,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
    AutoTokenizer,
)

from .auto import AutoModelForImageTextRetrieval


@dataclass(frozen=True)
class QuickstartRecipe:
    """Settings of the quick start's from-scratch run on the built-in synthetic data (tuned per method)."""

    max_steps: int
    learning_rate: float
    batch_size: int = 32
    warmup_steps: int = 100
    weight_decay: float = 0.02
    image_size: int = 64
    bf16: bool = False
    temperature_learning_rate: float | None = None


@dataclass(frozen=True)
class Method:
    """Everything vlalign needs to know about one alignment method.

    Args:
        name: the method's name and its configs' `model_type`.
        title: human-readable name with its paper, for cards and help texts.
        config_class, model_class, pretraining_class: the `PretrainedConfig`, the downstream `AutoModel` (encoders
            and projections; what gets published) and the `AutoModelForPreTraining` training model.
        retrieval_class: the retrieval fine-tuning model (`AutoModelForImageTextRetrieval`-like), None for dual
            encoders whose `model_class` is the retrieval model.
        processor_class, image_processor_class, tokenizer_class: preprocessing, registered with the Auto classes.
        build_tokenizer: closed-vocabulary tokenizer over a list of captions (built offline, for synthetic data).
        build_processor: `(tokenizer, image_size) -> processor` with the official preprocessing at that size.
        tiny_config: `(tokenizer, image_size, **overrides) -> config`, a model that learns on a CPU in minutes.
        test_overrides: `tiny_config` overrides that shrink it further for unit tests (size caps that keep CI cheap).
        quickstart: the tuned settings of `vlalign quickstart --method NAME`.
        converter: `(checkpoint, config_files, output_dir, tokenizer, task, image_size) -> folder` for official
            checkpoints (`vlalign convert --method NAME`).
        parameter_groups: `(model, weight_decay) -> [param groups]`, the official optimizer grouping.
        card_config_rows: `model -> [(setting, value)]`, the "Model configuration" table of model cards.
        loss_names: named losses the training output carries (logged separately, listed in cards).
        supports_itm: whether retrieval can re-rank candidates with an image-text matching head.
        example_plots: `(model, processor, eval dataset, folder, log_history) -> [png paths]`, method-specific
            pictures the quick start draws for a trained model (e.g. FDT's activated codebook tokens, CODIS's codebook
            usage and prototype gallery), or None. `model` is the reloaded `model_class`, `log_history` the training
            run's `trainer.state.log_history` (a list of logged dicts; plots that do not need it ignore it).
        pretraining_inputs: `(config, processor, train_dataset) -> dict` of extra `AlignmentCollator` arguments that
            pretraining needs beyond image-caption pairs (SIMLA: the masked-image-modelling masks and image-tokenizer
            targets, with the built-in tokenizer fitted on `train_dataset`'s images), or None.
        paper: citation line for model cards.
        tags: extra Hub tags for model cards.
    """

    name: str
    title: str
    config_class: type
    model_class: type
    pretraining_class: type
    retrieval_class: type | None
    processor_class: type
    image_processor_class: type
    tokenizer_class: type
    build_tokenizer: Callable[[Iterable[str]], Any]
    build_processor: Callable[[Any, int], Any]
    tiny_config: Callable[..., Any]
    test_overrides: dict[str, Any]
    quickstart: QuickstartRecipe
    converter: Callable[..., Any]
    parameter_groups: Callable[[Any, float], list[dict]]
    card_config_rows: Callable[[Any], list[tuple[str, str]]]
    loss_names: tuple[str, ...]
    supports_itm: bool
    paper: str
    tags: tuple[str, ...] = field(default_factory=tuple)
    example_plots: Callable[..., list[Path]] | None = None
    pretraining_inputs: Callable[..., dict[str, Any]] | None = None

    @property
    def card_template(self) -> Path:
        """The method's model-card template (`model_cards/<name>.md` in the repository, shipped in the package)."""
        return Path(__file__).parent / "hub" / "templates" / f"{self.name}.md"

    @property
    def remote_code_files(self) -> tuple[str, ...]:
        """The code files a saved folder of this method carries for `trust_remote_code=True`."""
        return tuple(f"{kind}_{self.name}.py" for kind in ("configuration", "modeling", "processing", "tokenization"))

    @property
    def retrieval_model_class(self) -> type:
        """What `AutoModelForImageTextRetrieval` loads: the retrieval fine-tuning model, or the dual encoder."""
        return self.retrieval_class or self.model_class

    def pretraining_collator_kwargs(self, config: Any, processor: Any, train_dataset: Any) -> dict[str, Any]:
        """The extra `AlignmentCollator` arguments of this method's pretraining (`pretraining_inputs`), or {}."""
        if self.pretraining_inputs is None:
            return {}
        return self.pretraining_inputs(config, processor, train_dataset)

    def training_classes(self) -> tuple[type, ...]:
        return tuple(c for c in (self.pretraining_class, self.retrieval_class) if c is not None)


def _albef() -> Method:
    from .convert.albef import convert_albef_checkpoint
    from .hub.summaries import albef_config_rows
    from .models import (
        AlbefConfig,
        AlbefForImageTextRetrieval,
        AlbefForPreTraining,
        AlbefImageProcessor,
        AlbefModel,
        AlbefProcessor,
        AlbefTokenizer,
    )
    from .recipes.albef import albef_processor, build_tokenizer, tiny_albef_config
    from .training.optim import albef_parameter_groups

    return Method(
        name="albef",
        title="ALBEF (Li et al., NeurIPS 2021): Align before Fuse",
        config_class=AlbefConfig,
        model_class=AlbefModel,
        pretraining_class=AlbefForPreTraining,
        retrieval_class=AlbefForImageTextRetrieval,
        processor_class=AlbefProcessor,
        image_processor_class=AlbefImageProcessor,
        tokenizer_class=AlbefTokenizer,
        build_tokenizer=build_tokenizer,
        build_processor=albef_processor,
        tiny_config=tiny_albef_config,
        test_overrides=dict(
            width=32,
            num_heads=2,
            vision_layers=1,
            text_layers=2,
            fusion_layer=1,
            patch_size=16,
            embed_dim=16,
            queue_size=8,
        ),
        quickstart=QuickstartRecipe(max_steps=600, learning_rate=2e-3),
        converter=convert_albef_checkpoint,
        parameter_groups=albef_parameter_groups,
        card_config_rows=albef_config_rows,
        loss_names=("loss_itc", "loss_itm", "loss_mlm"),
        supports_itm=True,
        paper="Li et al., Align before Fuse: Vision and Language Representation Learning with Momentum "
        "Distillation, NeurIPS 2021 (arXiv:2107.07651)",
        tags=("albef",),
    )


def _fdt() -> Method:
    from .convert.fdt import convert_fdt_checkpoint
    from .hub.summaries import fdt_config_rows
    from .models import FdtConfig, FdtForPreTraining, FdtImageProcessor, FdtModel, FdtProcessor, FdtTokenizer
    from .models.modeling_fdt import fdt_parameter_groups
    from .recipes.fdt import build_fdt_tokenizer, fdt_processor, tiny_fdt_config
    from .visualization import fdt_example_plots

    return Method(
        name="fdt",
        title="FDT (Chen et al., CVPR 2023): CLIP with Finite Discrete Tokens",
        config_class=FdtConfig,
        model_class=FdtModel,
        pretraining_class=FdtForPreTraining,
        retrieval_class=None,
        processor_class=FdtProcessor,
        image_processor_class=FdtImageProcessor,
        tokenizer_class=FdtTokenizer,
        build_tokenizer=build_fdt_tokenizer,
        build_processor=fdt_processor,
        tiny_config=tiny_fdt_config,
        test_overrides=dict(
            width=32, num_heads=2, vision_layers=1, text_layers=1, patch_size=16, fdt_num_tokens=64, fdt_dim=16
        ),  # fmt: skip
        quickstart=QuickstartRecipe(max_steps=500, learning_rate=2e-3),
        converter=convert_fdt_checkpoint,
        parameter_groups=fdt_parameter_groups,
        card_config_rows=fdt_config_rows,
        loss_names=("loss_itc",),
        supports_itm=False,
        paper="Chen et al., Revisiting Multimodal Representation in Contrastive Learning: From Patch and Token "
        "Embeddings to Finite Discrete Tokens, CVPR 2023 (arXiv:2303.14865)",
        tags=("fdt", "clip"),
        example_plots=fdt_example_plots,
    )


def _codis() -> Method:
    from .convert.codis import convert_albef_to_codis
    from .hub.summaries import codis_config_rows
    from .models import (
        CodisConfig,
        CodisForImageTextRetrieval,
        CodisForPreTraining,
        CodisImageProcessor,
        CodisModel,
        CodisProcessor,
        CodisTokenizer,
    )
    from .recipes.codis import build_codis_tokenizer, codis_processor, tiny_codis_config
    from .training.optim import albef_parameter_groups
    from .visualization import codis_example_plots

    albef = get_method("albef")
    return Method(
        name="codis",
        title="CODIS (Duan et al., CVPR 2022): Multi-modal Alignment using Representation Codebook",
        config_class=CodisConfig,
        model_class=CodisModel,
        pretraining_class=CodisForPreTraining,
        retrieval_class=CodisForImageTextRetrieval,
        processor_class=CodisProcessor,
        image_processor_class=CodisImageProcessor,
        tokenizer_class=CodisTokenizer,
        build_tokenizer=build_codis_tokenizer,
        build_processor=codis_processor,
        tiny_config=tiny_codis_config,
        test_overrides=dict(albef.test_overrides, codebook_size=12),
        quickstart=QuickstartRecipe(max_steps=600, learning_rate=2e-3),
        converter=convert_albef_to_codis,
        parameter_groups=albef_parameter_groups,
        card_config_rows=codis_config_rows,
        loss_names=("loss_align", "loss_code", "loss_ot", "loss_itm", "loss_mlm"),
        supports_itm=True,
        paper="Duan et al., Multi-modal Alignment using Representation Codebook, CVPR 2022 (arXiv:2203.00048)",
        tags=("codis", "albef"),
        example_plots=codis_example_plots,
    )


def _simla() -> Method:
    from .convert.simla import convert_simla_checkpoint
    from .hub.summaries import simla_config_rows
    from .models import (
        SimlaConfig,
        SimlaForImageTextRetrieval,
        SimlaForPreTraining,
        SimlaImageProcessor,
        SimlaModel,
        SimlaProcessor,
        SimlaTokenizer,
    )
    from .recipes.simla import build_simla_tokenizer, simla_pretraining_inputs, simla_processor, tiny_simla_config
    from .training.optim import albef_parameter_groups
    from .visualization import simla_example_plots

    albef_overrides = {k: v for k, v in get_method("albef").test_overrides.items() if k != "fusion_layer"}
    return Method(
        name="simla",
        title="SIMLA (Khan et al., ECCV 2022): Single-Stream Multi-Level Alignment",
        config_class=SimlaConfig,
        model_class=SimlaModel,
        pretraining_class=SimlaForPreTraining,
        retrieval_class=SimlaForImageTextRetrieval,
        processor_class=SimlaProcessor,
        image_processor_class=SimlaImageProcessor,
        tokenizer_class=SimlaTokenizer,
        build_tokenizer=build_simla_tokenizer,
        build_processor=simla_processor,
        tiny_config=tiny_simla_config,
        test_overrides=dict(albef_overrides, mim_vocab_size=16),
        # the temperature at the official 1e-4: at 2e-3 it fell to ~0.007 within 500 steps and ITC stalled
        quickstart=QuickstartRecipe(max_steps=400, learning_rate=2e-3, temperature_learning_rate=1e-4),
        converter=convert_simla_checkpoint,
        parameter_groups=albef_parameter_groups,
        card_config_rows=simla_config_rows,
        loss_names=("loss_itc", "loss_itm", "loss_mlm", "loss_mim", "loss_psl"),
        supports_itm=True,
        paper="Khan et al., Single-Stream Multi-Level Alignment for Vision-Language Pretraining, ECCV 2022 "
        "(arXiv:2203.14395)",
        tags=("simla", "albef"),
        example_plots=simla_example_plots,
        pretraining_inputs=simla_pretraining_inputs,
    )


_FACTORIES: dict[str, Callable[[], Method]] = {"albef": _albef, "codis": _codis, "fdt": _fdt, "simla": _simla}
_METHODS: dict[str, Method] = {}


def method_names() -> list[str]:
    return sorted(_FACTORIES)


def get_method(name: str) -> Method:
    """The registered method called `name` (a `model_type`); a clear error naming the choices otherwise."""
    if name not in _FACTORIES:
        raise ValueError(f"Unknown method {name!r}; vlalign has {', '.join(method_names())}.")
    if name not in _METHODS:
        _METHODS[name] = _FACTORIES[name]()
    return _METHODS[name]


def all_methods() -> list[Method]:
    return [get_method(name) for name in method_names()]


def method_of(model_or_config: Any) -> Method:
    """The method of a model, config, or anything with a `.config` (by `model_type`)."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in _FACTORIES:
        raise ValueError(
            f"{type(model_or_config).__name__} (model_type {model_type!r}) is not a vlalign model; vlalign has "
            f"{', '.join(method_names())}."
        )
    return get_method(model_type)


def register_auto_classes(methods: Sequence[Method] | None = None) -> None:
    """Register every method with the Auto classes, and for remote code so saved folders ship their code."""
    for method in methods or all_methods():
        config_class = method.config_class
        AutoConfig.register(method.name, config_class, exist_ok=True)
        AutoModel.register(config_class, method.model_class, exist_ok=True)
        AutoModelForPreTraining.register(config_class, method.pretraining_class, exist_ok=True)
        AutoModelForZeroShotImageClassification.register(config_class, method.model_class, exist_ok=True)
        AutoImageProcessor.register(config_class, image_processor_classes={"pil": method.image_processor_class},
                                    exist_ok=True)  # fmt: skip
        AutoTokenizer.register(config_class, tokenizer_class=method.tokenizer_class, exist_ok=True)
        AutoProcessor.register(config_class, method.processor_class, exist_ok=True)
        AutoModelForImageTextRetrieval.register(config_class, method.retrieval_model_class, exist_ok=True)

        config_class.register_for_auto_class()
        method.model_class.register_for_auto_class("AutoModel")
        method.pretraining_class.register_for_auto_class("AutoModelForPreTraining")
        method.image_processor_class.register_for_auto_class("AutoImageProcessor")
        method.tokenizer_class.register_for_auto_class("AutoTokenizer")
        method.processor_class.register_for_auto_class()


__all__ = [
    "Method",
    "QuickstartRecipe",
    "all_methods",
    "get_method",
    "method_names",
    "method_of",
    "register_auto_classes",
]
