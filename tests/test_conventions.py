"""transformers' model conventions, checked on every model class of every registered method (as timm tests every
registered model, and as transformers' `ModelTesterMixin` checks each of its models): the `<M>Model`, the training
classes (`<M>ForPreTraining`, `<M>ForImageTextRetrieval`, `<M>ForQuestionAnswering`) and the towers they are built from (every `PreTrainedModel`
inside the `<M>Model`, e.g. `AlbefVisionModel`, `FdtTextModel`), each at its method's tiny test size. A new method
joins by registering in `vlalign.methods`; a new tower by being a `PreTrainedModel` inside its `<M>Model`.

The checks: `main_input_name`, unknown arguments refused, `return_dict=False`, attentions and hidden states (argument
and config), the image/text feature outputs, `get_input_embeddings` / `set_input_embeddings`, weight initialisation
(fresh, on the meta device, and for weights a checkpoint lacks), safetensors save/load and bfloat16 loading,
`resize_token_embeddings`, eager vs SDPA attention, gradient checkpointing, and a finite gradient for every trainable
parameter of the training classes. Tower inputs are what the `<M>Model` itself passes to the tower."""

from __future__ import annotations

import copy
import functools
import inspect
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from vlalign.data.collator import AlignmentCollator
from vlalign.data.synthetic import make_synthetic_dataset
from vlalign.methods import all_methods, get_method
from vlalign.models.weights_check import CHECKSUMS_NAME
from vlalign.recipes import dataset_captions

IMAGE_SIZE = 32
BATCH = 4
FLAGS = ("output_attentions", "output_hidden_states", "return_dict")

# ---------------------------------------------------------------------------------------------------------------------
# The cases: (method, model class) for every registered method
# ---------------------------------------------------------------------------------------------------------------------


def _tower_paths(model_class: type, config_class: type) -> list[tuple[str, type]]:
    """(attribute path, class) of every `PreTrainedModel` inside `model_class`, first occurrence of each class (built
    on the meta device at the default size: nothing is allocated)."""
    with torch.device("meta"):
        model = model_class(config_class())
    towers: dict[type, str] = {}
    for path, module in model.named_modules():
        if module is not model and isinstance(module, PreTrainedModel):
            towers.setdefault(type(module), path)
    return [(path, cls) for cls, path in towers.items()]


@dataclass(frozen=True)
class CaseSpec:
    method: str
    role: str  # "model", "pretraining", "retrieval", "question_answering", "visual_entailment" or "tower"
    cls: type
    tower_path: str | None = None
    owner: str = "model"  # the role of the model a tower is found in: "model", or "question_answering" (its decoder)

    @property
    def id(self) -> str:
        return f"{self.method}-{self.cls.__name__}"


def _case_specs() -> list[CaseSpec]:
    specs = []
    for method in all_methods():
        roles = [("model", method.model_class), ("pretraining", method.pretraining_class)]
        if method.retrieval_class is not None:
            roles.append(("retrieval", method.retrieval_class))
        if method.family.question_answering_class is not None:
            roles.append(("question_answering", method.family.question_answering_class))
        if method.family.visual_entailment_class is not None:
            roles.append(("visual_entailment", method.family.visual_entailment_class))
        for role in ("visual_reasoning", "text_assignment"):
            if (model_class := getattr(method.family, f"{role}_class", None)) is not None:
                roles.append((role, model_class))
        specs += [CaseSpec(method.name, role, cls) for role, cls in roles]
        towers = _tower_paths(method.model_class, method.config_class)
        specs += [CaseSpec(method.name, "tower", cls, path) for path, cls in towers]
        if method.family.question_answering_class is not None:  # its own towers: the answer decoder
            known = {cls for _, cls in towers}
            for path, cls in _tower_paths(method.family.question_answering_class, method.config_class):
                if cls not in known:
                    specs.append(CaseSpec(method.name, "tower", cls, path, owner="question_answering"))
    return specs


