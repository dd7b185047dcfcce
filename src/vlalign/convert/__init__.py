"""Official checkpoint → vlalign folder converters, one module per method."""

from .albef import CheckpointError, convert_albef_checkpoint

#: `vlalign convert --method NAME` → converter
CONVERTERS = {"albef": convert_albef_checkpoint}

__all__ = ["CONVERTERS", "CheckpointError", "convert_albef_checkpoint"]
