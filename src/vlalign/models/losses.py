"""Alignment objectives as small named units that the models compose.

* [`queue_contrastive_loss`]: ITC against momentum feature queues with momentum distillation (ALBEF, CODIS, SIMLA).
* [`hard_negative_matching_loss`]: ITM on hard negatives mined from the contrastive similarities.
* [`distilled_mlm_loss`]: masked language modelling mixed with a momentum teacher's soft targets.
* [`swapped_prediction_loss`], [`assignment_contrastive_loss`]: code alignment against teacher transport plans
  over a codebook (CODIS), and [`transport_cost_loss`], the OT cost between features and prototypes.
* [`GatheredContrastiveLoss`]: CLIP-style InfoNCE over the global batch (FDT).

Each is independent of any model class: the model passes features, similarities and, for ITM, its pair scorer.
This file is shipped with saved models (remote code): it imports only torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def distributed_rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the default process group, or (0, 1) when not running distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's `tensor` concatenated in rank order, with gradients flowing back to each process's slice
    (the backward pass sums the incoming gradients over processes). The tensor itself on a single process."""
    _, world_size = distributed_rank_and_world()
    if world_size == 1:
        return tensor
    return torch.cat(torch.distributed.nn.functional.all_gather(tensor.contiguous()))


def gather_without_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's `tensor` (same shape on all) concatenated in rank order, detached; the tensor itself on a
    single process. For features that only serve as targets or queue entries (the official `concat_all_gather`)."""
    _, world_size = distributed_rank_and_world()
    if world_size == 1:
        return tensor.detach()
    gathered = [torch.empty_like(tensor) for _ in range(world_size)]
    torch.distributed.all_gather(gathered, tensor.detach().contiguous())
    return torch.cat(gathered)


def check_loss_finite(losses: dict[str, torch.Tensor | None]) -> None:
    """Fail fast on a diverged step instead of silently training on NaNs."""
    for name, value in losses.items():
        if value is not None and not torch.isfinite(value).all():
            raise FloatingPointError(
                f"{name} is not finite ({value.item()}). Lower the learning rate, check the inputs for NaN/inf "
                "pixels, or train in float32 instead of float16."
            )


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -Σ targets · log_softmax(logits): cross-entropy against (possibly soft) target rows."""
    return -(F.log_softmax(logits, dim=-1) * targets).sum(dim=-1).mean()


def contrastive_targets(
    idx: torch.Tensor, bank_idx: torch.Tensor, sim_momentum: torch.Tensor | None, alpha: float
) -> torch.Tensor:
    """ITC targets against a feature bank: uniform over the bank entries of the same image (`idx`), mixed with the
    momentum model's softmax when distilling: α·softmax(sim_m) + (1-α)·positives."""
    positives = (idx[:, None] == bank_idx[None, :]).to(torch.float32)
    targets = positives / positives.sum(dim=1, keepdim=True)
    if sim_momentum is not None and alpha > 0:
        targets = alpha * F.softmax(sim_momentum.float(), dim=1) + (1 - alpha) * targets
    return targets