SPECS = _case_specs()


@dataclass
class Case:
    """One model class of one method at its tiny test size, with inputs for its forward."""

    spec: CaseSpec
    config: Any
    inputs: dict[str, Any]
    towers: list[nn.Module] = field(default_factory=list)  # the model's towers (for their layer counts)

    @property
    def cls(self) -> type:
        return self.spec.cls

    def build(self, seed: int = 0, attn_implementation: str | None = None) -> PreTrainedModel:
        torch.manual_seed(seed)
        config = copy.deepcopy(self.config)
        if attn_implementation is None:
            return self.cls(config)
        return self.cls._from_config(config, attn_implementation=attn_implementation)

    def forward(self, model: nn.Module, inputs: dict[str, Any] | None = None, **kwargs) -> Any:
        """`model(**inputs, **kwargs)`, with a fixed generator for the random draws of training forwards (masking,
        hard negatives), so that two calls see the same draws."""
        inputs = dict(self.inputs if inputs is None else inputs)
        if "generator" in forward_parameters(self.cls):
            inputs["generator"] = torch.Generator().manual_seed(0)
        return model(**inputs, **kwargs)


def forward_parameters(cls: type) -> list[str]:
    return list(inspect.signature(cls.forward).parameters)[1:]


@functools.cache
def method_context(name: str) -> dict[str, Any]:
    """The tiny config, a pretraining batch and the towers' inputs of method `name` (built once per test session)."""
    method = get_method(name)
    dataset = make_synthetic_dataset(num_train=8, num_validation=0, num_test=0, image_size=IMAGE_SIZE, seed=5)
    processor = method.build_processor(method.build_tokenizer(dataset_captions(dataset)), IMAGE_SIZE)
    config = method.tiny_config(processor.tokenizer, IMAGE_SIZE, **method.test_overrides)
    extra = method.pretraining_collator_kwargs(config, processor, dataset["train"])
    collator = AlignmentCollator(processor, preset="pretrain", text_column="captions", **extra)
    batch = collator([dataset["train"][i] for i in range(BATCH)])
    pair = {key: batch[key] for key in ("pixel_values", "input_ids", "attention_mask")}

    torch.manual_seed(0)
    model = method.model_class(copy.deepcopy(config)).eval()
    tower_inputs: dict[str, dict[str, Any]] = {}

    def recorder(path: str):
        def hook(module, args, kwargs):
            bound = inspect.signature(type(module).forward).bind(module, *args, **kwargs).arguments
            inputs = {key: value for key, value in list(bound.items())[1:] if key != "kwargs"} | bound.get(
                "kwargs", {}
            )
            inputs = {
                key: value.detach().clone() if isinstance(value, torch.Tensor) else value
                for key, value in inputs.items()
                if key not in FLAGS
            }
            # the richest call (most tensors): the fusion encoder with image tokens rather than in text-only mode
            if tensor_count(inputs) > tensor_count(tower_inputs.get(path, {})):
                tower_inputs[path] = inputs

        return hook

    specs = [spec for spec in SPECS if spec.method == name and spec.role == "tower"]
    paths = [spec.tower_path for spec in specs if spec.owner == "model"]
    # towers the model's forward does not run (ALBEF's fusion encoder serves `itm_score`) get what the pretraining
    # forward passes the same tower of its online model
    pretraining = method.pretraining_class(copy.deepcopy(config)).eval()
    runs = [(model, model, pair, paths), (pretraining, pretraining.base_model, batch, paths)]
    owners = {"model": model}
    if method.family.question_answering_class is not None:
        owners["question_answering"] = method.family.question_answering_class(copy.deepcopy(config)).eval()
        answered = {**pair, **vqa_answers(config.text_config, pair["input_ids"])}
        own_paths = [spec.tower_path for spec in specs if spec.owner == "question_answering"]
        runs.append((owners["question_answering"], owners["question_answering"], answered, own_paths))
    for runner, online, inputs, run_paths in runs:
        handles = [
            online.get_submodule(path).register_forward_pre_hook(recorder(path), with_kwargs=True)
            for path in run_paths
        ]
        with torch.no_grad():
            runner(**inputs)
        for handle in handles:
            handle.remove()
    return {
        "config": config,
        "batch": batch,
        "owners": owners,
        "tower_inputs": tower_inputs,
        "towers": {role: towers_of(owner) for role, owner in owners.items()},
    }


