"""AlbefTrainer: per-step momentum/queue updates, α warm-up, per-loss logging, exact resume (also of a finished run),
retrieval evaluate, one run per output folder."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
import torch
from conftest import micro_albef_config
from safetensors.torch import load_file

import vlalign
import vlalign.files
from vlalign.data.collator import AlbefCollator
from vlalign.data.synthetic import make_synthetic_dataset
from vlalign.files import LOCK_NAME, FolderLockedError, folder_lock
from vlalign.recipes import albef_processor, build_tokenizer, dataset_captions
from vlalign.training.trainer import AlbefTrainer, AlbefTrainingArguments

IMAGE_SIZE = 32


@pytest.fixture(scope="module")
def data():
    dataset = make_synthetic_dataset(num_train=40, num_validation=8, num_test=12, image_size=IMAGE_SIZE, seed=3)
    tokenizer = build_tokenizer(dataset_captions(dataset))
    return dataset, albef_processor(tokenizer, IMAGE_SIZE)


def tiny_model(processor) -> vlalign.AlbefForPreTraining:
    torch.manual_seed(0)
    config = micro_albef_config(processor.tokenizer, IMAGE_SIZE, queue_size=24)
    return vlalign.AlbefForPreTraining(config)


def make_trainer(data, output_dir, **overrides) -> AlbefTrainer:
    dataset, processor = data
    settings = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        max_steps=12,
        learning_rate=1e-3,
        weight_decay=0.02,
        warmup_steps=2,
        logging_steps=3,
        save_strategy="steps",
        save_steps=6,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=7,
        dataloader_num_workers=0,
    )
    settings.update(overrides)
    return AlbefTrainer(
        model=tiny_model(processor),
        args=AlbefTrainingArguments(**settings),
        train_dataset=dataset["train"],
        eval_dataset=dataset["test"],
        data_collator=AlbefCollator(processor, preset="pretrain", text_column="captions"),
        processing_class=processor,
    )


def test_resume_is_exact(data, tmp_path):
    """12 steps straight (5 steps per epoch, so 2.4 epochs) vs 6 steps + resume from that checkpoint + 6 steps."""
    straight = make_trainer(data, tmp_path / "run")
    straight.train()
    final = {k: v.detach().clone() for k, v in straight.model.state_dict().items()}
    assert int(final["queue_ptr"]) == (12 * 8) % 24

    resumed = make_trainer(data, tmp_path / "run")
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-6"))
    assert resumed.state.global_step == 12
    for key, value in resumed.model.state_dict().items():
        assert torch.equal(value, final[key]), f"{key} differs after resume"

    # the checkpoint itself holds what a resume needs: momentum encoders and queues
    checkpoint = load_file(tmp_path / "run" / "checkpoint-6" / "model.safetensors")
    assert {"image_queue", "text_queue", "queue_ptr", "vision_model_m.post_layernorm.weight"} <= set(checkpoint)
    assert int(checkpoint["queue_ptr"]) == (6 * 8) % 24


def test_momentum_queue_alpha_and_logging(data, tmp_path):
    trainer = make_trainer(data, tmp_path, max_steps=5, save_strategy="no", logging_steps=1)
    online_before = trainer.model.albef.vision_proj.weight.detach().clone()
    trainer.train()
    model = trainer.model
    # one EMA step per optimizer step: momentum weights moved, but lag behind the online weights
    assert not torch.equal(model.vision_proj_m.weight, online_before)
    assert not torch.equal(model.vision_proj_m.weight, model.albef.vision_proj.weight)
    assert int(model.queue_ptr) == (5 * 8) % 24
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 5
    for entry in logs:
        assert {"loss_itc", "loss_itm", "loss_mlm", "alpha", "temp"} <= set(entry)
        assert entry["loss"] == pytest.approx(entry["loss_itc"] + entry["loss_itm"] + entry["loss_mlm"], abs=2e-3)
    # 5 steps per epoch: alpha ramps 0, 0.08, ..., 0.32 over the first epoch (logged after each step's forward)
    assert [entry["alpha"] for entry in logs] == pytest.approx([0.0, 0.08, 0.16, 0.24, 0.32])


def test_official_optimizer_groups_decay_temperature(data, tmp_path):
    trainer = make_trainer(data, tmp_path, max_steps=1, save_strategy="no")
    trainer.create_optimizer()
    decayed = {id(p) for group in trainer.optimizer.param_groups if group["weight_decay"] > 0 for p in group["params"]}
    model = trainer.model
    assert id(model.albef.temp) in decayed
    assert id(model.albef.vision_model.embeddings.position_embeddings) in decayed
    assert id(model.albef.vision_proj.bias) not in decayed
    trained = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert id(model.vision_proj_m.weight) not in trained


def test_temperature_learning_rate_gives_the_temperature_its_own_scheduled_group(data, tmp_path):
    trainer = make_trainer(data, tmp_path, temperature_learning_rate=1e-4, save_strategy="no", max_steps=4)
    trainer.create_optimizer_and_scheduler(num_training_steps=4)
    groups = trainer.optimizer.param_groups
    temperature_groups = [group for group in groups if any(p is trainer.model.albef.temp for p in group["params"])]
    assert len(temperature_groups) == 1 and temperature_groups[0]["params"] == [trainer.model.albef.temp]
    assert temperature_groups[0]["weight_decay"] == 0.02  # still decayed, as the official rule says
    assert groups[-1] is temperature_groups[0]
    assert groups[0]["initial_lr"] == 1e-3 and groups[-1]["initial_lr"] == 1e-4  # warm-up and decay scale both
    assert sum(len(group["params"]) for group in groups) == sum(
        p.requires_grad for p in trainer.model.parameters()
    )  # every trainable parameter once
    start = trainer.model.albef.temp.item()
    trainer.train()
    moved = abs(trainer.model.albef.temp.item() - start)
    assert 0 < moved <= 4 * 1e-4 * 1.01  # Adam moves a parameter by at most ~lr per step
    with pytest.raises(ValueError, match="needs official_optimizer"):
        AlbefTrainingArguments(output_dir=str(tmp_path), temperature_learning_rate=1e-4, official_optimizer=False)


def test_evaluate_runs_retrieval_protocol(data, tmp_path):
    trainer = make_trainer(data, tmp_path, max_steps=1, save_strategy="no", k_test=4)
    metrics = trainer.evaluate()
    for key in ("eval_txt_r1", "eval_txt_r5", "eval_img_r10", "eval_r_mean"):
        assert 0.0 <= metrics[key] <= 100.0
    assert metrics["eval_num_images"] == 12 and metrics["eval_num_texts"] == 24
    assert metrics["eval_num_itm_pairs"] <= 12 * 4 + 24 * 4


def test_torch_compile_option_trains_like_eager(data, tmp_path):
    """Trainer's `torch_compile` compiles the model (dynamo graphs, AOT autograd) and trains it to the same losses as
    eager. The `aot_eager` backend skips inductor's C++ build, which `benchmarks/performance/train_step.py --compile`
    times."""

    def losses(trainer: AlbefTrainer) -> list[float]:
        trainer.train()
        return [log["loss"] for log in trainer.state.log_history if "loss" in log]

    eager = losses(make_trainer(data, tmp_path / "eager", max_steps=3, logging_steps=1, save_strategy="no"))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled_trainer = make_trainer(
        data,
        tmp_path / "compiled",
        max_steps=3,
        logging_steps=1,
        save_strategy="no",
        torch_compile_backend="aot_eager",
    )
    compiled = losses(compiled_trainer)
    assert compiled_trainer.args.torch_compile
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # dynamo did compile the forward
    assert len(compiled) == len(eager) == 3
    assert compiled == pytest.approx(eager, rel=1e-4)


def test_resuming_a_finished_run_changes_nothing(data, tmp_path):
    """Resumed from its last checkpoint (at `max_steps`, mid-epoch), a finished run trains no further step: Trainer
    alone would run one more (lr 0, but the EMA step and the enqueue would change the momentum encoders and queues)."""
    finished = make_trainer(data, tmp_path, max_steps=3, save_steps=3)
    finished.train()
    saved = load_file(tmp_path / "checkpoint-3" / "model.safetensors")
    resumed = make_trainer(data, tmp_path, max_steps=3, save_steps=3)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 3
    state = resumed.model.state_dict()
    assert saved.keys() == state.keys()
    assert [name for name in saved if not torch.equal(saved[name], state[name])] == []
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint-3"]


LOCK_HOLDER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("files", sys.argv[1])
files = importlib.util.module_from_spec(spec)
spec.loader.exec_module(files)
with files.folder_lock(sys.argv[2]):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_run_into_a_busy_output_folder_refuses_at_start(data, tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, vlalign.files.__file__, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        trainer = make_trainer(data, tmp_path, max_steps=1, save_strategy="no")
        host = socket.gethostname()
        with pytest.raises(
            FolderLockedError, match=rf"{tmp_path} is in use by another run \(pid {holder.pid} on {host}\)"
        ):
            trainer.train()
        assert trainer.state.global_step == 0
    finally:
        holder.kill()  # a killed holder releases the lock with its process
        holder.wait()
    trainer.train()
    assert trainer.state.global_step == 1
    assert not (tmp_path / LOCK_NAME).exists()  # released at the end of the run
    with folder_lock(tmp_path), pytest.raises(FolderLockedError, match="Wait for that run to finish or stop it"):
        trainer.train()  # also a second holder in the same process
