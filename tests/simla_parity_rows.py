"""The SIMLA parity table: vlalign's SIMLA against the official code's golden outputs (tests/fixtures/simla).

Converts the fixture checkpoints (pretraining, and the fine-tuned retrieval layout) with `vlalign convert --method
simla`, loads them with the Auto classes, runs the recorded inputs (replaying the official forward's random choices)
and measures the max |difference| of every deterministic quantity the official code recorded, one row each.
`test_simla_parity.py` asserts every row against its tolerance.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from conftest import FIXTURES, run_cli
from datasets import Dataset
from safetensors.torch import load_file
from transformers import AutoModelForPreTraining, BatchEncoding

import vlalign
from vlalign.evaluation import evaluate_retrieval
from vlalign.models import losses

SIMLA_FIXTURES = FIXTURES / "simla"
ATOL = 1e-5
METRICS = ("txt_r1", "txt_r5", "txt_r10", "txt_r_mean", "img_r1", "img_r5", "img_r10", "img_r_mean", "r_mean")

Row = tuple[str, tuple[int, ...], float, float]


def convert(output: Path, checkpoint: Path, yaml_file: Path) -> None:
    run_cli(
        "convert", "--method", "simla", "--checkpoint", str(checkpoint), "--config", str(yaml_file),
        "--config", str(SIMLA_FIXTURES / "original" / "shared_bert.json"),
        "--tokenizer", str(SIMLA_FIXTURES / "original"), "--output", str(output),
    )  # fmt: skip


def row(name: str, actual, expected: torch.Tensor) -> Row:
    """(quantity, shape, max |diff|, tolerance): integer and boolean quantities must match exactly."""
    actual = torch.as_tensor(actual)
    if actual.shape != expected.shape:
        raise ValueError(f"{name}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}")
    exact = not expected.is_floating_point()
    diff = (actual.double() - expected.double()).abs().max().item() if expected.numel() else 0.0
    return name, tuple(expected.shape), diff, 0.0 if exact else ATOL


def replay_negatives(*draws: torch.Tensor):
    """`sample_hard_negatives` replaying the official draws: negative image per text, then negative text per image."""
    left = list(draws)

    def replay(similarity, positive_mask, generator=None):
        return torch.arange(similarity.shape[0]), left.pop(0)

    return replay


def pretraining_rows(folder: Path) -> list[Row]:
    inputs, expected = (
        load_file(SIMLA_FIXTURES / "inputs.safetensors"),
        load_file(SIMLA_FIXTURES / "outputs.safetensors"),
    )
    model = AutoModelForPreTraining.from_pretrained(folder, attn_implementation="eager").train()
    albef, pixels, ids, mask = model.base_model, inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"]
    masked_pos, mim_labels = inputs["masked_visual_token_pos"], inputs["masked_visual_token_labels"]
    mlm_ids, mlm_labels, alpha = inputs["mlm_input_ids_fixed"], inputs["mlm_labels_fixed"], float(inputs["alpha"])
    with torch.no_grad():
        vision, text = albef.get_image_features(pixels), albef.get_text_features(ids, mask)
        image, tokens = vision.last_hidden_state, text.last_hidden_state
        image_feat = F.normalize(vision.pooler_output, dim=-1)
        rows = [
            row("image_embeds (ViT)", image, expected["image_embeds"]),
            row("image_feat", image_feat, expected["image_feat"]),
            row("text_embeds (text mode)", text.unimodal_last_hidden_state, expected["text_embeds"]),
            row("text_feat", F.normalize(text.pooler_output, dim=-1), expected["text_feat"]),
            row("itm_fused_pos", albef.fuse(tokens, mask, image), expected["itm_fused_pos"]),
            row("itm_logits_pos", albef.itm_logits(tokens, mask, image), expected["itm_logits_pos"]),
            row("itm_logits_shift", albef.itm_logits(tokens, mask, image.roll(-1, 0)), expected["itm_logits_shift"]),
            row("mim_text_embeddings", tokens, expected["mim_text_embeddings"]),
            row("mim_masked_image_embeds", albef.vision_model(pixels, bool_masked_pos=masked_pos).last_hidden_state,
                expected["mim_masked_image_embeds"]),
            row("mim_logits", model.mim_logits(pixels, masked_pos, tokens, mask), expected["mim_logits"]),
            row("psl_logits (keyword_logits)", albef.keyword_logits(pixels), expected["psl_logits"]),
        ]  # fmt: skip
        model.momentum_update()  # the official forward's first step
        # Deterministic pass: fixed MLM masking, ITM negatives replayed as the shift-by-one pairs of the fixture
        shift = (torch.arange(ids.shape[0]) + 1) % ids.shape[0]
        losses.sample_hard_negatives = replay_negatives(shift, shift)
        out = model(pixels, ids, mask, masked_pos, mim_labels, alpha, mlm_ids, mlm_labels)
        image_feat_m, text_feat_m = out.image_feat_m, out.text_feat_m
        image_m = model.vision_model_m(pixels).last_hidden_state
        text_m = model.fusion_model_m(model.text_model_m(ids, mask).last_hidden_state, mask).last_hidden_state
        text_bank = torch.cat([text_feat_m.t(), model.text_queue], 1)
        image_bank = torch.cat([image_feat_m.t(), model.image_queue], 1)
        mim_m = model.mim_logits(pixels, masked_pos, tokens, mask, momentum=True)
        mlm_m = model.mlm_logits(mlm_ids, mask, image_m, momentum=True)
        text_hidden_m = model.text_model_m(ids, mask).last_hidden_state
        attention = model.fusion_model_m(text_hidden_m, mask, image, output_attentions=True).attentions[11][:, :, 0]
        keywords = model.psl_targets(ids, mask, image)
        soft_targets = torch.sigmoid(model.concept_head_m(image_feat_m))
        rows += [
            row("image_embeds_m (after one EMA update)", image_m, expected["image_embeds_m"]),
            row("image_feat_m", image_feat_m, expected["image_feat_m"]),
            row("text_embeds_m", text_m, expected["text_embeds_m"]),
            row("text_feat_m", text_feat_m, expected["text_feat_m"]),
            row("image_feat_all (batch + queue)", image_bank, expected["image_feat_all"]),
            row("text_feat_all (batch + queue)", text_bank, expected["text_feat_all"]),
            row("sim_i2t_m", image_feat_m @ text_bank / albef.temp, expected["sim_i2t_m"]),
            row("sim_t2i_m", text_feat_m @ image_bank / albef.temp, expected["sim_t2i_m"]),
            row("mim_masked_image_embeds_m", model.vision_model_m(pixels, bool_masked_pos=masked_pos).last_hidden_state,
                expected["mim_masked_image_embeds_m"]),
            row("mim_logits_m", mim_m, expected["mim_logits_m"]),
            row("mlm_logits_m (fixed mask)", mlm_m, expected["mlm_logits_m"]),
            row("psl CLS self-attention, layer 11", attention, expected["psl_cls_self_attn_last_layer"]),
            row("psl salient positions", keywords.salient_positions, expected["psl_salient_positions"]),
            row("psl position counts (votes)", keywords.position_counts, expected["psl_position_counts"]),
            row("psl top positions", keywords.top_positions, expected["psl_top_positions"]),
            row("psl keyword token ids", keywords.keyword_ids, expected["psl_keyword_token_ids"]),
            row("psl hard targets", keywords.hard_targets, expected["psl_hard_targets"]),
            row("psl soft targets", soft_targets, expected["psl_soft_targets"]),
        ]  # fmt: skip
    rows += [
        row("sim_i2t (with queue)", out.sim_i2t, expected["sim_i2t"]),
        row("sim_t2i (with queue)", out.sim_t2i, expected["sim_t2i"]),
        row("loss_ita", out.loss_itc, expected["loss_ita"]),
        row("itm_logits_all_shift (3B layout)", out.itm_logits, expected["itm_logits_all_shift"]),
        row("itm_labels", out.itm_labels, expected["itm_labels"]),
        row("loss_itm_shift", out.loss_itm, expected["loss_itm_shift"]),
        row("mlm_logits (fixed mask)", out.mlm_logits, expected["mlm_logits"]),
        row("loss_mlm_fixed (sequence-axis distillation)", out.loss_mlm, expected["loss_mlm_fixed"]),
        row("loss_mlm_fixed_hard", losses.distilled_mlm_loss(out.mlm_logits, mlm_labels, None, 0.0),
            expected["loss_mlm_fixed_hard"]),
        row("loss_mim_hard", losses.masked_image_modeling_loss(out.mim_logits, masked_pos, mim_labels, mim_m, 0.0),
            expected["loss_mim_hard"]),
        row("loss_mim_distill", losses.masked_image_modeling_loss(out.mim_logits, masked_pos, mim_labels, mim_m, 1.0),
            expected["loss_mim_distill"]),
        row("loss_mim", out.loss_mim, expected["loss_mim"]),
        row("loss_psl_hard", losses.pseudo_keyword_loss(out.psl_logits, keywords.hard_targets, soft_targets, 0.0),
            expected["loss_psl_hard"]),
        row("loss_psl_soft", losses.pseudo_keyword_loss(out.psl_logits, keywords.hard_targets, soft_targets, 1.0),
            expected["loss_psl_soft"]),
        row("loss_psl", out.loss_psl, expected["loss_psl"]),
    ]  # fmt: skip
    # The official forward with its recorded random choices (negatives, MLM masking) replayed; it feeds the queues
    draws = expected["fwd_itm_neg_image_idx_for_text"], expected["fwd_itm_neg_text_idx_for_image"]
    losses.sample_hard_negatives = replay_negatives(*draws)
    out = model(pixels, ids, mask, masked_pos, mim_labels, alpha, expected["fwd_mlm_input_ids"],
                expected["fwd_mlm_labels"])  # fmt: skip
    model.after_optimizer_step(0)  # no optimizer step: the duties enqueue the forward's momentum features
    ours = {"mlm": out.loss_mlm, "ita": out.loss_itc, "itm": out.loss_itm, "mim": out.loss_mim, "psl": out.loss_psl}
    for name, loss in {**ours, "total": out.loss}.items():
        rows.append(row(f"forward loss_{name} (choices replayed)", loss.detach(), expected[f"fwd_loss_{name}"]))
    return rows + [
        row("image_queue after the duties", model.image_queue, expected["post_image_queue"]),
        row("text_queue after the duties", model.text_queue, expected["post_text_queue"]),
        row("queue_ptr after the duties", model.queue_ptr, expected["post_queue_ptr"]),
        row("temp after the clamp", albef.temp.detach(), expected["post_temp"]),
    ]


def retrieval_rows(folder: Path) -> list[Row]:
    inputs = load_file(SIMLA_FIXTURES / "retrieval" / "inputs.safetensors")
    expected = load_file(SIMLA_FIXTURES / "retrieval" / "outputs.safetensors")

    def processor(text=None, images=None, preset=None):  # replays the official tokenisation and pixels by index
        if text is None:
            return {"pixel_values": inputs["eval_pixel_values"][list(images)]}
        return BatchEncoding({k: inputs[f"eval_{k}"][[int(t) for t in text]] for k in ("input_ids", "attention_mask")})

    model = vlalign.AutoModelForImageTextRetrieval.from_pretrained(folder, attn_implementation="eager").eval()
    ids, mask, pixels = inputs["eval_input_ids"], inputs["eval_attention_mask"], inputs["eval_pixel_values"]
    with torch.no_grad():
        text, vision = model.base_model.get_text_features(ids, mask), model.base_model.get_image_features(pixels)
        n_images, n_texts = pixels.shape[0], ids.shape[0]
        itm = model.base_model.itm_logits(
            text.last_hidden_state.repeat(n_images, 1, 1), mask.repeat(n_images, 1),
            vision.last_hidden_state.repeat_interleave(n_texts, dim=0),
        ).view(n_images, n_texts, 2)  # fmt: skip
    text_embed, image_embed = F.normalize(text.pooler_output, dim=-1), F.normalize(vision.pooler_output, dim=-1)
    txt2img = inputs["eval_txt2img"].tolist()
    gallery = Dataset.from_dict({"image": list(range(n_images)),
                                 "captions": [[str(j) for j, i in enumerate(txt2img) if i == image]
                                              for image in range(n_images)]})  # fmt: skip
    result = evaluate_retrieval(model, processor, gallery, return_scores=True, show_progress=False)
    rows = [
        row("[retrieval] text embeddings", text_embed, expected["eval_text_embed"]),
        row("[retrieval] image embeddings", image_embed, expected["eval_image_embed"]),
        row("[retrieval] image feats (ViT)", vision.last_hidden_state, expected["eval_image_feats"]),
        row("[retrieval] sims matrix", image_embed @ text_embed.t(), expected["eval_sims_matrix"]),
        row("[retrieval] ITM logits, all pairs", itm, expected["eval_itm_logits_all_pairs"]),
        row("[retrieval] evaluate_retrieval similarities", result["similarities"], expected["eval_sims_matrix"]),
        row("[retrieval] score_matrix_i2t", result["score_matrix_i2t"], expected["eval_score_matrix_i2t"]),
        row("[retrieval] score_matrix_t2i", result["score_matrix_t2i"], expected["eval_score_matrix_t2i"]),
        row("[retrieval] recall metrics (9 values)", torch.tensor([result[k] for k in METRICS], dtype=torch.float64),
            expected["eval_metrics"]),
    ]  # fmt: skip
    # One fine-tuning forward with the official negatives replayed
    model.train().momentum_update()  # the official forward's first step
    draws = expected["ft_fwd_itm_neg_image_idx_for_text"], expected["ft_fwd_itm_neg_text_idx_for_image"]
    losses.sample_hard_negatives = replay_negatives(*draws)
    out = model(pixel_values=pixels[inputs["ft_idx"]], input_ids=inputs["ft_input_ids"],
                attention_mask=inputs["ft_attention_mask"], idx=inputs["ft_idx"], alpha=float(inputs["ft_alpha"]))  # fmt: skip
    model.after_optimizer_step(0)
    return rows + [
        row("[fine-tuning] loss_ita", out.loss_itc.detach(), expected["ft_fwd_loss_ita"]),
        row("[fine-tuning] loss_itm (negatives replayed)", out.loss_itm.detach(), expected["ft_fwd_loss_itm"]),
        row("[fine-tuning] idx_queue after the duties", model.idx_queue, expected["ft_post_idx_queue"]),
    ]


def parity_rows(workdir: Path) -> list[Row]:
    """(quantity, shape, max |diff|, tolerance) for every row; converts into `workdir`. The replayed negatives are
    undone afterwards."""
    sampler = losses.sample_hard_negatives
    try:
        original, retrieval = SIMLA_FIXTURES / "original", SIMLA_FIXTURES / "retrieval"
        convert(workdir / "pretrain", original / "checkpoint.pth", original / "Pretrain.yaml")
        convert(workdir / "retrieval", retrieval / "checkpoint_retrieval_layout.pth", retrieval / "Retrieval.yaml")
        return pretraining_rows(workdir / "pretrain") + retrieval_rows(workdir / "retrieval")
    finally:
        losses.sample_hard_negatives = sampler