def sample_hard_negatives(
    similarity: torch.Tensor, positive_mask: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one in-batch negative per row with probability softmax(similarity) over the non-positive columns.

    Positives get probability 0 before normalisation (computed in float32), so rows never sum to zero: this is what
    the official ALBEF code's `softmax(sim) + 1e-4` meant to achieve and does not (ALBEF#18, #93). Rows whose every
    column is a positive (batch of 1, or a batch made of one image) have no negative; they are left out.

    Returns the row indices that got a negative and the sampled column for each of them.
    """
    candidates = ~positive_mask
    rows = candidates.any(dim=1).nonzero(as_tuple=True)[0]
    if rows.numel() == 0:
        return rows, rows
    logits = similarity[rows].float().masked_fill(positive_mask[rows], float("-inf"))
    weights = F.softmax(logits, dim=1)
    # A non-finite similarity would poison the draw: fall back to uniform over the candidates of that row.
    broken = ~torch.isfinite(weights).all(dim=1)
    if broken.any():
        weights[broken] = candidates[rows][broken].float()
    return rows, torch.multinomial(weights, 1, generator=generator).squeeze(1)


def bank_contrastive_loss(
    feat: torch.Tensor,
    feat_m: torch.Tensor,
    bank: torch.Tensor,
    idx: torch.Tensor,
    bank_idx: torch.Tensor,
    temp: torch.Tensor | float,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One direction of contrast against a feature bank: the soft cross-entropy of `feat @ bank / temp` against
    targets uniform over the bank entries of the same image, mixed with the momentum features' softmax over the bank
    when α > 0 ([`contrastive_targets`]). Returns (loss, `[batch, bank]` similarities).

    Args:
        feat: `[batch, dim]` L2-normalised online features (gradients flow through these).
        feat_m: `[batch, dim]` the momentum features of the same samples (distillation targets).
        bank: `[dim, bank]` momentum features, one per column; bank_idx: `[bank]` their image indices.
        idx: `[batch]` image index of each sample.
    """
    with torch.no_grad():
        sim_m = feat_m @ bank / temp if alpha > 0 else None
        targets = contrastive_targets(idx, bank_idx, sim_m, alpha)
    sim = feat @ bank / temp
    return soft_cross_entropy(sim, targets), sim


@dataclass
class QueueContrastiveOutput:
    """What [`queue_contrastive_loss`] computed.

    Args:
        loss: mean of the image→text and text→image soft cross-entropies (`loss_i2t`, `loss_t2i`).
        sim_i2t: `[batch, bank]` online image features against the momentum text bank, / temperature.
        sim_t2i: `[batch, bank]` online text features against the momentum image bank, / temperature.
        image_bank, text_bank: `[dim, bank]` the momentum banks (batch columns, then the queue).
        bank_idx: `[bank]` image index of each bank column.
        batch_columns: the bank columns holding this process's own batch (in-batch negatives for ITM live there).
        num_batch_columns: how many leading bank columns hold current-batch features (the rest is the queue).
    """

    loss: torch.Tensor
    loss_i2t: torch.Tensor
    loss_t2i: torch.Tensor
    sim_i2t: torch.Tensor
    sim_t2i: torch.Tensor
    image_bank: torch.Tensor
    text_bank: torch.Tensor
    bank_idx: torch.Tensor
    batch_columns: slice
    num_batch_columns: int


def queue_contrastive_loss(
    image_feat: torch.Tensor,
    text_feat: torch.Tensor,
    image_feat_m: torch.Tensor,
    text_feat_m: torch.Tensor,
    image_queue: torch.Tensor,
    text_queue: torch.Tensor,
    idx: torch.Tensor,
    queue_idx: torch.Tensor,
    temp: torch.Tensor | float,
    alpha: float,
    global_negatives: bool = False,
) -> QueueContrastiveOutput:
    """Image-text contrast (ITC) against momentum feature banks, with momentum distillation (ALBEF, MoCo-style).

    Each online feature is scored against a bank made of the batch's momentum features followed by the queue
    ([`bank_contrastive_loss`] in each direction); the loss is the mean of both directions.

    Args:
        image_feat, text_feat: `[batch, dim]` L2-normalised online features (gradients flow through these).
        image_feat_m, text_feat_m: `[batch, dim]` L2-normalised momentum features of the same pairs.
        image_queue, text_queue: `[dim, queue]` queued momentum features, one per column.
        idx: `[batch]` image index of each pair; queue_idx: `[queue]` image index of each queued entry (-100 for
            entries that match nothing).
        temp: the softmax temperature.
        alpha: distillation weight (0 turns distillation off).
        global_negatives: put every process's momentum features (gathered in rank order) into the bank instead of
            the local batch only; `idx` must then be unique across processes.
    """
    rank, world_size = distributed_rank_and_world() if global_negatives else (0, 1)
    batch_size = image_feat.shape[0]
    with torch.no_grad():
        batch_image_m, batch_text_m, batch_idx = image_feat_m, text_feat_m, idx
        if world_size > 1:
            batch_image_m, batch_text_m, batch_idx = (gather_without_grad(t) for t in (image_feat_m, text_feat_m, idx))
        image_bank = torch.cat([batch_image_m.t(), image_queue], dim=1)
        text_bank = torch.cat([batch_text_m.t(), text_queue], dim=1)
        bank_idx = torch.cat([batch_idx, queue_idx.view(-1)])

    loss_i2t, sim_i2t = bank_contrastive_loss(image_feat, image_feat_m, text_bank, idx, bank_idx, temp, alpha)
    loss_t2i, sim_t2i = bank_contrastive_loss(text_feat, text_feat_m, image_bank, idx, bank_idx, temp, alpha)
    return QueueContrastiveOutput(
        loss=(loss_i2t + loss_t2i) / 2,
        loss_i2t=loss_i2t,
        loss_t2i=loss_t2i,
        sim_i2t=sim_i2t,
        sim_t2i=sim_t2i,
        image_bank=image_bank,
        text_bank=text_bank,
        bank_idx=bank_idx,
        batch_columns=slice(rank * batch_size, (rank + 1) * batch_size),
        num_batch_columns=batch_image_m.shape[0],
    )


#: scores image-text pairs: (text token states, text mask or None, image token states) -> `[pairs, 2]` ITM logits
PairScorer = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor]


