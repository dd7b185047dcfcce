"""The per-step training duties either run or training stops at the second step with the error naming the fix, for
every optimizer a CPU Trainer offers × every registered method × the three ways to train with transformers (a plain
`Trainer`, a plain `Trainer` with `model.training_callback()`, `AlignmentTrainer`); also under gradient accumulation,
`torch.compile` and a hand-written Accelerate loop. The guard compares the weights' values, so an optimizer that
writes them without bumping version counters (the fused AdamW kernel, Trainer's default) cannot slip past it."""

from __future__ import annotations

import functools

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from test_methods import IMAGE_SIZE, pretraining_collator
from test_nonfinite_skip import Batches, first_item
from transformers import Trainer, TrainingArguments

from vlalign.data.synthetic import make_synthetic_dataset
from vlalign.methods import get_method, method_names
from vlalign.recipes import dataset_captions
from vlalign.training.trainer import AlignmentTrainer, AlignmentTrainingArguments

BATCH = 3
OPTIMIZERS = ["adamw_torch_fused", "adamw_torch", "sgd", "adafactor"]
REFUSAL = r"per-step training duties did not run .*callbacks=\[model.training_callback\(\)\]"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic_dataset(num_train=12, num_validation=0, num_test=0, image_size=IMAGE_SIZE, seed=11)


@pytest.fixture(scope="module")
def method_data(dataset):
    """Per method: (a builder of a fresh tiny training model, four ready-made batches of three)."""
    cache = {}

    def get(name: str):
        if name not in cache:
            method = get_method(name)
            processor = method.build_processor(method.build_tokenizer(dataset_captions(dataset)), IMAGE_SIZE)
            collator = pretraining_collator(method, processor, dataset)
            torch.manual_seed(0)
            rows = dataset["train"]
            batches = [collator([rows[i] for i in range(s, s + BATCH)]) for s in range(0, len(rows), BATCH)]
            config = method.tiny_config(processor.tokenizer, IMAGE_SIZE, **method.test_overrides)
            cache[name] = (functools.partial(build_model, method, config), batches)
        return cache[name]

    return get


def build_model(method, config):
    torch.manual_seed(0)
    model = method.pretraining_class(config)
    if hasattr(model, "clamp_logit_scale"):  # FDT: start above the range, so that only its duty brings it back
        with torch.no_grad():
            model.fdt.logit_scale.fill_(config.logit_scale_param_range[1] + 1)
    return model


def arguments(tmp_path, optim: str, alignment: bool = False, **overrides):
    settings = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=1, max_steps=2, learning_rate=1e-2, optim=optim,
        train_sampling_strategy="sequential", save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
        remove_unused_columns=False, dataloader_drop_last=True,
    )  # fmt: skip
    settings.update(overrides)
    if alignment:  # `optim` chooses the optimizer only without the method's official one
        return AlignmentTrainingArguments(official_optimizer=False, **settings)
    return TrainingArguments(**settings)


def initial_state(model) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def assert_duties_ran(model, before: dict[str, torch.Tensor], forwards: int) -> None:
    """The state only the duties change has changed as `forwards` training forwards' duties change it."""
    if hasattr(model, "momentum_parameter_pairs"):  # EMA: every momentum parameter moved
        names = {id(p): n for n, p in model.named_parameters()}
        momentum = [names[id(m)] for _, m in model.momentum_parameter_pairs()]
        assert all(not torch.equal(model.state_dict()[n], before[n]) for n in momentum[:3])
        assert int(model.queue_ptr) == forwards * BATCH % model.config.queue_size != 0  # every forward enqueued
    if hasattr(model, "clamp_logit_scale"):
        low, high = model.config.logit_scale_param_range
        assert low <= model.fdt.logit_scale.item() <= high
    if hasattr(model.base_model, "codebook"):
        norms = model.base_model.codebook.prototypes.norm(dim=-1)
        torch.testing.assert_close(norms, torch.ones_like(norms))


