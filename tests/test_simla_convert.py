"""`vlalign convert --method simla`: official SIMLA (codezakh/SIMLA @ 44c700d) checkpoints → folders the Auto classes load.

The fixture checkpoints are converted through the CLI (in process) and every deterministic tensor the official code
recorded is matched at atol 1e-5 (see tests/fixtures/simla/README.md): the online features of the pretraining
checkpoint (`AutoModel`), the full pretraining state incl. momentum copies and queues (`AutoModelForPreTraining`), and
for both retrieval routes (the fine-tuned key layout, and a pretraining checkpoint converted for retrieval as
`Retrieval.py` loads it) the evaluation embeddings, ITM logits, the official score matrices and recalls (through
`vlalign.evaluation.evaluate_retrieval`), and one fine-tuning forward with the official hard negatives replayed.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import ALBEF_FIXTURES, FIXTURES
from safetensors.torch import load_file
from test_simla_model_parity import assert_online_outputs_match
from transformers import AutoModel, AutoModelForPreTraining, BatchEncoding

import vlalign
from vlalign.cli import main
from vlalign.convert.albef import CheckpointError
from vlalign.convert.restricted_unpickle import load_official_checkpoint
from vlalign.convert.simla import convert_pretraining_state_dict, convert_simla_checkpoint
from vlalign.evaluation import evaluate_retrieval
from vlalign.models.modeling_simla import SimlaForImageTextRetrieval, SimlaForPreTraining, SimlaModel

SIMLA = FIXTURES / "simla"
ORIGINAL = SIMLA / "original"
RETRIEVAL = SIMLA / "retrieval"
BERT_JSON = ORIGINAL / "shared_bert.json"
ATOL = 1e-5

#: folder name → (checkpoint, YAML, extra CLI arguments)
CONVERSIONS = {
    "pretrain": (ORIGINAL / "checkpoint.pth", ORIGINAL / "Pretrain.yaml", []),
    "retrieval": (RETRIEVAL / "checkpoint_retrieval_layout.pth", RETRIEVAL / "Retrieval.yaml", []),
    "pretrain_for_retrieval": (
        ORIGINAL / "checkpoint.pth",
        RETRIEVAL / "Retrieval.yaml",
        ["--task", "retrieval", "--image-size", "48"],
    ),
}
RETRIEVAL_FOLDERS = ("retrieval", "pretrain_for_retrieval")


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual.to(expected.dtype), expected, atol=ATOL, rtol=0)


def assert_loads_fully(model, folder) -> None:
    """Every weight of `model` comes from the folder and every saved tensor is one of the model's (no missing or
    unexpected keys; tied weights are saved once), with equal values. (`output_loading_info=True` would say so
    directly, but `FrozenParametersMixin.from_pretrained` does not accept its tuple yet.)"""
    saved = load_file(folder / "model.safetensors")
    state = model.state_dict()
    tied = {key for key in state if key not in saved}
    assert tied <= {"mlm_head.decoder.weight", "mlm_head_m.decoder.weight", "mlm_head.decoder.bias",
                    "mlm_head_m.decoder.bias"}, tied  # fmt: skip
    assert set(saved) <= set(state), set(saved) - set(state)
    for key, value in saved.items():
        assert torch.equal(state[key], value), key


def convert_args(checkpoint, yaml_file, output, *extra: str) -> list[str]:
    return [
        "convert", "--method", "simla", "--checkpoint", str(checkpoint), "--config", str(yaml_file),
        "--config", str(BERT_JSON), "--tokenizer", str(ORIGINAL), "--output", str(output), *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("simla_convert")
    for name, (checkpoint, yaml_file, extra) in CONVERSIONS.items():
        assert main(convert_args(checkpoint, yaml_file, root / name, *extra)) == 0
    return {name: root / name for name in CONVERSIONS}


@pytest.fixture(scope="module")
def original() -> dict[str, torch.Tensor]:
    return load_official_checkpoint(ORIGINAL / "checkpoint.pth")[0]


@pytest.fixture(scope="module")
def golden():
    return load_file(SIMLA / "inputs.safetensors"), load_file(SIMLA / "outputs.safetensors")


@pytest.fixture(scope="module")
def retrieval_golden():
    return load_file(RETRIEVAL / "inputs.safetensors"), load_file(RETRIEVAL / "outputs.safetensors")


# ---------------------------------------------------------------------------------------------------------------------
# Pretraining checkpoint
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_pretrain_folder_online_features_match_official(folders, golden, attn_implementation):
    inputs, outputs = golden
    model = AutoModel.from_pretrained(folders["pretrain"], attn_implementation=attn_implementation).eval()
    assert type(model) is SimlaModel
    assert_online_outputs_match(model, inputs, outputs)


def test_pretrain_folder_loads_every_weight_and_the_training_state(folders, golden, original):
    inputs, outputs = golden
    model = AutoModelForPreTraining.from_pretrained(folders["pretrain"], attn_implementation="eager")
    assert type(model) is SimlaForPreTraining
    assert_loads_fully(model, folders["pretrain"])
    # the special-token ids come from the fixture's vocab.txt ([PAD] [UNK] [CLS] [SEP] [MASK]), not bert-base-uncased's
    text_config = model.config.text_config
    assert (text_config.pad_token_id, text_config.cls_token_id, text_config.mask_token_id) == (0, 2, 4)
    assert (model.config.mim_vocab_size, model.config.queue_size, model.config.vision_config.image_size) == (64, 8, 32)
    state = model.state_dict()
    converted, _ = convert_pretraining_state_dict(original)
    assert set(converted) == set(load_file(folders["pretrain"] / "model.safetensors"))
    for key, value in converted.items():
        assert torch.equal(state[key], value), key
    # the momentum copies and the queues are the checkpoint's, key by key
    direct = {
        "image_queue": "image_queue",
        "text_queue": "text_queue",
        "queue_ptr": "queue_ptr",
        "vision_model_m.embeddings.position_embeddings": "visual_encoder_m.pos_embed",
        "vision_model_m.embeddings.mask_token": "visual_encoder_m.mask_token",
        "text_model_m.embeddings.word_embeddings.weight": "text_encoder_m.bert.embeddings.word_embeddings.weight",
        "fusion_model_m.layers.11.output_layer_norm.weight": "text_encoder_m.bert.encoder.layer.11.output.LayerNorm.weight",
        "mlm_head_m.bias": "text_encoder_m.cls.predictions.bias",
        **{f"{head}_m.{kind}": f"{head}_m.{kind}" for head in ("vision_proj", "text_proj", "mim_head", "concept_head")
           for kind in ("weight", "bias")},
    }  # fmt: skip
    for key, official in direct.items():
        assert torch.equal(state[key], original[official]), key
    qkv = original["visual_encoder_m.blocks.1.attn.qkv.weight"]
    assert torch.equal(state["vision_model_m.layers.1.self_attn.value.weight"], qkv[64:])
    # after the official forward's first step (one EMA update) the momentum features match
    model.momentum_update()
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    with torch.no_grad():
        image_embeds_m, image_feat_m, text_feat_m = model._encode_momentum(inputs["pixel_values"], ids, mask, False)
        text_embeds_m = model.fusion_model_m(model.text_model_m(ids, mask).last_hidden_state, mask).last_hidden_state
    assert_close(image_embeds_m, outputs["image_embeds_m"])
    assert_close(image_feat_m, outputs["image_feat_m"])
    assert_close(text_embeds_m, outputs["text_embeds_m"])
    assert_close(text_feat_m, outputs["text_feat_m"])


# ---------------------------------------------------------------------------------------------------------------------
# Retrieval: the fine-tuned layout, and a pretraining checkpoint converted for retrieval
# ---------------------------------------------------------------------------------------------------------------------


def _retrieval_model(folder, **kwargs) -> SimlaForImageTextRetrieval:
    model = vlalign.AutoModelForImageTextRetrieval.from_pretrained(folder, attn_implementation="eager", **kwargs)
    assert type(model) is SimlaForImageTextRetrieval
    assert_loads_fully(model, folder)
    return model


def test_both_retrieval_routes_give_the_same_weights(folders):
    fine_tuned = _retrieval_model(folders["retrieval"])
    from_pretraining = _retrieval_model(folders["pretrain_for_retrieval"])
    for model in (fine_tuned, from_pretraining):
        config = model.config
        assert (config.k_test, config.vision_config.image_size) == (3, 48)
        assert not config.use_pretraining_heads and not config.vision_config.use_mask_token
        assert not any(("mask_token" in key or "mim_head" in key or "concept_head" in key or "mlm_head" in key)
                       for key in model.state_dict())  # fmt: skip
        assert torch.equal(model.idx_queue, torch.full((1, 8), -100))
    reference = from_pretraining.state_dict()
    for key, value in fine_tuned.state_dict().items():
        torch.testing.assert_close(value, reference[key], atol=1e-6, rtol=0, msg=key)


class _FixtureProcessor:
    """Replays the fixture's official tokenisation and pixels: texts are caption indices, images image indices."""

    def __init__(self, inputs: dict[str, torch.Tensor]):
        self.inputs = inputs

    def __call__(self, text=None, images=None, preset=None):
        if text is not None:
            assert preset == "eval"
            rows = [int(t) for t in text]
            return BatchEncoding(
                {
                    "input_ids": self.inputs["eval_input_ids"][rows],
                    "attention_mask": self.inputs["eval_attention_mask"][rows],
                }
            )
        return {"pixel_values": self.inputs["eval_pixel_values"][list(images)]}


