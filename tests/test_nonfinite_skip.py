"""`on_nonfinite_loss="skip"` poisons nothing: a run with a batch whose loss is not finite (pixels of 1e30: finite, so
the models take them, but the features overflow to NaN and reach the momentum stash) inserted between finite ones ends
bitwise where the run without that batch ends —
online and momentum weights, queues and `queue_ptr`, codebooks, optimizer state, lr schedule, random state — for every
registered method. With gradient accumulation the whole accumulated step is skipped."""

from __future__ import annotations

import pytest
import torch
from test_methods import IMAGE_SIZE, pretraining_collator

from vlalign.data.synthetic import make_synthetic_dataset
from vlalign.methods import get_method, method_names
from vlalign.recipes import dataset_captions
from vlalign.training.trainer import AlignmentTrainer, AlignmentTrainingArguments

BATCH = 2


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic_dataset(num_train=12, num_validation=0, num_test=0, image_size=IMAGE_SIZE, seed=7)


class Batches(torch.utils.data.Dataset):
    """Ready-made batches, one per item: each run sees exactly the batches it is given, in order."""

    def __init__(self, batches: list[dict[str, torch.Tensor]]):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.batches[index]


def first_item(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return items[0]


def method_batches(name: str, dataset) -> tuple[object, list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """(a model builder, finite batches, a batch whose features overflow) for method `name`."""
    method = get_method(name)
    processor = method.build_processor(method.build_tokenizer(dataset_captions(dataset)), IMAGE_SIZE)
    collator = pretraining_collator(method, processor, dataset)
    torch.manual_seed(0)  # the collator's masking draws
    rows = dataset["train"]
    batches = [collator([rows[i] for i in range(start, start + BATCH)]) for start in range(0, len(rows), BATCH)]
    poisoned = dict(batches[0], pixel_values=torch.full_like(batches[0]["pixel_values"], 1e30))

    def build():
        torch.manual_seed(0)
        return method.pretraining_class(method.tiny_config(processor.tokenizer, IMAGE_SIZE, **method.test_overrides))

    return build, batches, poisoned


def train(build, batches, max_steps: int, output_dir, accumulation: int = 1) -> AlignmentTrainer:
    args = AlignmentTrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=1, gradient_accumulation_steps=accumulation,
        max_steps=max_steps, learning_rate=1e-2, weight_decay=0.1, lr_scheduler_type="constant_with_warmup",
        warmup_steps=3, train_sampling_strategy="sequential", on_nonfinite_loss="skip", save_strategy="no",
        logging_steps=1, report_to="none", use_cpu=True, disable_tqdm=True, seed=1,
    )  # fmt: skip
    trainer = AlignmentTrainer(model=build(), args=args, train_dataset=Batches(batches), data_collator=first_item)
    trainer.train()
    return trainer


def assert_same_run(with_skip: AlignmentTrainer, without: AlignmentTrainer) -> None:
    expected, got = without.model.state_dict(), with_skip.model.state_dict()
    assert expected.keys() == got.keys()
    different = [name for name in expected if not torch.equal(expected[name], got[name])]
    assert not different, f"{len(different)} of {len(expected)} tensors differ, e.g. {different[:5]}"
    expected_state, got_state = without.optimizer.state_dict()["state"], with_skip.optimizer.state_dict()["state"]
    assert expected_state.keys() == got_state.keys()
    for index, moments in expected_state.items():
        for key, value in moments.items():
            assert torch.equal(value, got_state[index][key]), (index, key)
    assert with_skip.lr_scheduler.state_dict() == without.lr_scheduler.state_dict()


@pytest.mark.parametrize("name", method_names())
def test_a_skipped_batch_leaves_the_run_as_without_it(name, dataset, tmp_path):
    build, finite, poisoned = method_batches(name, dataset)
    model = build().train()
    with pytest.raises(FloatingPointError):
        model(**poisoned)
    stash = getattr(model, "_momentum_feature_stash", [])  # what the duties would enqueue (the ALBEF family)
    assert all(not torch.isfinite(features).all() for features, _, _ in stash) and len(stash) == int(name != "fdt")
    # the same epoch length for both runs, so that epoch-based schedules (ALBEF's α warm-up) agree
    without = train(build, finite[:5], max_steps=4, output_dir=tmp_path / "without")
    rng_without = torch.get_rng_state()
    with pytest.warns(UserWarning, match="Skipping the update of step 3: non-finite training loss"):
        with_skip = train(build, [*finite[:2], poisoned, *finite[2:4]], max_steps=5, output_dir=tmp_path / "with")
    assert torch.equal(torch.get_rng_state(), rng_without)
    assert_same_run(with_skip, without)
    assert with_skip.state.global_step == without.state.global_step + 1  # the batch counts for the data position
    assert [entry.get("nonfinite_skipped") for entry in with_skip.state.log_history[:5]] == [None, None, 1, 1, 1]


def test_with_gradient_accumulation_the_whole_step_is_skipped(dataset, tmp_path):
    build, finite, poisoned = method_batches("albef", dataset)
    without = train(build, finite[:6], max_steps=2, output_dir=tmp_path / "without", accumulation=2)
    with pytest.warns(UserWarning, match=r"Skipping the update of step 2 \(and every batch accumulated into it\)"):
        # step 2 accumulates a finite batch, then the NaN one: neither trains
        with_skip = train(build, [*finite[:2], finite[4], poisoned, *finite[2:4]], 3, tmp_path / "with", 2)
    assert_same_run(with_skip, without)
    assert with_skip.state.global_step == 3


def test_fdt_refuses_non_finite_codebook_scores_with_a_clear_error(dataset):
    build, finite, _ = method_batches("fdt", dataset)
    model = build().train()
    extreme = dict(finite[0], pixel_values=torch.full_like(finite[0]["pixel_values"], 1e30))
    with pytest.raises(FloatingPointError, match=r"FDT's image codebook scores are not finite \(\d+ NaN/inf of \d+\)"):
        model(**extreme)
    model.eval()
    with torch.no_grad(), pytest.raises(FloatingPointError, match="Check the pixel values for NaN/inf"):
        model.fdt.get_image_features(pixel_values=extreme["pixel_values"])
    assert torch.isfinite(model(**finite[0]).loss)  # finite inputs pass the check


def test_fdt_at_an_infinite_learning_rate_stops_with_the_step_and_the_scores(dataset, tmp_path):
    """The weights turn NaN after the first step; the duties check compares NaN weights bitwise (no false refusal),
    and FDT names the non-finite scores instead of crashing in sparsemax."""
    build, finite, _ = method_batches("fdt", dataset)
    args = AlignmentTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=1, max_steps=3, learning_rate=float("inf"),
        train_sampling_strategy="sequential", save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    trainer = AlignmentTrainer(model=build(), args=args, train_dataset=Batches(finite), data_collator=first_item)
    with pytest.raises(FloatingPointError, match="Non-finite training loss at step 2: FDT's image codebook scores"):
        trainer.train()
