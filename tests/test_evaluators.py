"""`evaluate` evaluators (`vlalign.evaluation.evaluators`) over every registered method: retrieval recalls equal to
`evaluate_retrieval`'s, zero-shot predictions equal to `zero_shot_classify`'s, the fast bootstrap (intervals contain the
estimate, shrink with more queries, match the binomial standard error, 9999 resamples in well under a second), the
accepted model forms and the error cases."""

from __future__ import annotations

import time

import datasets
import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoProcessor, pipeline

from vlalign.data.synthetic import SHAPES, make_synthetic_dataset
from vlalign.evaluation import (
    ImageTextRetrievalEvaluator,
    ZeroShotImageClassificationEvaluator,
    evaluate_retrieval,
    zero_shot_classify,
)
from vlalign.evaluation.evaluators import bootstrap_intervals, recall_hit_rates
from vlalign.methods import get_method, method_names
from vlalign.metrics.retrieval_recall.retrieval_recall import RECALL_KS, recall_at
from vlalign.pipelines.retrieval import TASK
from vlalign.recipes import dataset_captions

IMAGE_SIZE = 32
RECALL_KEYS = ("txt_r1", "txt_r5", "txt_r10", "txt_r_mean", "img_r1", "img_r5", "img_r10", "img_r_mean", "r_mean")
TEMPLATES = ("a {}.", "a photo of a {}.")


@pytest.fixture(scope="module")
def data() -> datasets.Dataset:
    return make_synthetic_dataset(num_train=0, num_validation=0, num_test=12, image_size=IMAGE_SIZE, seed=5)["test"]


@pytest.fixture(scope="module")
def shapes(data) -> datasets.Dataset:
    """The test images labelled by the shape of their first object."""
    labels = [SHAPES.index(objects[0]["shape"]) for objects in data["objects"]]
    return datasets.Dataset.from_dict(
        {"picture": list(data["image"]), "shape": labels},
        features=datasets.Features({"picture": datasets.Image(), "shape": datasets.ClassLabel(names=list(SHAPES))}),
    )


@pytest.fixture(scope="module", params=method_names())
def setup(request, data):
    """(model, processor) of a micro model of each method."""
    method = get_method(request.param)
    captions = dataset_captions(datasets.DatasetDict(test=data))
    processor = method.build_processor(method.build_tokenizer([*captions, *SHAPES, "photo of"]), IMAGE_SIZE)
    torch.manual_seed(0)
    config = method.tiny_config(processor.tokenizer, IMAGE_SIZE, **method.test_overrides)
    return method.model_class(config).eval(), processor