class _Gallery:
    """The fixture's evaluation set in `evaluate_retrieval`'s layout: one row per image with its captions."""

    def __init__(self, txt2img: torch.Tensor):
        assert torch.equal(txt2img, txt2img.sort().values)  # captions grouped per image: flattening keeps the order
        self.num_images = int(txt2img.max()) + 1
        self.captions = [
            [str(j) for j, i in enumerate(txt2img.tolist()) if i == image] for image in range(self.num_images)
        ]

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, key):
        if key == "captions":
            return self.captions
        return {"image": list(range(self.num_images))[key]}


@pytest.mark.parametrize("folder", RETRIEVAL_FOLDERS)
def test_retrieval_evaluation_matches_official(folders, retrieval_golden, folder):
    inputs, outputs = retrieval_golden
    model = _retrieval_model(folders[folder]).eval()
    ids, mask, pixels = inputs["eval_input_ids"], inputs["eval_attention_mask"], inputs["eval_pixel_values"]
    with torch.no_grad():
        text = model.base_model.get_text_features(ids, mask)
        vision = model.base_model.get_image_features(pixels)
        n_images, n_texts = pixels.shape[0], ids.shape[0]
        itm = model.base_model.itm_logits(
            text.last_hidden_state.repeat(n_images, 1, 1),
            mask.repeat(n_images, 1),
            vision.last_hidden_state.repeat_interleave(n_texts, dim=0),
        ).view(n_images, n_texts, 2)
    text_embed, image_embed = F.normalize(text.pooler_output, dim=-1), F.normalize(vision.pooler_output, dim=-1)
    assert_close(text_embed, outputs["eval_text_embed"])
    assert_close(image_embed, outputs["eval_image_embed"])
    assert_close(vision.last_hidden_state, outputs["eval_image_feats"])
    assert_close(image_embed @ text_embed.t(), outputs["eval_sims_matrix"])
    assert_close(itm, outputs["eval_itm_logits_all_pairs"])

    result = evaluate_retrieval(
        model, _FixtureProcessor(inputs), _Gallery(inputs["eval_txt2img"]), return_scores=True, show_progress=False
    )  # k_test: the converted config's (3, from the YAML)
    assert_close(result["similarities"], outputs["eval_sims_matrix"])
    assert_close(result["score_matrix_i2t"], outputs["eval_score_matrix_i2t"])
    assert_close(result["score_matrix_t2i"], outputs["eval_score_matrix_t2i"])
    names = ("txt_r1", "txt_r5", "txt_r10", "txt_r_mean", "img_r1", "img_r5", "img_r10", "img_r_mean", "r_mean")
    assert_close(torch.tensor([result[name] for name in names], dtype=torch.float64), outputs["eval_metrics"])


