"""Pipelines on a tiny saved ALBEF folder: the `zero-shot-image-text-retrieval` pipeline against a manual
computation from `AlbefModel`, and the built-in `zero-shot-image-classification` pipeline with an ALBEF model."""

from __future__ import annotations

import pytest
import torch
from conftest import micro_albef_config
from transformers import AutoImageProcessor, AutoTokenizer, pipeline
from transformers.pipelines import PIPELINE_REGISTRY

import vlalign
from vlalign.data.synthetic import make_synthetic_dataset
from vlalign.pipelines.retrieval import TASK, ImageTextRetrievalPipeline, register_pipelines
from vlalign.recipes import albef_processor, build_tokenizer

ATOL = 1e-5


@pytest.fixture(scope="module")
def data():
    test = make_synthetic_dataset(num_train=0, num_validation=0, num_test=4, image_size=32, seed=0)["test"]
    images = list(test["image"])
    captions = [caption for captions in test["captions"] for caption in captions]
    return images, captions


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, data):
    _, captions = data
    tokenizer = build_tokenizer([*captions, "This is a photo of"])
    config = micro_albef_config(tokenizer)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_albef")
    vlalign.AlbefModel(config).save_pretrained(folder)
    albef_processor(tokenizer, 32).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def retriever(model_dir):
    register_pipelines()
    return pipeline(TASK, model=str(model_dir))


@pytest.fixture(scope="module")
def manual(model_dir, data):
    """ITC cosine [images, texts] and ITM scores of every pair, straight from `AlbefModel`."""
    images, captions = data
    model = vlalign.AlbefModel.from_pretrained(model_dir).eval()
    processor = vlalign.AlbefProcessor.from_pretrained(model_dir)
    batch = processor(images=images, text=captions, preset="eval")
    with torch.no_grad():
        outputs = model(**batch)
        image_hidden = outputs.vision_model_output.last_hidden_state
        text_hidden = outputs.text_model_output.last_hidden_state
        itm = torch.stack(
            [
                model.itm_score(
                    text_hidden, batch["attention_mask"], image_hidden[i : i + 1].expand(len(captions), -1, -1)
                )
                for i in range(len(images))
            ]
        )
    itc = outputs.image_embeds @ outputs.text_embeds.t()
    torch.testing.assert_close(itc / model.temp, outputs.logits_per_image)
    return {"itc": itc, "itm": itm}


def assert_ranked(results, score_row, top_k):
    """`results` rank candidates exactly as `score_row` does (up to float ties): their scores are the manual scores
    of the returned candidates, and those are the `top_k` best manual scores in descending order."""
    indices = [r.get("text_index", r.get("image_index")) for r in results]
    scores = torch.tensor([r["score"] for r in results])
    assert len(indices) == top_k == len(set(indices))
    assert [r["rank"] for r in results] == list(range(1, top_k + 1))
    torch.testing.assert_close(scores, score_row[indices], atol=ATOL, rtol=0)
    torch.testing.assert_close(scores, score_row.sort(descending=True).values[:top_k], atol=ATOL, rtol=0)


def test_register_is_idempotent():
    register_pipelines()
    entry = PIPELINE_REGISTRY.supported_tasks[TASK]
    register_pipelines()
    assert PIPELINE_REGISTRY.supported_tasks[TASK] is entry
    assert entry["impl"] is ImageTextRetrievalPipeline and entry["type"] == "multimodal"


def test_image_to_text_itc(retriever, data, manual):
    images, captions = data
    assert isinstance(retriever.model, vlalign.AlbefModel)
    single = retriever(images[0], candidate_texts=captions, top_k=3)
    assert_ranked(single, manual["itc"][0], 3)
    assert all(r["text"] == captions[r["text_index"]] and r["itc_score"] == r["score"] for r in single)

    batched = retriever(images, candidate_texts=captions, top_k=100)  # capped at the gallery size
    assert len(batched) == len(images)
    for query, results in enumerate(batched):
        assert_ranked(results, manual["itc"][query], len(captions))
    assert [r["score"] for r in batched[0][:3]] == pytest.approx([r["score"] for r in single], abs=ATOL)


def test_text_to_image_itc(retriever, data, manual, tmp_path):
    images, captions = data
    results = retriever(captions[:3], candidate_images=images, top_k=2)
    for query, ranked in enumerate(results):
        assert_ranked(ranked, manual["itc"][:, query], 2)
        assert set(ranked[0]) == {"score", "itc_score", "image_index", "rank"}

    # file paths load like PIL images (PNG is lossless)
    paths = []
    for position, image in enumerate(images):
        paths.append(str(tmp_path / f"{position}.png"))
        image.save(paths[-1])
    assert retriever(captions[:3], candidate_images=paths, top_k=2) == results


