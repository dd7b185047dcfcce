"""Initialise CODIS from an official ALBEF checkpoint (or TCL's, which has the same layout).

CODIS released no checkpoints. Its model is ALBEF's plus a codebook, so an ALBEF-4M (or TCL-4M) checkpoint converts
into a CODIS folder whose every ALBEF weight is the checkpoint's and whose prototypes start as random unit vectors:
the cheap starting point for continued CODIS pretraining and ablations (the paper itself starts from DeiT + BERT).
"""

from __future__ import annotations

from pathlib import Path

from ..models import CodisForImageTextRetrieval, CodisForPreTraining
from .albef import convert_albef_checkpoint

#: CODIS weights that ALBEF checkpoints do not have: the codebook (and its EMA copy)
CODIS_ONLY_WEIGHTS = (r"(^|\.)codebook(_m)?\.",)


def convert_albef_to_codis(
    checkpoint: str | Path,
    config_files: list[str | Path],
    output_dir: str | Path,
    tokenizer: str | Path | None = None,
    task: str = "auto",
    image_size: int | None = None,
) -> CodisForPreTraining | CodisForImageTextRetrieval:
    """Convert an official ALBEF/TCL checkpoint into a CODIS folder (random codebook, default `CodisConfig`
    settings); arguments as [`convert_albef_checkpoint`]."""
    return convert_albef_checkpoint(
        checkpoint,
        config_files,
        output_dir,
        tokenizer,
        task,
        image_size,
        target="codis",
        new_modules=CODIS_ONLY_WEIGHTS,
    )


__all__ = ["CODIS_ONLY_WEIGHTS", "convert_albef_to_codis"]
