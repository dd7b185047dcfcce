"""Official checkpoint → vlalign folder converters, one module per method (the method registry names each)."""

from .albef import CheckpointError, convert_albef_checkpoint
from .codis import convert_albef_to_codis
from .fdt import convert_fdt_checkpoint
from .simla import convert_simla_checkpoint

__all__ = [
    "CheckpointError",
    "convert_albef_checkpoint",
    "convert_albef_to_codis",
    "convert_fdt_checkpoint",
    "convert_simla_checkpoint",
]