def test_itm_rerank_both_directions(retriever, data, manual):
    images, captions = data
    # k_test (16) covers the whole gallery: every candidate is re-scored, so the order is the ITM order.
    for query, ranked in enumerate(retriever(images, candidate_texts=captions, top_k=4, rerank=True)):
        assert_ranked(ranked, manual["itm"][query], 4)
        for r in ranked:
            assert r["itc_score"] == pytest.approx(manual["itc"][query, r["text_index"]].item(), abs=ATOL)
    for query, ranked in enumerate(retriever(captions[:2], candidate_images=images, top_k=3, rerank=True)):
        assert_ranked(ranked, manual["itm"][:, query], 3)
    with pytest.warns(FutureWarning, match="itm_rerank is deprecated"):  # the old name still re-ranks
        assert retriever(captions[:2], candidate_images=images, top_k=3, itm_rerank=True) == retriever(
            captions[:2], candidate_images=images, top_k=3, rerank=True
        )

    # only the top k_rerank ITC candidates are re-scored, then ordered by their ITM score
    ranked = retriever(images[1], candidate_texts=captions, top_k=3, k_rerank=3, rerank=True)
    itc_scores = sorted((r["itc_score"] for r in ranked), reverse=True)
    torch.testing.assert_close(
        torch.tensor(itc_scores), manual["itc"][1].sort(descending=True).values[:3], atol=ATOL, rtol=0
    )
    itm_scores = [r["score"] for r in ranked]
    assert itm_scores == sorted(itm_scores, reverse=True)
    torch.testing.assert_close(
        torch.tensor(itm_scores), manual["itm"][1][[r["text_index"] for r in ranked]], atol=ATOL, rtol=0
    )


def test_gallery_encoded_once_per_call(retriever, data):
    images, captions = data
    albef = retriever.model
    calls = {"vision": 0, "text": 0, "fusion": 0}
    hooks = [
        module.register_forward_hook(lambda *_, key=key: calls.__setitem__(key, calls[key] + 1))
        for key, module in (("vision", albef.vision_model), ("text", albef.text_model), ("fusion", albef.fusion_model))
    ]
    try:
        retriever(images, candidate_texts=captions, top_k=2, rerank=True, rerank_batch_size=1000)
        assert calls == {"vision": 1, "text": 1, "fusion": 1}  # 4 queries × 8 candidates in one fusion batch
        calls.update(vision=0, text=0, fusion=0)
        retriever(captions, candidate_images=images, top_k=2, rerank=True, batch_size=3, rerank_batch_size=10)
        assert calls == {"vision": 2, "text": 3, "fusion": 4}  # ceil(4/3), ceil(8/3), ceil(8 × 4 / 10)
    finally:
        for hook in hooks:
            hook.remove()


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda p, im, tx: p(im[0]), ValueError, "No candidates given"),
        (lambda p, im, tx: p(im[0], candidate_texts=tx, candidate_images=im), ValueError, "not both"),
        (lambda p, im, tx: p(im[0], candidate_texts=[]), ValueError, "candidate_texts is empty"),
        (lambda p, im, tx: p(tx[0], candidate_images=[]), ValueError, "candidate_images is empty"),
        (lambda p, im, tx: p([], candidate_texts=tx), ValueError, "queries is empty"),
        (lambda p, im, tx: p(None, candidate_texts=tx), ValueError, "Pass the query first"),
        (lambda p, im, tx: p("", candidate_images=im), ValueError, r"queries\[0\] is an empty caption"),
        (lambda p, im, tx: p(im[0], candidate_texts=[tx[0], "  "]), ValueError, r"candidate_texts\[1\] is an empty"),
        (lambda p, im, tx: p(im[0], candidate_texts=["?!"]), ValueError, "empty after cleaning"),
        (lambda p, im, tx: p(im[0], candidate_texts=tx, top_k=0), ValueError, "top_k must be a positive integer"),
        (lambda p, im, tx: p(im[0], candidate_texts=tx, top_k=2.5), ValueError, "top_k must be a positive integer"),
        (lambda p, im, tx: p(im[0], candidate_texts=tx, top_k=3, k_rerank=2, rerank=True), ValueError, "k_rerank=2"),
        (lambda p, im, tx: p(im[0], candidate_texts=tx, score_mode="x"), ValueError, "score_mode='x'"),
        (lambda p, im, tx: p("a red circle", candidate_texts=tx), ValueError, "the queries are images"),
        (lambda p, im, tx: p(im[0], candidate_images=im), TypeError, "the queries are captions"),
        (lambda p, im, tx: p(im[0], candidate_texts=tx, topk=2), TypeError, "topk"),
    ],
)
def test_errors(retriever, data, call, error, message):
    images, captions = data
    with pytest.raises(error, match=message):
        call(retriever, images, captions)


def test_zero_shot_image_classification(model_dir, data):
    images, _ = data
    labels = ["red circle", "blue square", "green star"]
    classifier = pipeline("zero-shot-image-classification", model=str(model_dir))
    # The built-in pipeline loads the tokenizer and image processor on their own from the processor's folder.
    assert isinstance(classifier.model, vlalign.AlbefModel)
    assert isinstance(classifier.tokenizer, vlalign.AlbefTokenizer)
    assert isinstance(classifier.image_processor, vlalign.AlbefImageProcessor)
    assert isinstance(AutoTokenizer.from_pretrained(model_dir), vlalign.AlbefTokenizer)
    assert isinstance(AutoImageProcessor.from_pretrained(model_dir), vlalign.AlbefImageProcessor)

    results = classifier(images[0], candidate_labels=labels)
    assert sorted(r["label"] for r in results) == sorted(labels)
    assert sum(r["score"] for r in results) == pytest.approx(1.0, abs=1e-6)

    # Manually: the same template, the raw tokenizer (the pipeline bypasses AlbefProcessor's caption cleaning).
    model = vlalign.AlbefModel.from_pretrained(model_dir).eval()
    text = classifier.tokenizer(
        [f"This is a photo of {label}." for label in labels], padding=True, return_tensors="pt"
    )
    pixel_values = classifier.image_processor(images=[images[0]], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model(**text, pixel_values=pixel_values).logits_per_image.softmax(dim=-1)[0]
    scores = {r["label"]: r["score"] for r in results}
    torch.testing.assert_close(torch.tensor([scores[label] for label in labels]), expected, atol=1e-6, rtol=0)
