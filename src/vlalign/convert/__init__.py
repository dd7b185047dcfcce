"""Official checkpoint → vlalign folder converters, one module per method."""

from .albef import CheckpointError, convert_albef_checkpoint
from .fdt import convert_fdt_checkpoint

#: `vlalign convert --method NAME` → converter
CONVERTERS = {"albef": convert_albef_checkpoint, "fdt": convert_fdt_checkpoint}

__all__ = ["CONVERTERS", "CheckpointError", "convert_albef_checkpoint", "convert_fdt_checkpoint"]
