"""Every registered method, through the same checks (as timm tests every registered model): forward and backward with
a finite gradient for every trainable parameter, the per-step duties guard (its optimizer × trainer matrix is in
tests/test_training_duties.py), save/load round trips through the Auto classes, loading with `trust_remote_code`
where vlalign is not importable, both pipelines, retrieval evaluation and an exact Trainer resume. A new method joins
by registering in `vlalign.methods`."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForPreTraining,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
    pipeline,
)

from vlalign import AutoModelForImageTextRetrieval
from vlalign.data.collator import AlignmentCollator
from vlalign.data.synthetic import make_synthetic_dataset
from vlalign.evaluation import evaluate_retrieval, zero_shot_class_embeddings, zero_shot_classify
from vlalign.evaluation.retrieval import encode_images, encode_texts, flatten_captions, rerank_pairs
from vlalign.methods import all_methods, get_method, method_names, method_of
from vlalign.recipes import dataset_captions
from vlalign.training.trainer import AlignmentTrainer, AlignmentTrainingArguments

IMAGE_SIZE = 32
METHODS = method_names()


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic_dataset(num_train=24, num_validation=0, num_test=6, image_size=IMAGE_SIZE, seed=5)


@pytest.fixture(scope="module", params=METHODS)
def setup(request, dataset):
    """(method, processor, a function building a fresh micro training model) for each registered method."""
    return method_setup(request.param, dataset)


@pytest.fixture(scope="module", params=[name for name in METHODS if get_method(name).supports_itm_rerank])
def fusion_setup(request, dataset):
    """`setup` for each method with an ITM head (a fusion pass that re-ranks)."""
    return method_setup(request.param, dataset)


def method_setup(name, dataset):
    method = get_method(name)
    processor = method.build_processor(method.build_tokenizer(dataset_captions(dataset)), IMAGE_SIZE)

    def build(seed: int = 0):
        torch.manual_seed(seed)
        return method.pretraining_class(method.tiny_config(processor.tokenizer, IMAGE_SIZE, **method.test_overrides))

    return method, processor, build


def pretraining_collator(method, processor, dataset) -> AlignmentCollator:
    """The method's pretraining collator (with its extra inputs, e.g. SIMLA's MIM masks and targets)."""
    config = method.tiny_config(processor.tokenizer, IMAGE_SIZE, **method.test_overrides)
    extra = method.pretraining_collator_kwargs(config, processor, dataset["train"])
    return AlignmentCollator(processor, preset="pretrain", text_column="captions", **extra)


def batch_of(method, processor, dataset, size: int = 4) -> dict[str, torch.Tensor]:
    return pretraining_collator(method, processor, dataset)([dataset["train"][i] for i in range(size)])


def test_registry_lookups():
    assert METHODS == sorted(m.name for m in all_methods())
    for method in all_methods():
        assert method.config_class.model_type == method.name
        assert method_of(method.config_class()) is method
        assert method.card_template.is_file()
        assert method.loss_names and all(name.startswith("loss_") for name in method.loss_names)
    with pytest.raises(ValueError, match="Unknown method 'blip'"):
        get_method("blip")


def test_forward_backward_every_parameter_gets_a_finite_gradient(setup, dataset):
    method, processor, build = setup
    model = build().train()
    outputs = model(**batch_of(method, processor, dataset))
    assert torch.isfinite(outputs.loss)
    for name in method.loss_names:
        assert torch.isfinite(outputs[name]), name
    outputs.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient: {missing}"
    broken = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not broken, f"non-finite gradient: {broken}"


def test_training_without_duties_is_refused(setup, dataset):
    method, processor, build = setup
    model = build().train()
    batch = batch_of(method, processor, dataset)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    model(**batch).loss.backward()
    optimizer.step()
    with pytest.raises(RuntimeError, match="training_callback"):
        model(**batch)
    model.after_optimizer_step(1)  # the duties ran: training goes on
    assert torch.isfinite(model(**batch).loss)


def test_save_and_load_through_the_auto_classes(setup, dataset, tmp_path):
    method, processor, build = setup
    model = build().eval()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), method.config_class)
    reloaded, info = AutoModelForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    assert type(reloaded) is method.pretraining_class
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not any(p.requires_grad for module in reloaded.frozen_modules() for p in module.parameters())
    reloaded.eval()
    for (name, tensor), (other_name, other) in zip(
        model.state_dict().items(), reloaded.state_dict().items(), strict=True
    ):
        assert name == other_name and torch.equal(tensor, other), name
    base = AutoModel.from_pretrained(tmp_path).eval()
    assert type(base) is method.model_class
    assert type(AutoModelForZeroShotImageClassification.from_pretrained(tmp_path)) is method.model_class
    reloaded_processor = AutoProcessor.from_pretrained(tmp_path)
    assert type(reloaded_processor) is method.processor_class
    batch = batch_of(method, reloaded_processor, dataset)
    with torch.no_grad():
        expected = model.base_model.get_image_features(pixel_values=batch["pixel_values"]).pooler_output
        got = base.get_image_features(pixel_values=batch["pixel_values"]).pooler_output
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_alignment_trainer_runs_the_duties_once_per_step(setup, dataset, tmp_path):
    method, processor, build = setup
    model = build()
    args = AlignmentTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=1,
                                      report_to="none", use_cpu=True, disable_tqdm=True, save_strategy="no")  # fmt: skip
    collator = pretraining_collator(method, processor, dataset)
    trainer = AlignmentTrainer(model=model, args=args, train_dataset=dataset["train"], data_collator=collator,
                               callbacks=[model.training_callback()])  # fmt: skip
    duties = [cb for cb in trainer.callback_handler.callbacks if type(cb).__name__ == "TrainingDutiesCallback"]
    assert len(duties) == 1 and duties[0].data_collator is collator


def test_retrieval_model_loads_as_itself(setup, tmp_path):
    method, processor, build = setup
    config = build().config
    torch.manual_seed(0)
    model = method.retrieval_model_class(config).eval()
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextRetrieval.from_pretrained(tmp_path)
    assert type(reloaded) is method.retrieval_model_class
    expected, got = model.state_dict(), reloaded.state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {name for name, p in reloaded.named_parameters() if not p.requires_grad}


REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["vlalign"] = None  # make `import vlalign` fail in this process
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoProcessor, pipeline

    folder, inputs_file, output_file = sys.argv[1:]
    inputs = load_file(inputs_file)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    with torch.no_grad():
        features = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    classifier = pipeline("zero-shot-image-classification", model=folder, trust_remote_code=True)
    image = torch.zeros(3, 32, 32).permute(1, 2, 0).numpy().astype("uint8")
    from PIL import Image
    labels = classifier(Image.fromarray(image), candidate_labels=["a red circle", "two blue squares"])
    retriever = pipeline("zero-shot-image-text-retrieval", model=folder, trust_remote_code=True)
    ranked = retriever(Image.fromarray(image), candidate_texts=["a red circle", "two blue squares"], top_k=2)
    torch.save({"module": type(model).__module__, "features": features.pooler_output,
                "processor": type(processor).__name__, "labels": [x["label"] for x in labels],
                "retriever": type(retriever).__module__, "ranked": [x["text"] for x in ranked]}, output_file)
    """
)


