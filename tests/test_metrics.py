"""The `evaluate` metrics of `vlalign.metrics`: `retrieval_recall` loadable offline by path, equal to the library's
recall function on hand-built matrices (ties included), composable with `evaluate.combine`, usable batch by batch and
as a Trainer's `compute_metrics`; `topk_accuracy` against torch's top-k, with ties and errors."""

from __future__ import annotations

import evaluate
import numpy as np
import pytest
import torch
from transformers import EvalPrediction

import vlalign.metrics
from vlalign.evaluation import recall_metrics

IMG2TXT = [[0, 1], [2, 3], [4, 5]]
TXT2IMG = [0, 0, 1, 1, 2, 2]


@pytest.fixture(scope="module")
def recall():
    return evaluate.load(vlalign.metrics.path("retrieval_recall"))


def queries(score_i2t: torch.Tensor, score_t2i: torch.Tensor) -> dict[str, list]:
    """Both score matrices as the metric's query rows."""
    return dict(
        predictions=score_i2t.tolist() + score_t2i.tolist(),
        references=IMG2TXT + [[image] for image in TXT2IMG],
        query_modality=["image"] * len(IMG2TXT) + ["text"] * len(TXT2IMG),
    )


def random_matrices(seed: int, tied: bool) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    score_i2t = torch.randn(3, 6, generator=generator)
    score_t2i = torch.randn(6, 3, generator=generator)
    if tied:  # the ALBEF evaluation's fill value outside the re-ranked top-k: many exact ties
        score_i2t[:, 3:] = -100.0
        score_t2i[:, 1:] = -100.0
    return score_i2t, score_t2i


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("tied", [False, True])
def test_metric_equals_the_library_recall_function(recall, seed, tied):
    score_i2t, score_t2i = random_matrices(seed, tied)
    expected = recall_metrics(score_i2t, score_t2i, IMG2TXT, TXT2IMG, ks=(1, 2, 5))
    assert recall.compute(**queries(score_i2t, score_t2i), ks=[1, 2, 5]) == pytest.approx(expected)


def test_ties_rank_the_higher_index_first(recall):
    scores = [[5.0, -100.0, -100.0, -100.0, -100.0]]
    # ground truth 1 ties with 2..4, which rank before it: rank 4, outside the top 4
    assert recall.compute(predictions=scores, references=[[1]], query_modality=["text"], ks=[4, 5]) == {
        "img_r4": 0.0, "img_r5": 100.0, "img_r_mean": 50.0,
    }  # fmt: skip
    assert recall.compute(predictions=scores, references=[[4]], query_modality=["text"], ks=[1, 2])["img_r2"] == 100.0


def test_batches_accumulate_and_one_direction_alone_works(recall):
    score_i2t, score_t2i = random_matrices(7, tied=False)
    rows = queries(score_i2t, score_t2i)
    for start in range(0, len(rows["predictions"]), 4):
        recall.add_batch(**{name: values[start : start + 4] for name, values in rows.items()})
    assert recall.compute() == pytest.approx(recall_metrics(score_i2t, score_t2i, IMG2TXT, TXT2IMG))
    only_text = recall.compute(predictions=score_i2t.tolist(), references=IMG2TXT, query_modality=["image"] * 3)
    assert set(only_text) == {"txt_r1", "txt_r5", "txt_r10", "txt_r_mean"}


def test_combines_with_other_evaluate_modules(recall):
    score_i2t, score_t2i = random_matrices(3, tied=False)
    combined = evaluate.combine([recall, evaluate.load(vlalign.metrics.path("retrieval_recall"))])
    result = combined.compute(**queries(score_i2t, score_t2i))
    expected = recall_metrics(score_i2t, score_t2i, IMG2TXT, TXT2IMG)["r_mean"]
    # two modules of one name are told apart by a prefix
    assert result["retrieval_recall_0_r_mean"] == result["retrieval_recall_1_r_mean"] == pytest.approx(expected)


def test_bad_queries_get_clear_errors(recall):
    with pytest.raises(ValueError, match="no ground-truth candidate"):
        recall.compute(predictions=[[0.1, 0.2]], references=[[]], query_modality=["image"])
    with pytest.raises(ValueError, match="outside 0..1"):
        recall.compute(predictions=[[0.1, 0.2]], references=[[2]], query_modality=["image"])
    with pytest.raises(ValueError, match="must be 'image' or 'text'"):
        recall.compute(predictions=[[0.1, 0.2]], references=[[0]], query_modality=["audio"])
    with pytest.raises(ValueError, match="different numbers of candidates"):
        recall.compute(predictions=[[0.1, 0.2], [0.3]], references=[[0], [0]], query_modality=["image", "image"])
    with pytest.raises(ValueError, match="Unknown vlalign metric"):
        vlalign.metrics.path("bleu")


def test_retrieval_compute_metrics_takes_a_trainers_eval_prediction():
    score_i2t, score_t2i = random_matrices(5, tied=True)
    expected = recall_metrics(score_i2t, score_t2i, IMG2TXT, TXT2IMG)
    # what Trainer.evaluate hands compute_metrics: numpy predictions (a tuple of outputs) and label_ids
    pair = EvalPrediction(predictions=(score_i2t.numpy(), score_t2i.numpy()), label_ids=np.array(TXT2IMG))
    assert vlalign.metrics.retrieval_compute_metrics(pair) == pytest.approx(expected)
    # one matrix: image retrieval ranks its transpose (a dual encoder's similarities)
    single = EvalPrediction(predictions=score_i2t.numpy(), label_ids=np.array(TXT2IMG))
    assert vlalign.metrics.retrieval_compute_metrics(single) == pytest.approx(
        recall_metrics(score_i2t, score_i2t.t(), IMG2TXT, TXT2IMG)
    )
    with pytest.raises(ValueError, match=r"label_ids \[texts\]"):
        vlalign.metrics.retrieval_compute_metrics(EvalPrediction(score_i2t.numpy(), np.array(TXT2IMG[:-1])))
    with pytest.raises(ValueError, match="names no image row"):
        vlalign.metrics.retrieval_compute_metrics(EvalPrediction(score_i2t.numpy(), np.array([0, 0, 1, 1, 2, 3])))


@pytest.fixture(scope="module")
def accuracy():
    return evaluate.load(vlalign.metrics.path("topk_accuracy"))


def test_topk_accuracy_counts_the_class_within_the_top_k(accuracy):
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(40, 7, generator=generator)
    labels = torch.randint(0, 7, (40,), generator=generator)
    result = accuracy.compute(predictions=scores.tolist(), references=labels.tolist(), ks=[1, 3, 7])
    top3 = scores.topk(3, dim=1).indices
    assert result["top1_accuracy"] == pytest.approx(100.0 * (scores.argmax(1) == labels).double().mean().item())
    assert result["top3_accuracy"] == pytest.approx(100.0 * (top3 == labels[:, None]).any(1).double().mean().item())
    assert result["top7_accuracy"] == 100.0


def test_topk_accuracy_ties_and_errors(accuracy):
    # class 0 ties with 1 and 2, which rank before it (higher index first): rank 2
    assert accuracy.compute(predictions=[[1.0, 1.0, 1.0]], references=[0], ks=[2, 3]) == {
        "top2_accuracy": 0.0, "top3_accuracy": 100.0,
    }  # fmt: skip
    with pytest.raises(ValueError, match="class indices in 0..1"):
        accuracy.compute(predictions=[[0.1, 0.2]], references=[2])
    with pytest.raises(ValueError, match="same classes"):
        accuracy.compute(predictions=[[0.1, 0.2], [0.3]], references=[0, 0])
