"""Retrieval metrics on hand-built score matrices with known answers, tie-breaking, and re-rank bookkeeping."""

from __future__ import annotations

import pytest
import torch

from vlalign.evaluation import recall_metrics, retrieval_ranks
from vlalign.evaluation.retrieval import _top_k_pairs

# 3 images with 2 captions each: image i owns captions 2i and 2i+1.
IMG2TXT = [[0, 1], [2, 3], [4, 5]]
TXT2IMG = [0, 0, 1, 1, 2, 2]


def test_known_recalls_with_several_captions_per_image():
    score_i2t = torch.tensor(
        [
            [9.0, 1.0, 2.0, 3.0, 4.0, 5.0],  # image 0: its caption 0 is first            -> rank 0
            [9.0, 8.0, 1.0, 7.0, 2.0, 3.0],  # image 1: caption 3 is third (9, 8, 7)      -> rank 2
            [6.0, 5.0, 4.0, 3.0, 2.0, 1.0],  # image 2: captions 4, 5 are fifth and sixth -> rank 4
        ]
    )
    score_t2i = torch.tensor(
        [
            [3.0, 2.0, 1.0],  # caption 0 (image 0): rank 0
            [1.0, 3.0, 2.0],  # caption 1 (image 0): rank 2
            [1.0, 3.0, 2.0],  # caption 2 (image 1): rank 0
            [3.0, 2.0, 1.0],  # caption 3 (image 1): rank 1
            [1.0, 2.0, 3.0],  # caption 4 (image 2): rank 0
            [3.0, 2.0, 1.0],  # caption 5 (image 2): rank 2
        ]
    )
    assert retrieval_ranks(score_i2t, IMG2TXT).tolist() == [0, 2, 4]
    metrics = recall_metrics(score_i2t, score_t2i, IMG2TXT, TXT2IMG, ks=(1, 3, 5))
    assert metrics["txt_r1"] == pytest.approx(100 / 3)
    assert metrics["txt_r3"] == pytest.approx(200 / 3)
    assert metrics["txt_r5"] == pytest.approx(100.0)
    assert metrics["img_r1"] == pytest.approx(50.0)
    assert metrics["img_r3"] == pytest.approx(100.0)
    assert metrics["txt_r_mean"] == pytest.approx((100 / 3 + 200 / 3 + 100) / 3)
    assert metrics["r_mean"] == pytest.approx((metrics["txt_r_mean"] + metrics["img_r_mean"]) / 2)


def test_ties_rank_higher_index_first_regardless_of_platform():
    scores = torch.tensor([[5.0, -100.0, -100.0, -100.0, -100.0]])
    # the ground truth at index 1 is tied with 2..4: they come first (descending index), so it ranks last
    assert retrieval_ranks(scores, [[1]]).tolist() == [4]
    assert retrieval_ranks(scores, [[4]]).tolist() == [1]


def test_query_without_ground_truth_is_an_error():
    with pytest.raises(ValueError, match="no ground-truth candidate"):
        retrieval_ranks(torch.zeros(2, 3), [[0], []])


def test_top_k_pairs_are_unique_across_directions():
    similarities = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.3]])  # 2 images × 3 texts
    pairs, top_texts, top_images = _top_k_pairs(similarities, k_i2t=2, k_t2i=1)
    i2t = {(i, t) for i in range(2) for t in top_texts[i].tolist()}
    t2i = {(i, t) for t in range(3) for i in top_images[t].tolist()}
    assert {tuple(p) for p in pairs.tolist()} == i2t | t2i
    assert len(pairs) == len(i2t | t2i) < len(i2t) + len(t2i)  # shared pairs are scored once
