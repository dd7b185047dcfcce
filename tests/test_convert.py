"""`vlalign convert`: checkpoint formats the official releases use, and clear errors for everything else."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import ALBEF_FIXTURES, run_cli
from transformers import AutoModel

import vlalign
from vlalign.convert.albef import CheckpointError, convert_albef_checkpoint

ORIGINAL = ALBEF_FIXTURES / "original"


def convert_args(checkpoint, output, *configs) -> list[str]:
    configs = configs or (ORIGINAL / "Pretrain.yaml", ORIGINAL / "config_bert.json")
    args = ["convert", "--method", "albef", "--checkpoint", str(checkpoint), "--output", str(output)]
    for config in configs:
        args += ["--config", str(config)]
    return args


def official_state_dict() -> dict[str, torch.Tensor]:
    return torch.load(ORIGINAL / "checkpoint.pth", weights_only=True)["model"]


def test_flat_finetuned_checkpoint_without_momentum_or_queues(tmp_path, converted_pretrain_dir):
    """Released mscoco.pth/flickr30k.pth are flat, with `text_encoder.X` (no `bert.`), no `*_m`, no queues, no MLM
    head (ALBEF#7, #23, #79). The momentum encoders start as copies of the online ones."""
    flat = {
        key.replace("text_encoder.bert.", "text_encoder."): value
        for key, value in official_state_dict().items()
        if "_m." not in key and "_queue" not in key and key != "queue_ptr" and ".cls." not in key
    }
    torch.save(flat, tmp_path / "mscoco.pth")
    model = convert_albef_checkpoint(
        tmp_path / "mscoco.pth",
        [ALBEF_FIXTURES / "retrieval" / "Retrieval_res32.yaml"],
        tmp_path / "out",
        tokenizer=ORIGINAL,
    )
    assert isinstance(model, vlalign.AlbefForImageTextRetrieval)
    assert all(torch.equal(online, momentum) for online, momentum in model.momentum_parameter_pairs())
    reference = AutoModel.from_pretrained(converted_pretrain_dir)
    converted = AutoModel.from_pretrained(tmp_path / "out")
    for key, value in reference.state_dict().items():
        assert torch.equal(value, converted.state_dict()[key]), key


def test_unknown_method_is_rejected(tmp_path):
    result = run_cli(*convert_args(ORIGINAL / "checkpoint.pth", tmp_path).__iter__(), check=False)
    assert result.returncode == 0  # sanity: the same arguments with a valid method work
    args = convert_args(ORIGINAL / "checkpoint.pth", tmp_path / "x")
    args[args.index("albef")] = "blip"
    result = run_cli(*args, check=False)
    assert result.returncode == 2
    assert "invalid choice: 'blip'" in result.stderr and "albef" in result.stderr


def test_corrupt_file_is_rejected(tmp_path):
    broken = tmp_path / "broken.pth"
    broken.write_bytes((ORIGINAL / "checkpoint.pth").read_bytes()[:5000])
    result = run_cli(*convert_args(broken, tmp_path / "out"), check=False)
    assert result.returncode == 1
    assert "is not a readable PyTorch checkpoint" in result.stderr


def test_non_checkpoint_file_is_rejected(tmp_path):
    not_weights = tmp_path / "list.pth"
    torch.save({"epoch": 3, "notes": "no tensors here"}, not_weights)
    with pytest.raises(CheckpointError, match="holds no state dict of tensors"):
        convert_albef_checkpoint(not_weights, [ORIGINAL / "Pretrain.yaml"], tmp_path / "out", tokenizer=ORIGINAL)


def test_checkpoint_that_does_not_fit_the_config_names_keys(tmp_path):
    bert = json.loads((ORIGINAL / "config_bert.json").read_text())
    bert.update(num_hidden_layers=6, fusion_layer=3)
    (tmp_path / "config_bert.json").write_text(json.dumps(bert))
    shutil.copy(ORIGINAL / "Pretrain.yaml", tmp_path / "Pretrain.yaml")
    result = run_cli(
        *convert_args(
            ORIGINAL / "checkpoint.pth", tmp_path / "out", tmp_path / "Pretrain.yaml", tmp_path / "config_bert.json"
        ),
        check=False,
    )
    assert result.returncode == 1
    assert "does not fit the config" in result.stderr
    assert "missing keys (first: albef.fusion_model.layers.1." in result.stderr
    assert "unexpected keys (first: albef.text_model.layers.2.cross_attn" in result.stderr


def test_foreign_keys_are_rejected(tmp_path):
    state = official_state_dict()
    state["vqa_head.weight"] = torch.zeros(2)
    torch.save({"model": state}, tmp_path / "vqa.pth")
    with pytest.raises(CheckpointError, match="not ALBEF keys.*vqa_head.weight"):
        convert_albef_checkpoint(
            tmp_path / "vqa.pth", [ORIGINAL / "Pretrain.yaml"], tmp_path / "out", tokenizer=ORIGINAL
        )


def test_untied_mlm_decoder_is_rejected(tmp_path):
    state = official_state_dict()
    state["text_encoder.cls.predictions.decoder.weight"] = state["text_encoder.cls.predictions.decoder.weight"] + 1
    torch.save({"model": state}, tmp_path / "untied.pth")
    with pytest.raises(CheckpointError, match="differs from the word embeddings"):
        convert_albef_checkpoint(
            tmp_path / "untied.pth", [ORIGINAL / "Pretrain.yaml"], tmp_path / "out", tokenizer=ORIGINAL
        )


def test_missing_bert_config_is_explained(tmp_path):
    shutil.copy(ORIGINAL / "Pretrain.yaml", tmp_path / "Pretrain.yaml")
    with pytest.raises(ValueError, match="pass the BERT json"):
        convert_albef_checkpoint(ORIGINAL / "checkpoint.pth", [tmp_path / "Pretrain.yaml"], tmp_path / "out")