def towers_of(model: nn.Module) -> list[nn.Module]:
    return [module for module in model.modules() if module is not model and isinstance(module, PreTrainedModel)]


def tensor_count(inputs: dict[str, Any]) -> int:
    return sum(isinstance(value, torch.Tensor) for value in inputs.values())


def make_case(spec: CaseSpec) -> Case:
    context = method_context(spec.method)
    if spec.role == "tower":
        tower = context["owners"][spec.owner].get_submodule(spec.tower_path)
        return Case(spec, tower.config, context["tower_inputs"][spec.tower_path], [tower])
    parameters = forward_parameters(spec.cls)
    inputs = {key: value for key, value in context["batch"].items() if key in parameters}
    if spec.role == "retrieval":
        inputs["idx"] = torch.tensor([0, 1, 1, 2])  # two captions of one image
    if spec.role == "question_answering":
        inputs.update(vqa_answers(context["config"].text_config, context["batch"]["input_ids"]))
        return Case(spec, context["config"], inputs, context["towers"]["question_answering"])
    if spec.role == "visual_entailment":  # one label of each class; its towers are its own (momentum copies too)
        inputs["labels"] = torch.arange(len(inputs["input_ids"])) % 3
        return Case(spec, context["config"], inputs, towers_of(spec.cls(copy.deepcopy(context["config"]))))
    if spec.role in ("visual_reasoning", "text_assignment"):  # its towers are its own (two-image fusion, momentum)
        if spec.role == "visual_reasoning":  # two images per sentence, one label of each class
            pixel_values = context["batch"]["pixel_values"]
            inputs["pixel_values"] = torch.stack([pixel_values, pixel_values.roll(1, 0)], 1)
            inputs["labels"] = torch.arange(len(inputs["input_ids"])) % 2
        return Case(spec, context["config"], inputs, towers_of(spec.cls(copy.deepcopy(context["config"]))))
    return Case(spec, context["config"], inputs, context["towers"]["model"])