@pytest.fixture(scope="module")
def albef_dir(tmp_path_factory, data):
    method = get_method("albef")
    processor = method.build_processor(
        method.build_tokenizer([*dataset_captions(datasets.DatasetDict(test=data)), *SHAPES]), IMAGE_SIZE
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("albef")
    method.model_class(method.tiny_config(processor.tokenizer, IMAGE_SIZE, **method.test_overrides)).save_pretrained(
        folder
    )
    processor.save_pretrained(folder)
    return folder


def test_retrieval_point_estimates_are_evaluate_retrievals(setup, data):
    model, processor = setup
    expected = evaluate_retrieval(model, processor, data, show_progress=False)
    result = ImageTextRetrievalEvaluator().compute((model, processor), data)
    assert {key: result[key] for key in RECALL_KEYS} == {key: expected[key] for key in RECALL_KEYS}
    assert (result["num_images"], result["num_texts"]) == (expected["num_images"], expected["num_texts"])
    assert result["total_time_in_seconds"] > 0

    boot = ImageTextRetrievalEvaluator().compute(
        model, data, processor=processor, strategy="bootstrap", n_resamples=999, random_state=0
    )
    for key in RECALL_KEYS:
        low, high = boot[key]["confidence_interval"]
        assert boot[key]["score"] == expected[key]
        assert low <= expected[key] <= high
        assert boot[key]["standard_error"] >= 0


def test_zero_shot_predictions_are_zero_shot_classifys(setup, shapes):
    model, processor = setup
    evaluator = ZeroShotImageClassificationEvaluator()
    result = evaluator.compute(
        (model, processor), shapes, input_column="picture", label_column="shape", templates=TEMPLATES, ks=(1, 2, 5)
    )
    preds = zero_shot_classify(model, processor, list(shapes["picture"]), SHAPES, TEMPLATES)["preds"]
    labels = torch.tensor(shapes["shape"])
    assert result["top1_accuracy"] == pytest.approx(100.0 * (preds == labels).double().mean().item())
    assert result["top5_accuracy"] == 100.0  # five classes
    assert result["top1_accuracy"] <= result["top2_accuracy"] <= 100.0
    assert (result["num_images"], result["num_classes"]) == (len(shapes), len(SHAPES))

    boot = evaluator.compute(
        (model, processor), shapes, input_column="picture", label_column="shape", templates=TEMPLATES,
        strategy="bootstrap", n_resamples=999, random_state=0,
    )  # fmt: skip
    low, high = boot["top1_accuracy"]["confidence_interval"]
    assert boot["top1_accuracy"]["score"] == result["top1_accuracy"]
    assert low <= result["top1_accuracy"] <= high
    assert boot["top5_accuracy"] == {"score": 100.0, "confidence_interval": (100.0, 100.0), "standard_error": 0.0}


def test_pipelines_and_folders_are_accepted(albef_dir, data, shapes):
    folder_result = ImageTextRetrievalEvaluator().compute(str(albef_dir), data)
    pipe_result = ImageTextRetrievalEvaluator().compute(pipeline(TASK, model=str(albef_dir)), data)
    assert {k: folder_result[k] for k in RECALL_KEYS} == {k: pipe_result[k] for k in RECALL_KEYS}

    classifier = pipeline("zero-shot-image-classification", model=str(albef_dir))
    evaluator = ZeroShotImageClassificationEvaluator()
    from_pipe = evaluator.compute(classifier, shapes, input_column="picture", label_column="shape")
    from_folder = evaluator.compute(albef_dir, shapes, input_column="picture", label_column="shape")
    assert from_pipe["top1_accuracy"] == from_folder["top1_accuracy"]


def random_ranks(num_images: int, captions_per_image: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranks of image queries (text retrieval) and of text queries (image retrieval)."""
    generator = torch.Generator().manual_seed(seed)
    txt = torch.randint(0, 15, (num_images,), generator=generator)
    img = torch.randint(0, 15, (num_images * captions_per_image,), generator=generator)
    return txt, img


def intervals(txt: torch.Tensor, img: torch.Tensor, n_resamples: int) -> dict[str, dict]:
    scores = {**recall_at(txt, "txt", RECALL_KS), **recall_at(img, "img", RECALL_KS)}
    scores["r_mean"] = (scores["txt_r_mean"] + scores["img_r_mean"]) / 2
    return bootstrap_intervals((txt, img), recall_hit_rates(RECALL_KS), scores, 0.95, n_resamples, random_state=0)


def test_intervals_contain_the_estimate_shrink_with_more_queries_and_match_the_binomial_error():
    txt, img = random_ranks(100, 2, seed=0)
    small = intervals(txt, img, n_resamples=2000)
    large = intervals(txt.repeat(16), img.repeat(16), n_resamples=2000)  # same rates, 16x the queries
    for key in RECALL_KEYS:
        assert small[key]["score"] == pytest.approx(large[key]["score"])
        for result in (small, large):
            low, high = result[key]["confidence_interval"]
            assert low <= result[key]["score"] <= high
        width = np.subtract(*small[key]["confidence_interval"][::-1])
        assert np.subtract(*large[key]["confidence_interval"][::-1]) == pytest.approx(width / 4, rel=0.25)

    def binomial_error(rate: float, n: int) -> float:
        return 100.0 * np.sqrt(rate / 100 * (1 - rate / 100) / n)

    for key, n in (("txt_r5", 100), ("img_r5", 200)):
        assert small[key]["standard_error"] == pytest.approx(binomial_error(small[key]["score"], n), rel=0.1)
    # r_mean averages two independently resampled populations
    expected = np.hypot(small["txt_r_mean"]["standard_error"], small["img_r_mean"]["standard_error"]) / 2
    assert small["r_mean"]["standard_error"] == pytest.approx(expected, rel=0.1)


def test_a_key_without_spread_gets_a_point_interval():
    txt, img = random_ranks(50, 2, seed=2)
    result = intervals(txt.clamp(max=4), img, n_resamples=999)  # every image query within the top 5
    assert result["txt_r5"] == result["txt_r10"] == {"score": 100.0, "confidence_interval": (100.0, 100.0),
                                                     "standard_error": 0.0}  # fmt: skip
    assert result["img_r5"]["standard_error"] > 0


def test_9999_resamples_of_100_images_take_well_under_a_second():
    txt, img = random_ranks(100, 5, seed=1)
    start = time.perf_counter()
    intervals(txt, img, n_resamples=9999)
    assert time.perf_counter() - start < 0.5


def test_errors(albef_dir, data, shapes):
    model, processor = AutoModel.from_pretrained(albef_dir), AutoProcessor.from_pretrained(albef_dir)
    with pytest.raises(ValueError, match="with its processor"):
        ImageTextRetrievalEvaluator().compute(model, data)
    with pytest.raises(ValueError, match="not a ClassLabel"):
        unnamed = shapes.cast_column("shape", datasets.Value("int64"))
        ZeroShotImageClassificationEvaluator().compute(
            (model, processor), unnamed, input_column="picture", label_column="shape"
        )
    with pytest.raises(ValueError, match="Labels must be class indices"):
        ZeroShotImageClassificationEvaluator().compute(
            (model, processor), shapes, input_column="picture", label_column="shape", class_names=["circle"]
        )
    with pytest.raises(ValueError, match="strategy must be"):
        ImageTextRetrievalEvaluator().compute((model, processor), data, strategy="jackknife")
    with pytest.raises(ValueError, match="Invalid `label_column` caption"):
        ImageTextRetrievalEvaluator().compute((model, processor), data, label_column="caption")