@pytest.mark.parametrize("folder", RETRIEVAL_FOLDERS)
@pytest.mark.parametrize("queue_idx", [False, True])
def test_fine_tuning_step_matches_official(folders, retrieval_golden, folder, queue_idx):
    inputs, outputs = retrieval_golden
    model = _retrieval_model(folders[folder], retrieval_queue_idx=queue_idx).train()
    model.momentum_update()  # the official forward's first step
    pixels, idx = inputs["eval_pixel_values"][inputs["ft_idx"]], inputs["ft_idx"]
    ids, mask = inputs["ft_input_ids"], inputs["ft_attention_mask"]
    output = model(
        pixel_values=pixels,
        input_ids=ids,
        attention_mask=mask,
        idx=idx,
        alpha=float(inputs["ft_alpha"]),
        generator=torch.Generator().manual_seed(0),
    )
    assert_close(output.loss_itc, outputs["ft_fwd_loss_ita"])
    # ITM on the official forward's hard negatives (its multinomial draws, never a caption of the same image),
    # through the model's matching head: positives, then each text with a negative image, each image with a negative
    # text; the forward's own draws give the same layout
    negative_images = outputs["ft_fwd_itm_neg_image_idx_for_text"]
    negative_texts = outputs["ft_fwd_itm_neg_text_idx_for_image"]
    assert not (idx[negative_images] == idx).any() and not (idx[negative_texts] == idx).any()
    with torch.no_grad():
        text = model.base_model.get_text_features(ids, mask).last_hidden_state
        image = model.base_model.get_image_features(pixels).last_hidden_state
        logits = model.base_model.itm_logits(
            torch.cat([text, text, text[negative_texts]]),
            torch.cat([mask, mask, mask[negative_texts]]),
            torch.cat([image, image[negative_images], image]),
        )
    labels = torch.cat([torch.ones(len(idx)), torch.zeros(2 * len(idx))]).long()
    assert_close(F.cross_entropy(logits, labels), outputs["ft_fwd_loss_itm"])
    assert output.itm_logits.shape == (3 * len(idx), 2) and torch.isfinite(output.loss_itm)
    output.loss.backward()
    model.after_optimizer_step(0)  # no optimizer step here: the duties enqueue the forward's momentum features
    if queue_idx:  # ALBEF's behaviour: the queued features keep their image ids
        assert torch.equal(model.idx_queue, inputs["ft_idx"].view(1, -1))
    else:  # the official SIMLA retrieval model never writes its idx_queue
        assert torch.equal(model.idx_queue, outputs["ft_post_idx_queue"])
        assert torch.equal(model.idx_queue, torch.full((1, 8), -100))


