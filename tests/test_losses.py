"""The named loss units of `vlalign.models.losses`, checked against hand-computed values, independently of any model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlalign.models.losses import (
    check_loss_finite,
    contrastive_targets,
    distilled_mlm_loss,
    gather_without_grad,
    hard_negative_matching_loss,
    queue_contrastive_loss,
    sample_hard_negatives,
    soft_cross_entropy,
)


def unit_rows(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_soft_cross_entropy_with_one_hot_targets_is_cross_entropy():
    logits = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 5, 2, 2])
    torch.testing.assert_close(
        soft_cross_entropy(logits, F.one_hot(labels, 6).float()), F.cross_entropy(logits, labels)
    )


def test_contrastive_targets_are_uniform_over_same_image_including_queue():
    idx = torch.tensor([3, 3, 5])
    bank_idx = torch.tensor([3, 3, 5, -100, 5, 3])
    targets = contrastive_targets(idx, bank_idx, sim_momentum=None, alpha=0.0)
    torch.testing.assert_close(targets.sum(1), torch.ones(3))
    torch.testing.assert_close(targets[0], torch.tensor([1 / 3, 1 / 3, 0, 0, 0, 1 / 3]))
    torch.testing.assert_close(targets[2], torch.tensor([0, 0, 0.5, 0, 0.5, 0]))


def test_contrastive_targets_mix_in_the_momentum_softmax():
    idx, bank_idx = torch.tensor([0, 1]), torch.tensor([0, 1, -100])
    sim_m = torch.tensor([[1.0, 0.0, 2.0], [0.5, 0.5, 0.5]])
    targets = contrastive_targets(idx, bank_idx, sim_m, alpha=0.4)
    torch.testing.assert_close(targets, 0.4 * sim_m.softmax(1) + 0.6 * torch.eye(2, 3))


class TestQueueContrastiveLoss:
    def inputs(self):
        return dict(
            image_feat=unit_rows(3, 8, seed=0).requires_grad_(),
            text_feat=unit_rows(3, 8, seed=1).requires_grad_(),
            image_feat_m=unit_rows(3, 8, seed=2),
            text_feat_m=unit_rows(3, 8, seed=3),
            image_queue=unit_rows(5, 8, seed=4).t(),
            text_queue=unit_rows(5, 8, seed=5).t(),
            idx=torch.arange(3),
            queue_idx=torch.full((5,), -100),
            temp=0.07,
        )

    def test_without_distillation_is_infonce_over_batch_and_queue(self):
        x = self.inputs()
        out = queue_contrastive_loss(**x, alpha=0.0)
        text_bank = torch.cat([x["text_feat_m"], x["text_queue"].t()])
        image_bank = torch.cat([x["image_feat_m"], x["image_queue"].t()])
        labels = torch.arange(3)
        expected = (
            F.cross_entropy(x["image_feat"] @ text_bank.t() / 0.07, labels)
            + F.cross_entropy(x["text_feat"] @ image_bank.t() / 0.07, labels)
        ) / 2
        torch.testing.assert_close(out.loss, expected)
        assert out.sim_i2t.shape == (3, 8) and out.batch_columns == slice(0, 3)

    def test_distillation_targets_and_gradients(self):
        x = self.inputs()
        out = queue_contrastive_loss(**x, alpha=0.4)
        text_bank = torch.cat([x["text_feat_m"], x["text_queue"].t()]).t()
        image_bank = torch.cat([x["image_feat_m"], x["image_queue"].t()]).t()
        positives = torch.eye(3, 8)
        i2t_targets = 0.4 * (x["image_feat_m"] @ text_bank / 0.07).softmax(1) + 0.6 * positives
        t2i_targets = 0.4 * (x["text_feat_m"] @ image_bank / 0.07).softmax(1) + 0.6 * positives
        expected = (
            soft_cross_entropy(x["image_feat"] @ text_bank / 0.07, i2t_targets)
            + soft_cross_entropy(x["text_feat"] @ image_bank / 0.07, t2i_targets)
        ) / 2
        torch.testing.assert_close(out.loss, expected)
        out.loss.backward()
        assert x["image_feat"].grad is not None and x["text_feat"].grad is not None

    def test_queued_captions_of_the_same_image_are_positives(self):
        x = self.inputs()
        x["queue_idx"] = torch.tensor([0, -100, 0, -100, -100])
        out = queue_contrastive_loss(**x, alpha=0.0)
        probabilities = out.sim_i2t.log_softmax(1)
        expected_i2t = -(probabilities[0, [0, 3, 5]].mean() + probabilities[1, 1] + probabilities[2, 2]) / 3
        probabilities = out.sim_t2i.log_softmax(1)
        expected_t2i = -(probabilities[0, [0, 3, 5]].mean() + probabilities[1, 1] + probabilities[2, 2]) / 3
        torch.testing.assert_close(out.loss, (expected_i2t + expected_t2i) / 2)


class TestHardNegativeMatchingLoss:
    def run(self, idx: list[int], seed: int = 0):
        batch = len(idx)
        seen = {}

        def score_pairs(texts, masks, images, image_index):
            assert len(images) == batch  # each image once, indexed by its pairs
            images = images[image_index]
            seen.update(texts=texts, masks=masks, images=images)
            return torch.stack([texts[:, 0, 0] - images[:, 0, 0], images[:, 0, 0] - texts[:, 0, 0]], dim=1)

        text_states = torch.arange(batch, dtype=torch.float32).view(batch, 1, 1).expand(batch, 2, 1)
        image_states = torch.arange(batch, dtype=torch.float32).view(batch, 1, 1).expand(batch, 3, 1) + 100
        similarity = torch.randn(batch, batch, generator=torch.Generator().manual_seed(seed))
        out = hard_negative_matching_loss(
            score_pairs,
            text_states,
            torch.ones(batch, 2, dtype=torch.long),
            image_states,
            similarity,
            similarity.t(),
            torch.tensor(idx),
            torch.Generator().manual_seed(seed),
        )
        return out, seen

    def test_pairs_are_positives_then_both_kinds_of_negatives(self):
        idx = [0, 0, 1, 2]
        out, seen = self.run(idx)
        assert out.logits.shape == (12, 2) and out.labels.tolist() == [1] * 4 + [0] * 8
        text_of = seen["texts"][:, 0, 0].long().tolist()
        image_of = (seen["images"][:, 0, 0] - 100).long().tolist()
        assert text_of[:4] == image_of[:4] == [0, 1, 2, 3]
        assert text_of[4:8] == [0, 1, 2, 3] and image_of[8:] == [0, 1, 2, 3]
        assert all(idx[t] != idx[i] for t, i in zip(text_of[4:], image_of[4:], strict=True))
        torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, out.labels))
        assert seen["masks"].shape == (12, 2)

    def test_one_image_batch_has_positives_only(self):
        out, _ = self.run([4, 4, 4])
        assert out.labels.tolist() == [1, 1, 1]


class TestHardNegativeSampling:
    def test_never_samples_a_positive(self):
        generator = torch.Generator().manual_seed(0)
        idx = torch.tensor([0, 0, 1, 2, 2])
        same = idx[:, None] == idx[None, :]
        similarity = torch.randn(5, 5, generator=generator) * 10
        for _ in range(200):
            rows, columns = sample_hard_negatives(similarity, same, generator)
            assert rows.tolist() == [0, 1, 2, 3, 4]
            assert not same[rows, columns].any()

    def test_follows_softmax_weights(self):
        generator = torch.Generator().manual_seed(0)
        similarity = torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
        same = torch.eye(3, dtype=torch.bool)
        picks = torch.stack([sample_hard_negatives(similarity, same, generator)[1][0] for _ in range(4000)])
        expected = torch.softmax(torch.tensor([2.0, 0.0]), 0)[0].item()  # column 1 vs column 2
        assert (picks == 1).float().mean().item() == pytest.approx(expected, abs=0.03)

    @pytest.mark.parametrize(
        "similarity, idx, expected_rows",
        [
            (torch.zeros(1, 1), [0], []),  # batch of one: no negative exists
            (torch.zeros(2, 2), [0, 1], [0, 1]),  # batch of two: the other item
            (torch.full((3, 3), 5.0), [0, 1, 2], [0, 1, 2]),  # all-equal similarities
            (torch.randn(3, 3), [4, 4, 4], []),  # one image repeated: nothing to mine
            (torch.tensor([[-1e4, -1e4], [-1e4, -1e4]]), [0, 1], [0, 1]),  # softmax underflow in the official code
            (torch.tensor([[0.0, float("nan")], [0.0, 0.0]]), [0, 1], [0, 1]),  # a broken row falls back to uniform
        ],
    )
    def test_degenerate_batches_do_not_crash(self, similarity, idx, expected_rows):
        idx = torch.tensor(idx)
        rows, columns = sample_hard_negatives(similarity, idx[:, None] == idx[None, :])
        assert rows.tolist() == expected_rows
        assert all(idx[r] != idx[c] for r, c in zip(rows.tolist(), columns.tolist(), strict=True))


class TestDistilledMlmLoss:
    def inputs(self):
        generator = torch.Generator().manual_seed(0)
        logits = torch.randn(2, 4, 7, generator=generator, requires_grad=True)
        teacher = torch.randn(2, 4, 7, generator=generator)
        labels = torch.tensor([[-100, 3, -100, 6], [1, -100, -100, -100]])
        return logits, teacher, labels

    def test_alpha_zero_is_cross_entropy_on_masked_tokens_and_skips_the_teacher(self):
        logits, _, labels = self.inputs()
        loss = distilled_mlm_loss(logits, labels, lambda: pytest.fail("teacher ran with alpha 0"), alpha=0.0)
        torch.testing.assert_close(loss, F.cross_entropy(logits.view(-1, 7), labels.view(-1)))

    def test_mixes_in_the_teacher_softmax(self):
        logits, teacher, labels = self.inputs()
        loss = distilled_mlm_loss(logits, labels, lambda: teacher, alpha=0.4)
        selected = labels != -100
        soft = soft_cross_entropy(logits[selected], teacher[selected].softmax(-1))
        torch.testing.assert_close(loss, 0.6 * F.cross_entropy(logits[selected], labels[selected]) + 0.4 * soft)
        loss.backward()
        assert logits.grad is not None

    def test_no_masked_token_gives_zero_not_nan(self):
        logits, teacher, labels = self.inputs()
        loss = distilled_mlm_loss(logits, torch.full_like(labels, -100), lambda: teacher, alpha=0.4)
        assert loss.item() == 0.0
        loss.backward()
        assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_gather_without_grad_on_one_process_is_a_detached_identity():
    x = torch.randn(3, 2, requires_grad=True)
    gathered = gather_without_grad(x)
    assert torch.equal(gathered, x) and not gathered.requires_grad


def test_check_loss_finite_names_the_loss():
    check_loss_finite({"loss_itc": torch.tensor(1.0), "loss_mlm": None})
    with pytest.raises(FloatingPointError, match="loss_itm is not finite"):
        check_loss_finite({"loss_itm": torch.tensor(float("nan"))})