def vqa_answers(text_config, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Answer rows for a VQA training forward: two answers for the first question (one of them padded), one for each
    other, "[CLS] w w [SEP]" with words taken from the captions."""
    words = torch.cat([input_ids[:1, 1:3], input_ids[:, 2:4]])
    cls = torch.full((len(words), 1), text_config.cls_token_id)
    sep = torch.full((len(words), 1), text_config.sep_token_id)
    answer_input_ids = torch.cat([cls, words, sep], dim=1)
    answer_input_ids[0, 2:] = torch.tensor([text_config.sep_token_id, text_config.pad_token_id])
    return {
        "answer_input_ids": answer_input_ids,
        "answer_attention_mask": (answer_input_ids != text_config.pad_token_id).long(),
        "answer_weights": torch.tensor([0.7, 0.3, 1.0, 1.0, 1.0]),
        "answers_per_question": torch.tensor([2, 1, 1, 1]),
    }


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=SPECS, ids=[spec.id for spec in SPECS])
def case(request) -> Case:
    return make_case(request.param)


TRAINING_ROLES = (
    "pretraining", "retrieval", "question_answering", "visual_entailment", "visual_reasoning", "text_assignment"
)  # fmt: skip
TRAINING_SPECS = [spec for spec in SPECS if spec.role in TRAINING_ROLES]
SDPA_SPECS = [spec for spec in SPECS if spec.cls._supports_sdpa]


@pytest.fixture(scope="module", params=TRAINING_SPECS, ids=[spec.id for spec in TRAINING_SPECS])
def training_case(request) -> Case:
    return make_case(request.param)


# ---------------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------------


def flat_tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor in an output, depth first (nested ModelOutputs, tuples and lists)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, ModelOutput):
        value = value.to_tuple()
    if isinstance(value, (tuple, list)):
        return [tensor for item in value for tensor in flat_tensors(item)]
    return []


def assert_same_outputs(actual: Any, expected: Any, **tolerances) -> None:
    actual, expected = flat_tensors(actual), flat_tensors(expected)
    assert len(actual) == len(expected)
    for index, (got, want) in enumerate(zip(actual, expected, strict=True)):
        torch.testing.assert_close(
            got, want, **tolerances, msg=lambda message, index=index: f"output tensor {index}: {message}"
        )


def captures(output: Any, path: str = "output") -> list[tuple[str, ModelOutput]]:
    """(path, node) of every ModelOutput in `output` (itself included) with an attentions or hidden-states field."""
    found = []
    if isinstance(output, ModelOutput):
        fields = [name for name in output.__dataclass_fields__ if name.endswith(("attentions", "hidden_states"))]
        if fields:
            found.append((path, output))
        for name in output.__dataclass_fields__:
            found += captures(getattr(output, name), f"{path}.{name}")
    return found


def captured_fields(output: Any) -> dict[str, Any]:
    """`{path.field: value}` of every attentions / hidden-states field of an output."""
    return {
        f"{path}.{name}": getattr(node, name)
        for path, node in captures(output)
        for name in node.__dataclass_fields__
        if name.endswith(("attentions", "hidden_states")) and name != "last_hidden_state"
    }


def recorded_class(tower: PreTrainedModel, key: str) -> type | None:
    """The module class `capture_outputs` records `key` from in `tower` (its `_can_record_outputs`)."""
    recorder = (getattr(tower, "_can_record_outputs", None) or {}).get(key)
    if isinstance(recorder, list):  # e.g. the embeddings, then the layers: the last names the layers
        recorder = recorder[-1]
    return getattr(recorder, "target_class", recorder)


def layer_count(tower: PreTrainedModel) -> int:
    """How many layers of `tower` give a hidden state (one attention map each)."""
    layer_class = recorded_class(tower, "hidden_states")
    return sum(isinstance(module, layer_class) for module in tower.modules())


def heads_of(config: Any) -> set[int]:
    configs = [config, *(getattr(config, name, None) for name in ("vision_config", "text_config"))]
    return {c.num_attention_heads for c in configs if c is not None and hasattr(c, "num_attention_heads")}


def text_vocab_size(config: Any) -> int:
    return config.get_text_config().vocab_size


def takes_text(cls: type) -> bool:
    return "input_ids" in forward_parameters(cls)


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def fresh_states(case: Case, seeds=(1, 2, 3)) -> list[dict[str, torch.Tensor]]:
    return [state_of(case.build(seed=seed)) for seed in seeds]


def assert_initialised_like(state: dict[str, torch.Tensor], fresh: list[dict[str, torch.Tensor]], keys) -> None:
    """The tensors `keys` of `state` are finite and drawn as fresh models' (`fresh`, other seeds): constants
    (pointers, indices, LayerNorm, zero biases, temperatures) exactly, random tensors with the same spread."""
    for key in keys:
        value, reference = state[key], fresh[0][key]
        assert value.shape == reference.shape, key
        assert torch.isfinite(value.float()).all(), f"{key} is not finite: left uninitialised"
        if not value.is_floating_point() or value.numel() == 1 or reference.std() == 0:
            assert torch.equal(value, reference), f"{key}: {value.flatten()[:4]} instead of {reference.flatten()[:4]}"
        else:  # a sample's spread is known to about 1/sqrt(2n): small tensors get more room
            expected = torch.stack([other[key].std() ** 2 for other in fresh]).mean().sqrt().item()
            tolerance = min(0.8, max(0.3, 4 / value.numel() ** 0.5))
            assert value.std().item() == pytest.approx(expected, rel=tolerance), key


# ---------------------------------------------------------------------------------------------------------------------
# Signatures and outputs
# ---------------------------------------------------------------------------------------------------------------------


def test_every_method_has_its_classes_and_towers():
    for method in all_methods():
        classes = {spec.cls for spec in SPECS if spec.method == method.name}
        assert {method.model_class, *method.training_classes()} <= classes
    assert {spec.cls.__name__ for spec in SPECS if spec.role == "tower"} >= {"AlbefVisionModel", "FdtTextModel"}


@pytest.mark.parametrize("spec", SPECS, ids=[spec.id for spec in SPECS])
def test_main_input_name_is_the_first_forward_argument(spec):
    assert spec.cls.main_input_name == forward_parameters(spec.cls)[0]


def test_unknown_keyword_arguments_are_refused(case):
    model = case.build().eval()
    with torch.no_grad(), pytest.raises(TypeError, match="lables"):
        case.forward(model, lables=None)


@pytest.mark.parametrize("captured", [False, True], ids=["plain", "with_attentions_and_hidden_states"])
def test_return_dict_false_gives_the_output_as_a_tuple(case, captured):
    model = case.build(attn_implementation="eager").eval()
    flags = dict(output_attentions=True, output_hidden_states=True) if captured else {}
    with torch.no_grad():
        as_output = case.forward(model, **flags)
        as_tuple = case.forward(model, return_dict=False, **flags)
    assert isinstance(as_output, ModelOutput) and isinstance(as_tuple, tuple)
    assert len(as_tuple) == len(as_output.to_tuple())
    assert_same_outputs(as_tuple, as_output.to_tuple())


def check_captures(case: Case, model: PreTrainedModel, output: Any) -> None:
    """Attentions and hidden states present, one per layer of the tower that gave them, with their shapes."""
    nodes = captures(output)
    assert any(node.attentions is not None for _, node in nodes if hasattr(node, "attentions")), "no attentions"
    assert any(getattr(node, "hidden_states", None) is not None for _, node in nodes), "no hidden states"
    heads = heads_of(case.config)
    if case.spec.role == "tower":
        layers = {layer_count(model)}
    else:
        layers = {layer_count(tower) for tower in case.towers}
    for path, node in nodes:
        hidden_states = getattr(node, "hidden_states", None)
        maps = {name: getattr(node, name) for name in node.__dataclass_fields__ if name.endswith("attentions")}
        for name, attentions in maps.items():
            assert attentions is not None, f"{path}.{name} missing"
            assert len(attentions) in layers, f"{path}.{name}: {len(attentions)} maps for towers of {layers} layers"
            for attention in attentions:
                assert attention.ndim == 4 and attention.shape[1] in heads, f"{path}.{name}: {attention.shape}"
                torch.testing.assert_close(attention.sum(-1), torch.ones(attention.shape[:-1]), msg=path)
        assert hidden_states is not None, f"{path}.hidden_states missing"
        if maps.get("attentions") is not None:
            assert len(hidden_states) == len(maps["attentions"]) + 1, f"{path}: {len(hidden_states)} hidden states"
        widths = {state.shape[-1] for state in hidden_states}
        assert all(state.ndim == 3 for state in hidden_states) and len(widths) == 1, path
        if case.spec.role == "tower":
            batch, length, width = node.last_hidden_state.shape
            assert all(state.shape == (batch, length, width) for state in hidden_states), path
            for name, attentions in maps.items():
                assert all(a.shape[0] == batch and a.shape[2] == length for a in attentions), f"{path}.{name}"
            assert all(a.shape[-1] == length for a in maps["attentions"]), f"{path}: self-attention is not square"


def test_attentions_and_hidden_states_on_request(case):
    model = case.build(attn_implementation="eager").eval()
    with torch.no_grad():
        plain = case.forward(model)
        asked = case.forward(model, output_attentions=True, output_hidden_states=True)
    fields = captured_fields(plain)
    assert fields and all(value is None for value in fields.values()), f"captured unasked: {fields.keys()}"
    check_captures(case, model, asked)
    assert_same_outputs(
        [asked[key] for key in ("loss", "logits_per_image", "last_hidden_state") if key in asked],
        [plain[key] for key in ("loss", "logits_per_image", "last_hidden_state") if key in plain],
    )


def test_attentions_and_hidden_states_from_the_config(case):
    model = case.build(attn_implementation="eager").eval()
    with torch.no_grad():
        asked = case.forward(model, output_attentions=True, output_hidden_states=True)
        model.config.output_attentions = model.config.output_hidden_states = True
        from_config = case.forward(model)
        overridden = case.forward(model, output_attentions=False, output_hidden_states=False)
    expected = {key for key, value in captured_fields(asked).items() if value is not None}
    got = {key for key, value in captured_fields(from_config).items() if value is not None}
    assert got == expected
    check_captures(case, model, from_config)
    assert all(value is None for value in captured_fields(overridden).values())


@pytest.mark.parametrize("spec", [s for s in SPECS if s.role == "model"], ids=lambda s: s.id)
def test_image_and_text_features(spec):
    case = make_case(spec)
    model = case.build().eval()
    pixels, ids, mask = (case.inputs[key] for key in ("pixel_values", "input_ids", "attention_mask"))
    with torch.no_grad():
        image = model.get_image_features(pixel_values=pixels)
        text = model.get_text_features(input_ids=ids, attention_mask=mask)
        image_tuple = model.get_image_features(pixel_values=pixels, return_dict=False)
        text_tuple = model.get_text_features(input_ids=ids, attention_mask=mask, return_dict=False)
    assert isinstance(image, ModelOutput) and isinstance(text, ModelOutput)
    assert image.pooler_output.shape == text.pooler_output.shape and image.pooler_output.shape[0] == BATCH
    assert isinstance(image_tuple, tuple) and isinstance(text_tuple, tuple)
    assert_same_outputs(image_tuple, image.to_tuple())
    assert_same_outputs(text_tuple, text.to_tuple())


#: classes that read token ids or pixels (not ALBEF's fusion encoder, whose inputs are the towers' hidden states)
EMBEDDING_SPECS = [s for s in SPECS if {"input_ids", "pixel_values"} & set(forward_parameters(s.cls))]


@pytest.mark.parametrize("spec", EMBEDDING_SPECS, ids=[s.id for s in EMBEDDING_SPECS])
def test_input_embeddings_are_what_the_forward_reads(spec):
    case = make_case(spec)
    model = case.build().eval()
    embeddings = model.get_input_embeddings()
    assert isinstance(embeddings, nn.Module)
    calls = []
    handle = embeddings.register_forward_hook(lambda module, args, output: calls.append(output))
    with torch.no_grad():
        case.forward(model)
    handle.remove()
    assert calls, f"{type(embeddings).__name__} from get_input_embeddings is not used by the forward"
    if takes_text(case.cls):
        assert isinstance(embeddings, nn.Embedding)
        assert embeddings.num_embeddings == text_vocab_size(model.config)
        replacement = nn.Embedding(embeddings.num_embeddings, embeddings.embedding_dim)
        model.set_input_embeddings(replacement)
        assert model.get_input_embeddings() is replacement


# ---------------------------------------------------------------------------------------------------------------------
# Initialisation
# ---------------------------------------------------------------------------------------------------------------------


def test_init_weights_reaches_every_parameter_and_buffer(case):
    """A model built on the meta device and materialised with uninitialised memory (NaN here) is fully initialised by
    `init_weights()`, as a fresh model is: nothing is left to PyTorch's construction-time defaults."""
    fresh = fresh_states(case)
    with torch.device("meta"):
        model = case.cls(copy.deepcopy(case.config))
    model.to_empty(device="cpu")
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.fill_(float("nan") if tensor.is_floating_point() else -7)
    torch.manual_seed(0)
    model.init_weights()
    state = state_of(model)
    assert state.keys() == fresh[0].keys()
    assert_initialised_like(state, fresh, state)


def test_weights_missing_from_a_checkpoint_are_initialised(case, tmp_path):
    """`from_pretrained` of a folder lacking half the weights: the others load exactly, the missing ones start as a
    fresh model's (finite, same spread), not as uninitialised memory."""
    model = case.build()
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    dropped = sorted(saved)[::2]
    save_file({k: v for k, v in saved.items() if k not in dropped}, tmp_path / "model.safetensors", {"format": "pt"})
    (tmp_path / CHECKSUMS_NAME).unlink()  # the weights were rewritten on purpose: the saved checksums no longer hold
    torch.manual_seed(0)
    loaded, info = case.cls.from_pretrained(tmp_path, output_loading_info=True)
    state, fresh = state_of(loaded), fresh_states(case)
    assert set(info["missing_keys"]) <= set(dropped) and not info["unexpected_keys"], info
    for key in saved.keys() - set(dropped):
        assert torch.equal(state[key], saved[key]), key
    assert_initialised_like(state, fresh, dropped)


# ---------------------------------------------------------------------------------------------------------------------
# Saving and loading
# ---------------------------------------------------------------------------------------------------------------------


def without_load_records(settings: dict) -> dict:
    """A config dict without what loading records (`dtype`, `_name_or_path`), at every level."""
    recorded = ("dtype", "_name_or_path")
    return {k: without_load_records(v) if isinstance(v, dict) else v for k, v in settings.items() if k not in recorded}


def test_save_and_load_round_trip_is_exact_and_safetensors_only(case, tmp_path):
    model = case.build().eval()
    model.save_pretrained(tmp_path)
    weight_files = sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
    assert weight_files == ["model.safetensors"]
    reloaded, info = case.cls.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    reloaded.eval()
    assert isinstance(reloaded.config, case.cls.config_class)
    expected = without_load_records(model.config.to_dict())
    if type(model.config) is not case.cls.config_class:  # a tower built from a subclass of its config (SIMLA's)
        expected["model_type"] = case.cls.config_class.model_type  # reloads as the tower's own config class
    assert without_load_records(reloaded.config.to_dict()) == expected
    for (name, tensor), (other_name, other) in zip(state_of(model).items(), state_of(reloaded).items(), strict=True):
        assert name == other_name and torch.equal(tensor, other), name
    assert [p.requires_grad for p in model.parameters()] == [p.requires_grad for p in reloaded.parameters()]
    with torch.no_grad():
        assert_same_outputs(case.forward(reloaded), case.forward(model), atol=0, rtol=0)


def test_loads_in_bfloat16(case, tmp_path):
    case.build().save_pretrained(tmp_path)
    model = case.cls.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert model.dtype == torch.bfloat16
    floats = {p.dtype for p in model.parameters() if p.is_floating_point()}
    assert floats == {torch.bfloat16}, floats
    inputs = {
        key: value.to(torch.bfloat16) if isinstance(value, torch.Tensor) and value.is_floating_point() else value
        for key, value in case.inputs.items()
    }
    with torch.no_grad():
        output = case.forward(model, inputs)
    assert all(torch.isfinite(tensor.float()).all() for tensor in flat_tensors(output))


# ---------------------------------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [s for s in SPECS if takes_text(s.cls)], ids=lambda s: s.id)
def test_resize_token_embeddings_resizes_every_vocabulary_sized_tensor(spec):
    case = make_case(spec)
    model = case.build().eval()
    before, trainable = state_of(model), {n: p.requires_grad for n, p in model.named_parameters()}
    vocab = model.get_input_embeddings().num_embeddings
    vocabulary_sized = {key: [d for d, size in enumerate(v.shape) if size == vocab] for key, v in before.items()}
    vocabulary_sized = {key: dims for key, dims in vocabulary_sized.items() if dims}
    model.resize_token_embeddings(vocab + 3)
    after = state_of(model)
    assert model.get_input_embeddings().num_embeddings == vocab + 3
    assert text_vocab_size(model.config) == vocab + 3
    wrong = {key: tuple(after[key].shape) for key in vocabulary_sized if vocab in after[key].shape}
    assert not wrong, f"still {vocab} entries after resizing to {vocab + 3}: {wrong}"
    for key, dims in vocabulary_sized.items():
        kept = after[key]
        for dim in dims:
            kept = kept.narrow(dim, 0, vocab)
        assert torch.equal(kept, before[key]), f"{key}: the old entries changed"
    assert {n: p.requires_grad for n, p in model.named_parameters()} == trainable
    if hasattr(model, "momentum_parameter_pairs"):  # momentum copies start equal to their online modules
        for online, momentum in model.momentum_parameter_pairs():
            assert online.shape == momentum.shape
            if vocab + 3 in online.shape:
                dim = list(online.shape).index(vocab + 3)
                assert torch.equal(online.narrow(dim, vocab, 3), momentum.narrow(dim, vocab, 3))
    inputs = dict(case.inputs)
    inputs["input_ids"] = inputs["input_ids"].clone()
    inputs["input_ids"][:, 1] = vocab + 2  # a new token
    with torch.no_grad():
        output = case.forward(model, inputs)
    tensors = flat_tensors(output)
    assert all(torch.isfinite(t.float()).all() for t in tensors)
    assert not [tuple(t.shape) for t in tensors if t.ndim and t.shape[-1] == vocab], "vocabulary-sized output"


# ---------------------------------------------------------------------------------------------------------------------
# Attention backends and training
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SDPA_SPECS, ids=[s.id for s in SDPA_SPECS])
def test_sdpa_matches_eager(spec):
    case = make_case(spec)
    outputs = {}
    for implementation in ("eager", "sdpa"):
        model = case.build(attn_implementation=implementation).eval()
        with torch.no_grad():
            outputs[implementation] = case.forward(model)
        backends = {
            type(module).__name__: module.config._attn_implementation
            for module in model.modules()
            if isinstance(module, PreTrainedModel)
        }
        assert set(backends.values()) == {implementation}, backends
    assert_same_outputs(outputs["sdpa"], outputs["eager"], atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(training_case):
    case = training_case
    results = []
    for checkpointing in (False, True):
        model = case.build().train()
        if checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": False})
            assert model.is_activation_checkpointing
            assert any(getattr(module, "gradient_checkpointing", False) for module in model.modules())
        loss = case.forward(model).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    (loss, grads), (checkpointed_loss, checkpointed_grads) = results
    torch.testing.assert_close(checkpointed_loss, loss, atol=1e-6, rtol=0)
    assert checkpointed_grads.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_every_trainable_parameter_gets_a_finite_gradient(training_case):
    model = training_case.build().train()
    output = training_case.forward(model)
    assert torch.isfinite(output.loss)
    output.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient: {missing}"
    broken = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not broken, f"non-finite gradient: {broken}"
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
    assert not frozen, f"gradient on a frozen parameter: {frozen}"
    momentum_pairs = getattr(model, "momentum_parameter_pairs", tuple)()  # models with momentum (EMA) copies
    assert not any(momentum.requires_grad for _, momentum in momentum_pairs), "a trainable momentum copy"