def test_remote_code_loads_without_vlalign(setup, dataset, tmp_path):
    method, processor, build = setup
    folder = tmp_path / "model"
    model = build().base_model.eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    batch = batch_of(method, processor, dataset)
    from safetensors.torch import save_file

    save_file({k: batch[k].contiguous() for k in ("input_ids", "attention_mask")}, tmp_path / "inputs.safetensors")
    script = tmp_path / "load.py"
    script.write_text(REMOTE_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, str(script), str(folder), str(tmp_path / "inputs.safetensors"), str(tmp_path / "out.pt")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = torch.load(tmp_path / "out.pt", weights_only=True)
    assert loaded["module"].startswith("transformers_modules.")
    assert loaded["processor"] == method.processor_class.__name__
    assert sorted(loaded["labels"]) == ["a red circle", "two blue squares"]
    assert loaded["retriever"].startswith("transformers_modules.")  # the pipeline code shipped with the model
    assert sorted(loaded["ranked"]) == ["a red circle", "two blue squares"]
    with torch.no_grad():
        expected = model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    torch.testing.assert_close(loaded["features"], expected.pooler_output, atol=0, rtol=0)


def test_pipelines(setup, dataset):
    method, processor, build = setup
    model = build().base_model.eval()
    test = dataset["test"]
    captions = [c for cs in test["captions"] for c in cs]
    retriever = pipeline("zero-shot-image-text-retrieval", model=model, processor=processor)
    ranked = retriever(test[0]["image"], candidate_texts=captions, top_k=3)
    assert [hit["rank"] for hit in ranked] == [1, 2, 3]
    assert ranked[0]["score"] >= ranked[1]["score"] >= ranked[2]["score"]
    images = retriever(captions[:2], candidate_images=list(test["image"]), top_k=2, rerank=method.supports_itm_rerank)
    assert len(images) == 2 and all(len(hits) == 2 for hits in images)
    if not method.supports_itm_rerank:
        with pytest.raises(ValueError, match="dual encoder"):
            retriever(captions[0], candidate_images=list(test["image"]), rerank=True)
    classifier = pipeline(
        "zero-shot-image-classification",
        model=model,
        tokenizer=processor.tokenizer,
        image_processor=processor.image_processor,
    )
    scores = classifier(test[0]["image"], candidate_labels=["circle", "square", "star"], hypothesis_template="a {}")
    assert sum(item["score"] for item in scores) == pytest.approx(1.0, abs=1e-5)


def test_tokenizer_alone_cleans_captions_like_the_processor(setup):
    """transformers' zero-shot classification pipeline calls the tokenizer directly: it must see the same text."""
    method, processor, build = setup
    messy = "  A LARGE   Red circle, on the left!!  "

    def unpadded(ids):
        return [i for i in ids.tolist() if i != processor.tokenizer.pad_token_id]

    direct = processor.tokenizer([messy], return_tensors="pt")["input_ids"][0]
    through_processor = processor(text=[messy], preset="eval")["input_ids"][0]
    assert unpadded(direct) == unpadded(through_processor)
    # both methods' cleaning lower-cases and collapses whitespace (ALBEF also drops punctuation, FDT keeps it)
    spaced = processor.tokenizer(["  A LARGE   Red circle "], return_tensors="pt")["input_ids"][0]
    assert unpadded(spaced) == unpadded(
        processor.tokenizer(["a large red circle"], return_tensors="pt")["input_ids"][0]
    )


def test_zero_shot_classification_with_prompt_ensembles(setup, dataset):
    method, processor, build = setup
    model = build().base_model.eval()
    classes, templates = ["circle", "square", "star"], ["a {}", "a picture of a {}"]
    class_embeds = zero_shot_class_embeddings(model, processor, classes, templates)
    assert class_embeds.shape[0] == 3
    torch.testing.assert_close(class_embeds.norm(dim=-1), torch.ones(3))
    images = list(dataset["test"]["image"][:4])
    result = zero_shot_classify(model, processor, images, classes, templates)
    with torch.no_grad():
        pixels = processor(images=images)["pixel_values"]
        image_embeds = torch.nn.functional.normalize(model.get_image_features(pixel_values=pixels).pooler_output)
    torch.testing.assert_close(result["scores"], image_embeds @ class_embeds.t(), atol=1e-6, rtol=0)
    assert result["preds"].tolist() == result["scores"].argmax(-1).tolist()


def test_retrieval_evaluation(setup, dataset):
    method, processor, build = setup
    metrics = evaluate_retrieval(build(), processor, dataset["test"], k_test=3, show_progress=False)
    assert 0.0 <= metrics["r_mean"] <= 100.0
    assert metrics["num_images"] == 6 and metrics["num_texts"] == 12
    assert (metrics["num_itm_pairs"] > 0) == method.supports_itm_rerank


def test_rerank_shares_image_keys_values_and_text_self_attention_with_the_same_scores(fusion_setup, dataset):
    """The re-rank scores pairs grouped by image, projecting each image's cross-attention keys and values once for
    all its texts, and runs the first fusion layer's self-attention once per text: the scores equal per-pair fusion,
    in the order the pairs were given."""
    _, processor, build = fusion_setup
    model = build().base_model.eval()
    test = dataset["test"]
    texts, _, _ = flatten_captions(test)
    text_hidden, text_masks, _ = encode_texts(model, processor, texts, 4, True, False)
    image_hidden, _ = encode_images(model, processor, test, 4, True, False)
    generator = torch.Generator().manual_seed(0)
    pairs = torch.stack(
        [torch.randint(len(test), (20,), generator=generator), torch.randint(len(texts), (20,), generator=generator)],
        dim=1,
    )
    with torch.no_grad():
        per_pair = model.itm_score(text_hidden[pairs[:, 1]], text_masks[pairs[:, 1]], image_hidden[pairs[:, 0]])
        images, image_index = pairs[:, 0].unique(return_inverse=True)
        shared = model.itm_score(
            text_hidden[pairs[:, 1]], text_masks[pairs[:, 1]], image_hidden[images], image_index=image_index
        )
        self_attended = model.fusion_model.self_attend_text(text_hidden, text_masks)[pairs[:, 1]]
        texts_shared = model.itm_score(
            self_attended, text_masks[pairs[:, 1]], image_hidden[pairs[:, 0]], text_self_attended=True
        )
    similarities = torch.zeros(len(test), len(texts))
    grouped = rerank_pairs(model, pairs, text_hidden, text_masks, image_hidden, similarities, "itm_logit", 8, False)
    assert len(images) < len(pairs)  # images repeat, so keys and values are shared
    assert not torch.equal(self_attended, text_hidden[pairs[:, 1]])  # the block does change the states
    torch.testing.assert_close(shared, per_pair, rtol=0, atol=1e-5)
    torch.testing.assert_close(texts_shared, per_pair, rtol=0, atol=1e-5)
    torch.testing.assert_close(grouped, per_pair, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="one image index per text"):
        model.itm_score(text_hidden[:3], text_masks[:3], image_hidden[:2], image_index=torch.tensor([0, 1]))


def test_trainer_resume_is_exact(setup, dataset, tmp_path):
    method, processor, build = setup

    def trainer(output_dir, max_steps):
        args = AlignmentTrainingArguments(
            output_dir=str(output_dir), per_device_train_batch_size=4, max_steps=max_steps, learning_rate=1e-3,
            warmup_steps=1, save_strategy="steps", save_steps=3, report_to="none", use_cpu=True, disable_tqdm=True,
            seed=3, dataloader_num_workers=0, logging_steps=2,
        )  # fmt: skip
        return AlignmentTrainer(
            model=build(),
            args=args,
            train_dataset=dataset["train"],
            data_collator=pretraining_collator(method, processor, dataset),
            processing_class=processor,
        )

    straight = trainer(tmp_path / "straight", 6)
    straight.train()
    logged = {key for entry in straight.state.log_history for key in entry}
    assert set(method.loss_names) <= logged
    resumed = trainer(tmp_path / "resumed", 6)
    resumed.train(resume_from_checkpoint=str(tmp_path / "straight" / "checkpoint-3"))
    expected = load_file(tmp_path / "straight" / "checkpoint-6" / "model.safetensors")
    got = load_file(tmp_path / "resumed" / "checkpoint-6" / "model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
