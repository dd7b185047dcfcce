"""The method registry: one entry per alignment method, at the top of the package.

The CLI (`--method`), the quick start and the registry-parametrised tests look a method up here, by name or by a
config's `model_type`. An entry only points: at the method's classes (`vlalign.auto.MODEL_FAMILIES`, which importing
vlalign registers with the Auto classes), its tiny recipe, its converter and its quick-start plots. Everything below
(models, data, conversion, training, evaluation, hub) asks the model classes themselves, never this module.
Adding a method: docs/adding_a_method.md.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .auto import MODEL_FAMILIES, ModelFamily, family_of
from .auto import register_auto_classes as auto_register_auto_classes


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
class VqaQuickstartRecipe:
    """Settings of `vlalign quickstart --task vqa`: fine-tuning the quick start's pretrained model on the built-in
    synthetic VQA set (tuned per method), and `k`, the candidates the answer ranking re-scores."""

    max_steps: int
    learning_rate: float
    batch_size: int = 32
    warmup_steps: int = 50
    weight_decay: float = 0.02
    k: int = 16


@dataclass(frozen=True)
class ReasoningQuickstartRecipe:
    """Settings of `vlalign quickstart --task ve` / `--task nlvr2`: fine-tuning the quick start's pretrained model on
    the built-in synthetic SNLI-VE or NLVR2 set (tuned per method); `num_train`: training images (VE) or pairs (NLVR2)."""

    max_steps: int
    learning_rate: float
    num_train: int = 2000
    batch_size: int = 32
    warmup_steps: int = 50
    weight_decay: float = 0.02


@dataclass(frozen=True)
class Method:
    """What the CLI, the quick start and the tests need to know about one alignment method, beyond its models.

    The models answer for themselves (`vlalign.auto.MODEL_FAMILIES`, class attributes such as `supports_itm_rerank`,
    `model.optimizer_parameter_groups(weight_decay)`, the config class's `method_title` / `method_paper` /
    `hub_tags`); the registry points at them and adds the tiny recipe, the converter and the quick start's plots.

    Args:
        family: the method's classes (config, models, processor, image processor, tokenizer), as registered with the
            Auto classes.
        build_tokenizer: closed-vocabulary tokenizer over a list of captions (built offline, for synthetic data).
        build_processor: `(tokenizer, image_size) -> processor` with the official preprocessing at that size.
        tiny_config: `(tokenizer, image_size, **overrides) -> config`, a model that learns on a CPU in minutes.
        test_overrides: `tiny_config` overrides that shrink it further for unit tests (size caps that keep CI cheap).
        quickstart: the tuned settings of `vlalign quickstart --method NAME`.
        converter: `(checkpoint, config_files, output_dir, tokenizer, task, image_size) -> folder` for official
            checkpoints (`vlalign convert --method NAME`).
        loss_names: named losses the pretraining output carries (logged separately, listed in cards).
        example_plots: `(model, processor, eval dataset, folder, log_history) -> [png paths]`, method-specific
            pictures the quick start draws for a trained model (e.g. FDT's activated codebook tokens, CODIS's codebook
            usage and prototype gallery), or None. `model` is the reloaded `model_class`, `log_history` the training
            run's `trainer.state.log_history` (a list of logged dicts; plots that do not need it ignore it).
        pretraining_inputs: `(config, processor, train_dataset) -> dict` of extra `AlignmentCollator` arguments that
            pretraining needs beyond image-caption pairs (SIMLA: the masked-image-modelling masks and image-tokenizer
            targets, with the built-in tokenizer fitted on `train_dataset`'s images), or None.
        vqa_quickstart: the tuned settings of `vlalign quickstart --task vqa --method NAME`; None for a method
            without a VQA model.
    """

    family: ModelFamily
    build_tokenizer: Callable[[Iterable[str]], Any]
    build_processor: Callable[[Any, int], Any]
    tiny_config: Callable[..., Any]
    test_overrides: dict[str, Any]
    quickstart: QuickstartRecipe
    converter: Callable[..., Any]
    loss_names: tuple[str, ...]
    example_plots: Callable[..., list[Path]] | None = None
    pretraining_inputs: Callable[..., dict[str, Any]] | None = None
    vqa_quickstart: VqaQuickstartRecipe | None = None
    ve_quickstart: ReasoningQuickstartRecipe | None = None
    nlvr_quickstart: ReasoningQuickstartRecipe | None = None

    @property
    def name(self) -> str:
        """The method's name: its configs' `model_type`."""
        return self.family.model_type

    @property
    def config_class(self) -> type:
        return self.family.config_class

    @property
    def model_class(self) -> type:
        """The downstream `AutoModel` (encoders and projections; what gets published)."""
        return self.family.model_class

    @property
    def pretraining_class(self) -> type:
        return self.family.pretraining_class

    @property
    def retrieval_class(self) -> type | None:
        return self.family.retrieval_class

    @property
    def retrieval_model_class(self) -> type:
        return self.family.retrieval_model_class

    @property
    def processor_class(self) -> type:
        return self.family.processor_class

    @property
    def image_processor_class(self) -> type:
        return self.family.image_processor_class

    @property
    def tokenizer_class(self) -> type:
        return self.family.tokenizer_class

    @property
    def title(self) -> str:
        return self.config_class.method_title

    @property
    def card_template(self) -> Path:
        """The method's model-card template (`model_cards/<name>.md` in the repository, shipped in the package)."""
        return Path(__file__).parent / "hub" / "templates" / f"{self.name}.md"

    @property
    def paper(self) -> str:
        """Deprecated: the config class's `method_paper`."""
        return _deprecated("Method.paper", "config_class.method_paper", self.config_class.method_paper)

    @property
    def tags(self) -> tuple[str, ...]:
        """Deprecated: the config class's `hub_tags`."""
        return _deprecated("Method.tags", "config_class.hub_tags", self.config_class.hub_tags)

    @property
    def card_config_rows(self) -> Callable[[Any], list[tuple[str, str]]]:
        """Deprecated: `vlalign.hub.summaries.config_rows(model)`."""
        from .hub.summaries import config_rows

        return _deprecated("Method.card_config_rows", "vlalign.hub.summaries.config_rows", config_rows)

    @property
    def parameter_groups(self) -> Callable[[Any, float], list[dict]]:
        """Deprecated: `model.optimizer_parameter_groups(weight_decay)`."""
        return _deprecated(
            "Method.parameter_groups",
            "model.optimizer_parameter_groups(weight_decay)",
            lambda model, weight_decay: model.optimizer_parameter_groups(weight_decay),
        )

    @property
    def supports_itm_rerank(self) -> bool:
        """Whether retrieval can re-rank candidates with an image-text matching head (the model class says so)."""
        return self.model_class.supports_itm_rerank

    @property
    def supports_itm(self) -> bool:
        """Deprecated: `supports_itm_rerank` (or the model class's own attribute)."""
        return _deprecated("Method.supports_itm", "the model class's supports_itm_rerank", self.supports_itm_rerank)

    def pretraining_collator_kwargs(self, config: Any, processor: Any, train_dataset: Any) -> dict[str, Any]:
        """The extra `AlignmentCollator` arguments of this method's pretraining (`pretraining_inputs`), or {}."""
        if self.pretraining_inputs is None:
            return {}
        return self.pretraining_inputs(config, processor, train_dataset)

    def training_classes(self) -> tuple[type, ...]:
        return self.family.training_classes


def _deprecated(old: str, new: str, value: Any) -> Any:
    """`value`, with a `FutureWarning` that `old` is deprecated in favour of `new`."""
    warnings.warn(f"{old} is deprecated; use {new}.", FutureWarning, stacklevel=3)
    return value


def register_auto_classes() -> None:
    """Deprecated: `vlalign.auto.register_auto_classes()` (importing vlalign already registers every family)."""
    _deprecated("vlalign.methods.register_auto_classes", "vlalign.auto.register_auto_classes", None)
    auto_register_auto_classes()


def _albef() -> Method:
    from .convert.albef import convert_albef_checkpoint
    from .recipes.albef import albef_processor, build_tokenizer, tiny_albef_config

    return Method(
        family=MODEL_FAMILIES["albef"],
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
        vqa_quickstart=VqaQuickstartRecipe(max_steps=400, learning_rate=5e-4),
        ve_quickstart=ReasoningQuickstartRecipe(max_steps=300, learning_rate=5e-4),
        nlvr_quickstart=ReasoningQuickstartRecipe(max_steps=200, learning_rate=5e-4),
        converter=convert_albef_checkpoint,
        loss_names=("loss_itc", "loss_itm", "loss_mlm"),
    )


def _fdt() -> Method:
    from .convert.fdt import convert_fdt_checkpoint
    from .recipes.fdt import build_fdt_tokenizer, fdt_processor, tiny_fdt_config
    from .visualization import fdt_example_plots

    return Method(
        family=MODEL_FAMILIES["fdt"],
        build_tokenizer=build_fdt_tokenizer,
        build_processor=fdt_processor,
        tiny_config=tiny_fdt_config,
        test_overrides=dict(
            width=32, num_heads=2, vision_layers=1, text_layers=1, patch_size=16, fdt_num_tokens=64, fdt_dim=16
        ),  # fmt: skip
        quickstart=QuickstartRecipe(max_steps=500, learning_rate=2e-3),
        converter=convert_fdt_checkpoint,
        loss_names=("loss_itc",),
        example_plots=fdt_example_plots,
    )


def _codis() -> Method:
    from .convert.codis import convert_albef_to_codis
    from .recipes.codis import build_codis_tokenizer, codis_processor, tiny_codis_config
    from .visualization import codis_example_plots

    return Method(
        family=MODEL_FAMILIES["codis"],
        build_tokenizer=build_codis_tokenizer,
        build_processor=codis_processor,
        tiny_config=tiny_codis_config,
        test_overrides=dict(get_method("albef").test_overrides, codebook_size=12),
        quickstart=QuickstartRecipe(max_steps=600, learning_rate=2e-3),
        vqa_quickstart=VqaQuickstartRecipe(max_steps=400, learning_rate=5e-4),
        ve_quickstart=ReasoningQuickstartRecipe(max_steps=300, learning_rate=5e-4),
        nlvr_quickstart=ReasoningQuickstartRecipe(max_steps=200, learning_rate=5e-4),
        converter=convert_albef_to_codis,
        loss_names=("loss_align", "loss_code", "loss_ot", "loss_itm", "loss_mlm"),
        example_plots=codis_example_plots,
    )


def _simla() -> Method:
    from .convert.simla import convert_simla_checkpoint
    from .recipes.simla import build_simla_tokenizer, simla_pretraining_inputs, simla_processor, tiny_simla_config
    from .visualization import simla_example_plots

    albef_overrides = {k: v for k, v in get_method("albef").test_overrides.items() if k != "fusion_layer"}
    return Method(
        family=MODEL_FAMILIES["simla"],
        build_tokenizer=build_simla_tokenizer,
        build_processor=simla_processor,
        tiny_config=tiny_simla_config,
        test_overrides=dict(albef_overrides, mim_vocab_size=16),
        # the temperature at the official 1e-4: at 2e-3 it fell to ~0.007 within 500 steps and ITC stalled; 320 steps
        # keep the whole command under 3 minutes on 2 idle cores (400 took 196 s of quick start, R@1 38 / 32 %)
        quickstart=QuickstartRecipe(max_steps=320, learning_rate=2e-3, temperature_learning_rate=1e-4),
        vqa_quickstart=VqaQuickstartRecipe(max_steps=400, learning_rate=5e-4),
        ve_quickstart=ReasoningQuickstartRecipe(max_steps=300, learning_rate=5e-4),
        nlvr_quickstart=ReasoningQuickstartRecipe(max_steps=200, learning_rate=5e-4),
        converter=convert_simla_checkpoint,
        loss_names=("loss_itc", "loss_itm", "loss_mlm", "loss_mim", "loss_psl"),
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
    return get_method(family_of(model_or_config).model_type)


__all__ = [
    "Method",
    "QuickstartRecipe",
    "ReasoningQuickstartRecipe",
    "VqaQuickstartRecipe",
    "all_methods",
    "get_method",
    "method_names",
    "method_of",
    "register_auto_classes",
]
