"""Numerical parity with the official FDT code (yuxiaochen1103/FDT @ ccf69830) on its golden fixture.

The fixture checkpoint is converted through `vlalign convert --method fdt`, loaded with the Auto classes, and every
deterministic quantity the official code recorded is matched (tests/fixtures/fdt/README.md): encoder features, FDT
queries, scores, pooled logits, weights and embeddings, logits and loss at T=1000 and T=1, gradients, the parameters
after one AdamW step with the official groups and logit-scale clamps, zero-shot class embeddings and predictions, and
the retrieval similarity matrix and recalls. The computations live in `fdt_parity_rows.py` (one row per quantity);
this test asserts each row against its tolerance.
"""

from __future__ import annotations

import fdt_parity_rows as parity
import pytest


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> dict[str, tuple[float, float]]:
    return {name: (diff, tol) for name, diff, tol in parity.parity_rows(tmp_path_factory.mktemp("fdt_parity"))}


FORWARD_ROWS = [
    "vision patch features",
    "text token features",
    "image FDT queries",
    "text FDT queries",
    "image token scores (q·C)",
    "text token scores (masked, /sqrt d)",
    "logit scale",
    *(
        f"{tag} {quantity}"
        for tag in ("T=1000", "T=1")
        for quantity in (
            "image pooled logits",
            "text pooled logits",
            "image FDT weights",
            "text FDT weights",
            "image embeds (unnormalised)",
            "text embeds (unnormalised)",
            "image embeds",
            "text embeds",
            "logits_per_image",
            "logits_per_text",
            "loss",
        )
    ),
    "text FDT weights, mask from EOT",
    "global head: ln_post(CLS)",
    "global head: image projection",
    "global head: text EOT feature",
    "global head: text projection",
]
TRAINING_ROWS = [
    "training loss (before the step)",
    "gradients",
    "gradient token-embedding rows",
    "grad logit_scale",
    "after one AdamW step",
]
EVALUATOR_ROWS = [
    "zero-shot class embeddings",
    "zero-shot attention-view class vectors",
    "zero-shot probs",
    "zero-shot attention-view probs",
    "zero-shot preds (1 = differ)",
    "zero-shot attention-view preds (1 = differ)",
    "retrieval similarity matrix",
    "retrieval recalls R@1/5/10 both ways (points)",
    "retrieval rsum (points)",
]


@pytest.mark.parametrize("name", FORWARD_ROWS + TRAINING_ROWS + EVALUATOR_ROWS)
def test_parity(rows, name):
    assert name in rows, f"{name} was not measured (the evaluator rows need the BPE file {parity.BPE_FILE})"
    diff, tolerance = rows[name]
    assert diff <= tolerance, f"{name}: max |diff| {diff:.3e} > {tolerance:.0e}"


def test_every_measured_row_is_asserted(rows):
    assert set(rows) == set(FORWARD_ROWS + TRAINING_ROWS + EVALUATOR_ROWS)


def test_converted_folder_loads_with_both_auto_classes(tmp_path):
    from transformers import AutoModel, AutoModelForPreTraining

    from vlalign.models.modeling_fdt import FdtForPreTraining, FdtModel

    parity.convert(tmp_path / "fdt")
    model = AutoModel.from_pretrained(tmp_path / "fdt")
    assert type(model) is FdtModel
    training = AutoModelForPreTraining.from_pretrained(tmp_path / "fdt")
    assert type(training) is FdtForPreTraining
    # the frozen random patch embedding stays frozen after loading, as the official train() enforces
    assert not training.fdt.vision_model.embeddings.patch_embedding.weight.requires_grad
    assert float(model.fdt_temperature) == 1000.0  # from last_iter = 0 and the YAML's t_decay


def test_converter_refuses_foreign_keys(tmp_path):
    import torch

    from vlalign.convert import CheckpointError
    from vlalign.convert.fdt import convert_fdt_checkpoint

    original = torch.load(parity.FDT_FIXTURES / "original" / "checkpoint.pth", weights_only=True)
    original["model"]["module.some_other_head.weight"] = torch.zeros(3)
    bad = tmp_path / "bad.pth"
    torch.save(original, bad)
    with pytest.raises(CheckpointError, match="not CLIP\\+FDT keys"):
        convert_fdt_checkpoint(bad, [parity.FDT_FIXTURES / "original" / "config.yaml"], tmp_path / "out")
    del original["model"]["module.some_other_head.weight"]
    del original["model"]["module.space_dict"]
    torch.save(original, bad)
    with pytest.raises(CheckpointError, match="missing keys"):
        convert_fdt_checkpoint(bad, [parity.FDT_FIXTURES / "original" / "config.yaml"], tmp_path / "out")