@dataclass
class HardNegativeMatchingOutput:
    """What [`hard_negative_matching_loss`] computed.

    Args:
        loss: cross-entropy of the ITM logits against `labels`.
        logits: `[pairs, 2]` ITM logits: the positive pairs, then (text, hard-negative image) pairs, then
            (hard-negative text, image) pairs; index 1 means "match".
        labels: 1 for the positive pairs, 0 for the negatives.
    """

    loss: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor


def hard_negative_matching_loss(
    score_pairs: PairScorer,
    text_states: torch.Tensor,
    text_mask: torch.Tensor | None,
    image_states: torch.Tensor,
    sim_i2t: torch.Tensor,
    sim_t2i: torch.Tensor,
    idx: torch.Tensor,
    generator: torch.Generator | None = None,
) -> HardNegativeMatchingOutput:
    """Image-text matching (ITM) on contrastively mined hard negatives (ALBEF).

    For each text an in-batch image of another image index is drawn with probability softmax(sim_t2i), and for each
    image a text with probability softmax(sim_i2t) ([`sample_hard_negatives`]); `score_pairs` classifies the positive
    pairs and both sets of negatives, and the loss is the cross-entropy against match / no match.

    Args:
        score_pairs: the model's pair classifier (typically fusion encoder + ITM head).
        text_states: `[batch, tokens, width]` text-encoder outputs; text_mask: their `[batch, tokens]` padding mask.
        image_states: `[batch, patches, width]` image-encoder outputs of the paired images.
        sim_i2t, sim_t2i: `[batch, batch]` in-batch similarities (column j = pair j) that weight the sampling.
        idx: `[batch]` image index of each pair: pairs of the same image are never drawn as negatives.
        generator: RNG for the draws (global RNG when None).
    """
    batch_size = text_states.shape[0]
    with torch.no_grad():
        same_image = idx[:, None] == idx[None, :]
        text_rows, negative_images = sample_hard_negatives(sim_t2i, same_image, generator)
        image_rows, negative_texts = sample_hard_negatives(sim_i2t, same_image, generator)
    texts = torch.cat([text_states, text_states[text_rows], text_states[negative_texts]])
    masks = None
    if text_mask is not None:
        masks = torch.cat([text_mask, text_mask[text_rows], text_mask[negative_texts]])
    images = torch.cat([image_states, image_states[negative_images], image_states[image_rows]])
    logits = score_pairs(texts, masks, images)
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    labels[:batch_size] = 1
    return HardNegativeMatchingOutput(loss=F.cross_entropy(logits, labels), logits=logits, labels=labels)


def distilled_mlm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: Callable[[], torch.Tensor] | None = None,
    alpha: float = 0.0,
) -> torch.Tensor:
    """Masked language modelling with momentum distillation (ALBEF):
    (1-α)·CE(labels) + α·soft CE against the teacher's vocabulary softmax, over the masked tokens (labels != -100).

    The distillation term normalises over the vocabulary (the fixed version, ALBEF#58). A batch without any masked
    token gives 0 (with a graph, so backward works) rather than the official NaN.

    Args:
        logits: `[batch, tokens, vocab]` student scores.
        labels: `[batch, tokens]` original ids at masked positions, -100 elsewhere.
        teacher_logits: returns the teacher's `[batch, tokens, vocab]` scores; called (without gradients) only when
            α > 0 and some token is masked.
        alpha: distillation weight (0 turns distillation off).
    """
    selected = labels != -100
    if not selected.any():
        return logits.sum() * 0.0
    student = logits[selected].float()
    loss = F.cross_entropy(student, labels[selected])
    if teacher_logits is not None and alpha > 0:
        with torch.no_grad():
            soft_labels = F.softmax(teacher_logits()[selected].float(), dim=-1)
        loss = (1 - alpha) * loss + alpha * soft_cross_entropy(student, soft_labels)
    return loss