# ---------------------------------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------------------------------


def test_non_simla_checkpoint_is_refused_naming_keys(tmp_path, capsys):
    args = convert_args(ALBEF_FIXTURES / "original" / "checkpoint.pth", ORIGINAL / "Pretrain.yaml", tmp_path / "out")
    assert main(args) == 1
    message = capsys.readouterr().err
    assert "does not fit the config" in message and "token_type_embeddings" in message
    with pytest.raises(CheckpointError, match=r"missing keys \(first: simla.vision_model.embeddings.mask_token"):
        convert_simla_checkpoint(
            ALBEF_FIXTURES / "original" / "checkpoint.pth",
            [ORIGINAL / "Pretrain.yaml", BERT_JSON],
            tmp_path / "out",
            tokenizer=ORIGINAL,
        )
    assert not (tmp_path / "out").exists()


def test_retrieval_layout_cannot_become_a_pretraining_model(tmp_path):
    with pytest.raises(
        CheckpointError,
        match=r"fine-tuned retrieval checkpoint .*no mim_head.weight, concept_head.weight.*'retrieval'",
    ):
        convert_simla_checkpoint(
            RETRIEVAL / "checkpoint_retrieval_layout.pth",
            [ORIGINAL / "Pretrain.yaml", BERT_JSON],
            tmp_path / "out",
            tokenizer=ORIGINAL,
            task="pretraining",
        )


def test_foreign_keys_are_refused(tmp_path, original):
    state = dict(original, **{"vqa_head.weight": torch.zeros(2)})
    torch.save({"model": state}, tmp_path / "vqa.pth")
    with pytest.raises(CheckpointError, match="not SIMLA pretraining keys.*vqa_head.weight"):
        convert_simla_checkpoint(
            tmp_path / "vqa.pth", [ORIGINAL / "Pretrain.yaml", BERT_JSON], tmp_path / "out", tokenizer=ORIGINAL
        )


def test_unknown_task_is_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="Unknown task 'nlvr'"):
        convert_simla_checkpoint(
            ORIGINAL / "checkpoint.pth", [ORIGINAL / "Pretrain.yaml", BERT_JSON], tmp_path / "out", task="nlvr"
        )
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exit_info:  # the CLI offers only the known tasks
        main(convert_args(ORIGINAL / "checkpoint.pth", ORIGINAL / "Pretrain.yaml", tmp_path / "out", "--task", "nlvr"))
    assert exit_info.value.code == 2 and "invalid choice: 'nlvr'" in capsys.readouterr().err


def test_weights_without_momentum_copies_or_queues_start_the_momentum_model_from_the_online_one(tmp_path):
    """Weights saved for inference only (no `*_m`, no queues): the momentum copies start as the online weights, as the
    official `copy_params`, and the online weights are the checkpoint's."""
    state, _ = load_official_checkpoint(RETRIEVAL / "checkpoint_retrieval_layout.pth")
    online = {
        key: value
        for key, value in state.items()
        if not key.split(".", 1)[0].endswith("_m")
        and key not in ("image_queue", "text_queue", "idx_queue", "queue_ptr")
    }
    torch.save({"model": online}, tmp_path / "online.pth")
    model = convert_simla_checkpoint(
        tmp_path / "online.pth", [RETRIEVAL / "Retrieval.yaml", BERT_JSON], tmp_path / "out", tokenizer=ORIGINAL
    )
    assert isinstance(model, SimlaForImageTextRetrieval)
    assert all(torch.equal(online, momentum) for online, momentum in model.momentum_parameter_pairs())
    assert torch.equal(model.base_model.itm_head.weight, state["itm_head.weight"])
    assert torch.equal(model.idx_queue, torch.full((1, 8), -100))