@pytest.mark.parametrize("optim", OPTIMIZERS)
@pytest.mark.parametrize("name", method_names())
def test_duty_matrix(name, optim, method_data, tmp_path):
    build, batches = method_data(name)
    data = Batches(batches)

    model = build()
    plain = Trainer(model=model, args=arguments(tmp_path, optim), train_dataset=data, data_collator=first_item)
    with pytest.raises(RuntimeError, match=REFUSAL):
        plain.train()
    assert plain.state.global_step == 1  # refused at the second step's forward
    if optim == "adamw_torch_fused":  # the fused kernel, which bumps no version counter
        assert plain.optimizer.optimizer.defaults["fused"] is True

    model = build()
    before = initial_state(model)
    with_callback = Trainer(
        model=model, args=arguments(tmp_path, optim), train_dataset=data, data_collator=first_item,
        callbacks=[model.training_callback()],
    )  # fmt: skip
    with_callback.train()
    assert_duties_ran(model, before, forwards=2)

    model = build()
    before = initial_state(model)
    args = arguments(tmp_path, optim, alignment=True)
    AlignmentTrainer(model=model, args=args, train_dataset=data, data_collator=first_item).train()
    assert_duties_ran(model, before, forwards=2)


def test_trainers_default_optimizer_is_the_fused_adamw():
    assert TrainingArguments(output_dir="unused", use_cpu=True).optim == "adamw_torch_fused"
    parameter = torch.nn.Parameter(torch.ones(4))
    parameter.grad = torch.ones(4)
    version = parameter._version
    torch.optim.AdamW([parameter], fused=True).step()
    assert parameter._version == version and not torch.equal(parameter, torch.ones(4))  # why values are compared


def test_gradient_accumulation(method_data, tmp_path):
    build, batches = method_data("albef")
    data = Batches(batches)
    args = arguments(tmp_path, "adamw_torch_fused", gradient_accumulation_steps=2)
    plain = Trainer(model=build(), args=args, train_dataset=data, data_collator=first_item)
    with pytest.raises(RuntimeError, match=REFUSAL):
        plain.train()  # the first step's two forwards see the same weights; the third forward refuses
    assert plain.state.global_step == 1
    model = build()
    before = initial_state(model)
    Trainer(model=model, args=args, train_dataset=data, data_collator=first_item,
            callbacks=[model.training_callback()]).train()  # fmt: skip
    assert_duties_ran(model, before, forwards=4)


@pytest.fixture
def fresh_dynamo():
    """Compiled code would otherwise stay, and Accelerate's shared state would compile every later prepared model
    (as accelerate's own tests, reset it after use)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
    AcceleratorState._reset_state(reset_partial_state=True)


def test_torch_compile(method_data, fresh_dynamo, tmp_path):
    build, batches = method_data("fdt")
    data = Batches(batches)
    compiled = dict(torch_compile=True, torch_compile_backend="eager")  # dynamo's graphs, without a code generator
    plain = Trainer(
        model=build(), args=arguments(tmp_path, "adamw_torch_fused", **compiled), train_dataset=data,
        data_collator=first_item,
    )  # fmt: skip
    with pytest.raises(RuntimeError, match=REFUSAL):
        plain.train()
    model = build()
    before = initial_state(model)
    args = arguments(tmp_path, "adamw_torch_fused", alignment=True, **compiled)
    trainer = AlignmentTrainer(model=model, args=args, train_dataset=data, data_collator=first_item)
    trainer.train()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # dynamo did compile the forward
    assert_duties_ran(model, before, forwards=2)


@pytest.mark.parametrize("with_hooks", [False, True])
def test_hand_written_accelerate_loop(with_hooks, method_data):
    build, batches = method_data("codis")
    model = build()
    before = initial_state(model)
    accelerator = Accelerator(cpu=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, fused=True)
    prepared, optimizer = accelerator.prepare(model.train(), optimizer)

    def train_step(step: int, batch: dict[str, torch.Tensor]) -> None:
        accelerator.backward(prepared(**batch).loss)
        if with_hooks:
            model.before_optimizer_step(step)
        optimizer.step()
        if with_hooks:
            model.after_optimizer_step(step)
        optimizer.zero_grad()

    train_step(0, batches[0])
    if with_hooks:
        train_step(1, batches[1])
        assert_duties_ran(model, before, forwards=2)
    else:
        with pytest.raises(RuntimeError, match=REFUSAL):
            train_step(1, batches[1])
