"""Alignment objectives as small named units that the models compose.

* [`queue_contrastive_loss`]: ITC against momentum feature queues with momentum distillation (ALBEF, CODIS, SIMLA).
* [`hard_negative_matching_loss`]: ITM on hard negatives mined from the contrastive similarities.
* [`distilled_mlm_loss`]: masked language modelling mixed with a momentum teacher's soft targets (vocabulary-axis
  distillation, or SIMLA's official sequence-axis quirk).
* [`masked_image_modeling_loss`]: visual-token prediction at masked patches with momentum distillation (SIMLA's MIM).
* [`psl_keyword_targets`], [`pseudo_keyword_loss`]: keyword pseudo-labels voted by the text's CLS attention, and
  their multi-label BCE mixed with a momentum teacher's probabilities (SIMLA's PSL).
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
    """Fail fast on a diverged step instead of silently training on NaNs. One host sync for all the losses (an
    accelerator waits for the forward once per step, not once per loss); the names only on failure."""
    present = {name: value for name, value in losses.items() if value is not None}
    if not present or torch.isfinite(torch.stack([value.detach().float().sum() for value in present.values()])).all():
        return
    for name, value in present.items():
        if not torch.isfinite(value).all():
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


#: scores image-text pairs: (text token states `[pairs, ...]`, their mask or None, image token states `[images, ...]`,
#: `[pairs]` index of each pair's image) -> `[pairs, 2]` ITM logits. Each image comes once however many pairs use it,
#: so a fusion encoder projects its cross-attention keys and values once (`AlbefFusionModel(image_index=...)`).
PairScorer = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor], torch.Tensor]


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
    positives = torch.arange(batch_size, device=image_states.device)
    logits = score_pairs(texts, masks, image_states, torch.cat([positives, negative_images, image_rows]))
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    labels[:batch_size] = 1
    return HardNegativeMatchingOutput(loss=F.cross_entropy(logits, labels), logits=logits, labels=labels)


#: accepted values of `distilled_mlm_loss(distill_axis=...)`
MLM_DISTILL_AXES = ("vocab", "sequence")


def distilled_mlm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: Callable[[], torch.Tensor] | None = None,
    alpha: float = 0.0,
    *,
    distill_axis: str = "vocab",
) -> torch.Tensor:
    """Masked language modelling with momentum distillation (ALBEF, SIMLA):
    (1-α)·CE(labels) + α·soft CE against the teacher's vocabulary softmax, over the masked tokens (labels != -100).

    With `distill_axis="vocab"` (the default) the student's log-probabilities are normalised over the vocabulary (the
    fixed version, ALBEF#58). `distill_axis="sequence"` keeps the official quirk of SIMLA's `med.py` (and of ALBEF
    before that fix): `log_softmax(logits, dim=1)` normalises the *full* `[batch, tokens, vocab]` scores over the token
    axis (every position, masked or not, padding included), that is then weighted by the teacher's vocabulary
    softmax, summed over the vocabulary and averaged over the masked tokens. The released SIMLA checkpoints were trained
    with it; use it for parity, the default for new training. The hard term is the same for both.

    A batch without any masked token gives 0 (with a graph, so backward works) rather than the official NaN.

    Args:
        logits: `[batch, tokens, vocab]` student scores.
        labels: `[batch, tokens]` original ids at masked positions, -100 elsewhere.
        teacher_logits: returns the teacher's `[batch, tokens, vocab]` scores; called (without gradients) only when
            α > 0 and some token is masked.
        alpha: distillation weight (0 turns distillation off).
        distill_axis: `"vocab"` or `"sequence"`: the axis the student's log-softmax normalises in the distillation
            term (see above).
    """
    if distill_axis not in MLM_DISTILL_AXES:
        raise ValueError(
            f"distill_axis={distill_axis!r} is not supported; use 'vocab' (normalise over the vocabulary, the fixed "
            "ALBEF loss) or 'sequence' (the official SIMLA log_softmax(dim=1) quirk)."
        )
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"MLM logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}: pass logits as "
            "[batch, tokens, vocab] and labels as [batch, tokens] (-100 at unmasked positions)."
        )
    if distill_axis == "sequence" and logits.dim() != 3:
        raise ValueError(
            f"distill_axis='sequence' normalises over dim 1 of [batch, tokens, vocab] logits, got shape "
            f"{tuple(logits.shape)}; pass the unflattened logits of the whole sequence."
        )
    selected = labels != -100
    if not selected.any():
        return logits.sum() * 0.0
    student = logits[selected].float()
    loss = F.cross_entropy(student, labels[selected])
    if teacher_logits is not None and alpha > 0:
        with torch.no_grad():
            teacher = teacher_logits()
            if teacher.shape != logits.shape:
                raise ValueError(
                    f"MLM teacher logits {tuple(teacher.shape)} do not match the student's {tuple(logits.shape)}; "
                    "the momentum model must score the same masked ids."
                )
            soft_labels = F.softmax(teacher[selected].float(), dim=-1)
        if distill_axis == "vocab":
            distill = soft_cross_entropy(student, soft_labels)
        else:
            # Official quirk: normalise the whole sequence's scores over the token axis, then select.
            log_probs = F.log_softmax(logits.float(), dim=1)[selected]
            distill = -(log_probs * soft_labels).sum(dim=-1).mean()
        loss = (1 - alpha) * loss + alpha * distill
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


TeacherLogits = torch.Tensor | Callable[[], torch.Tensor]


def masked_image_modeling_loss(
    logits: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: TeacherLogits | None = None,
    alpha: float = 0.0,
) -> torch.Tensor:
    """Masked image modelling with momentum distillation (the image half of SIMLA's XMM):
    (1-α)·CE(logits[mask], labels) + α·soft CE against softmax(teacher_logits[mask]), both averaged over the masked
    patches. Unlike SIMLA's MLM, both terms normalise over the codebook axis (as the official code does).

    A batch without any masked patch gives 0 (with a graph, so backward works).

    Args:
        logits: `[batch, patches, codebook]` student scores of the image tokens (CLS dropped).
        mask: `[batch, patches]` bool, True at the masked patches.
        labels: `[masked]` visual-token ids of the masked patches, in row-major (batch, patch) order, i.e.
            `visual_token_ids[mask]`.
        teacher_logits: the momentum model's `[batch, patches, codebook]` scores, or a callable returning them
            (called, without gradients, only when α > 0 and some patch is masked, which saves the teacher's pass).
        alpha: distillation weight (0 turns distillation off).
    """
    if mask.dtype != torch.bool:
        raise ValueError(f"The MIM mask must be a bool tensor, got {mask.dtype}; pass `mask.bool()`.")
    if logits.dim() != 3 or logits.shape[:-1] != mask.shape:
        raise ValueError(
            f"MIM logits {tuple(logits.shape)} do not match the mask {tuple(mask.shape)}: pass logits as "
            "[batch, patches, codebook] (CLS dropped) and the mask as [batch, patches]."
        )
    num_masked = int(mask.sum())
    if labels.shape != (num_masked,):
        raise ValueError(
            f"Got labels of shape {tuple(labels.shape)} for {num_masked} masked patches; pass one visual-token id per "
            "masked patch, in row-major order: `visual_token_ids[mask]`."
        )
    if num_masked == 0:
        return logits.sum() * 0.0
    student = logits[mask].float()
    loss = F.cross_entropy(student, labels)
    if teacher_logits is not None and alpha > 0:
        with torch.no_grad():
            teacher = teacher_logits() if callable(teacher_logits) else teacher_logits
            if teacher.shape != logits.shape:
                raise ValueError(
                    f"MIM teacher logits {tuple(teacher.shape)} do not match the student's {tuple(logits.shape)}; "
                    "the momentum model must score the same masked images."
                )
            soft_labels = F.softmax(teacher[mask].float(), dim=-1)
        loss = (1 - alpha) * loss + alpha * soft_cross_entropy(student, soft_labels)
    return loss


@dataclass
class PseudoKeywordTargets:
    """What [`psl_keyword_targets`] computed (all constant; no gradients).

    Args:
        salient_positions: `[batch, heads * positions_per_head]` the top key positions of each head's CLS row,
            flattened per example (head-major).
        position_counts: `[batch, tokens]` int64: how many heads voted for each position.
        top_positions: `[batch, num_keywords]` the `torch.topk` of the counts (the keyword positions).
        keyword_ids: `[batch, num_keywords]` the token ids at those positions.
        hard_targets: `[batch, vocab]` float32 multi-hot over the vocabulary at the keyword ids, the CLS column zeroed.
    """

    salient_positions: torch.Tensor
    position_counts: torch.Tensor
    top_positions: torch.Tensor
    keyword_ids: torch.Tensor
    hard_targets: torch.Tensor


@torch.no_grad()
def psl_keyword_targets(
    cls_attention: torch.Tensor,
    input_ids: torch.Tensor,
    vocab_size: int,
    cls_token_id: int,
    positions_per_head: int = 4,
    num_keywords: int = 5,
) -> PseudoKeywordTargets:
    """SIMLA's pseudo-labelled keywords (PSL hard targets) from the text's CLS self-attention.

    Each head of the CLS query row votes for its `positions_per_head` most attended key positions; the
    `num_keywords` positions with the most votes are the keywords, and the target is a multi-hot over the whole
    tokenizer vocabulary at their ids (duplicates collapse) with the [CLS] column zeroed. There is no stop-word list:
    as in the official code, any token, [PAD] included, can become a target ([PAD] does when fewer than
    `num_keywords` positions got votes).

    Ties between counts (frequent with an untrained model) are broken by `torch.topk`, kept on purpose (official
    quirk, do not replace with a stable sort): on CPU, with the int64 counts, it reproduces the official targets.
    The official values are 4 positions per head, 5 keywords and the self-attention of layer index 11 of the momentum
    BERT in multimodal mode (cross-attending to the online image embeddings).

    Args:
        cls_attention: `[batch, heads, tokens]` attention probabilities of the CLS query, i.e. `attentions[:, :, 0]`.
        input_ids: `[batch, tokens]` the caption ids the attention was computed on.
        vocab_size: width of the targets (the tokenizer vocabulary).
        cls_token_id: the [CLS] id, whose column is zeroed.
    """
    if cls_attention.dim() != 3:
        hint = " (take the CLS query row: `attentions[:, :, 0]`)" if cls_attention.dim() == 4 else ""
        raise ValueError(
            f"cls_attention must be [batch, heads, tokens], got shape {tuple(cls_attention.shape)}{hint}."
        )
    batch_size, num_heads, num_tokens = cls_attention.shape
    if input_ids.shape != (batch_size, num_tokens):
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)} do not match cls_attention {tuple(cls_attention.shape)}; pass the "
            f"[batch, tokens] ids the attention was computed on, here ({batch_size}, {num_tokens})."
        )
    if not 0 < positions_per_head <= num_tokens or not 0 < num_keywords <= num_tokens:
        raise ValueError(
            f"positions_per_head ({positions_per_head}) and num_keywords ({num_keywords}) must be between 1 and the "
            f"number of tokens ({num_tokens}); pad the captions to at least that length or lower them."
        )
    if not 0 <= cls_token_id < vocab_size:
        raise ValueError(
            f"cls_token_id {cls_token_id} is outside the vocabulary [0, {vocab_size}); pass the [CLS] id."
        )
    salient = cls_attention.topk(positions_per_head, dim=-1).indices.reshape(batch_size, -1)
    counts = torch.zeros(batch_size, num_tokens, dtype=torch.long, device=salient.device)
    counts.scatter_add_(1, salient, torch.ones_like(salient))
    top_positions = counts.topk(num_keywords, dim=-1).indices
    keyword_ids = input_ids.gather(1, top_positions)
    if keyword_ids.min() < 0 or keyword_ids.max() >= vocab_size:
        raise ValueError(
            f"Keyword ids fall outside the vocabulary [0, {vocab_size}); pass the tokenizer's vocab size."
        )
    hard_targets = torch.zeros(batch_size, vocab_size, dtype=torch.float32, device=keyword_ids.device)
    hard_targets.scatter_(1, keyword_ids, 1.0)
    hard_targets[:, cls_token_id] = 0.0
    return PseudoKeywordTargets(salient, counts, top_positions, keyword_ids, hard_targets)


def pseudo_keyword_loss(
    logits: torch.Tensor,
    hard_targets: torch.Tensor,
    soft_targets: torch.Tensor | None = None,
    alpha: float = 0.0,
) -> torch.Tensor:
    """SIMLA's PSL objective: (1-α)·BCEwithLogits(logits, hard) + α·BCEwithLogits(logits, soft), each a mean over
    batch × vocabulary elements.

    Args:
        logits: `[batch, vocab]` keyword scores predicted from the image (SIMLA: `concept_head(image_feat)`).
        hard_targets: `[batch, vocab]` multi-hot keyword targets ([`psl_keyword_targets`]).
        soft_targets: `[batch, vocab]` probabilities from the momentum model (SIMLA:
            `sigmoid(concept_head_m(image_feat_m))`); unused when α = 0.
        alpha: weight of the soft targets.
    """
    if hard_targets.shape != logits.shape:
        raise ValueError(
            f"PSL hard targets {tuple(hard_targets.shape)} do not match the logits {tuple(logits.shape)}; both must "
            "be [batch, vocab] over the same vocabulary."
        )
    logits = logits.float()
    loss = F.binary_cross_entropy_with_logits(logits, hard_targets.float())
    if soft_targets is not None and alpha > 0:
        if soft_targets.shape != logits.shape:
            raise ValueError(
                f"PSL soft targets {tuple(soft_targets.shape)} do not match the logits {tuple(logits.shape)}; pass "
                "the momentum head's sigmoid probabilities over the same vocabulary."
            )
        soft = F.binary_cross_entropy_with_logits(logits, soft_targets.detach().float())
        loss = (1 - alpha) * loss + alpha * soft
    return loss


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
    "MLM_DISTILL_AXES",
    "PseudoKeywordTargets",
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
    "masked_image_modeling_loss",
    "psl_keyword_targets",
    "pseudo_keyword_loss",
    "queue_contrastive_loss",
    "sample_hard_negatives",
    "soft_cross_entropy",
    "swapped_prediction_loss",
    "transport_cost_loss",
]