def swapped_prediction_loss(code_logits: torch.Tensor, target_plan: torch.Tensor) -> torch.Tensor:
    """Code alignment by swapped prediction (SwAV-style, CODIS's L_t2p / L_i2p): the cross-entropy of one
    modality's predicted prototype distribution, softmax(`code_logits`), against the other modality's teacher
    transport plan.

    Args:
        code_logits: `[batch, prototypes]` student scores against the codebook, / prototype temperature.
        target_plan: `[batch, prototypes]` the paired samples' transport plan rows (each a distribution; constant).
    """
    return soft_cross_entropy(code_logits.float(), target_plan)


def assignment_contrastive_loss(
    code_logits: torch.Tensor, target_plans: torch.Tensor, idx: torch.Tensor, plan_idx: torch.Tensor
) -> torch.Tensor:
    """Code alignment as contrast over assignments (the alternative reading of CODIS's "contrast positive and
    negative samples via their cluster assignments"): student row i scores every sample j of the other modality by
    the log-likelihood its predicted prototype distribution gives j's teacher plan, Σ_k plan[j, k]·log p_i[k], and the
    InfoNCE target is uniform over the samples of the same image. The positive pair's score is minus
    [`swapped_prediction_loss`]; the other samples' plans act as negatives.

    Args:
        code_logits: `[batch, prototypes]` student scores against the codebook, / prototype temperature.
        target_plans: `[candidates, prototypes]` teacher plans of the other modality (the global batch; constant).
        idx: `[batch]` image index of each student row; plan_idx: `[candidates]` image index of each plan row.
    """
    pair_scores = F.log_softmax(code_logits.float(), dim=-1) @ target_plans.t()
    return soft_cross_entropy(pair_scores, contrastive_targets(idx, plan_idx, None, 0.0))


def transport_cost_loss(scores: torch.Tensor, plan: torch.Tensor) -> torch.Tensor:
    """Entropic-OT transport cost between samples and prototypes, per sample: mean over rows of
    Σ_k plan[b, k]·(1 − scores[b, k]) with cosine `scores`. With the (constant) optimal plan of the same scores, its
    gradient is the gradient of the OT distance (envelope theorem): features move towards the prototypes they are
    transported to, and prototypes towards their features."""
    return (plan * (1 - scores.float())).sum(dim=-1).mean()


class GatheredContrastiveLoss(nn.Module):
    """Symmetric InfoNCE between paired image and text embeddings, CLIP/FDT style.

    Each process scores its own rows against the embeddings of *all* processes (gathered with gradients), and the
    target of local row i is column `rank * batch + i`. With the data-parallel gradient mean this equals one process
    holding the whole global batch.
    """

    def forward(
        self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor | float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (loss, logits_per_image `[batch, global batch]`, logits_per_text `[batch, global batch]`).
        Embeddings are expected L2-normalised; `logit_scale` multiplies the cosine similarities."""
        if image_embeds.shape[0] != text_embeds.shape[0]:
            raise ValueError(
                f"Got {image_embeds.shape[0]} image and {text_embeds.shape[0]} text embeddings; the contrastive "
                "loss takes image-text pairs, so both batches must have the same size."
            )
        rank, _ = distributed_rank_and_world()
        all_text = gather_with_grad(text_embeds)
        all_image = gather_with_grad(image_embeds)
        logits_per_image = logit_scale * image_embeds @ all_text.t()
        logits_per_text = logit_scale * text_embeds @ all_image.t()
        labels = torch.arange(image_embeds.shape[0], device=image_embeds.device) + rank * image_embeds.shape[0]
        loss = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
        return loss, logits_per_image, logits_per_text


__all__ = [
    "GatheredContrastiveLoss",
    "HardNegativeMatchingOutput",
    "QueueContrastiveOutput",
    "assignment_contrastive_loss",
    "bank_contrastive_loss",
    "check_loss_finite",
    "contrastive_targets",
    "distilled_mlm_loss",
    "distributed_rank_and_world",
    "gather_with_grad",
    "gather_without_grad",
    "hard_negative_matching_loss",
    "queue_contrastive_loss",
    "sample_hard_negatives",
    "soft_cross_entropy",
    "swapped_prediction_loss",
    "transport_cost_loss",
]
