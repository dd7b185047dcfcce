"""Ready-made tiny setups for the built-in synthetic dataset, one module per method: a closed-vocabulary tokenizer,
a small config that learns on a laptop CPU in minutes, and its processor. The same classes serve real-scale models;
only sizes differ. The method registry (`vlalign.methods`) points at these."""

from .albef import albef_processor, build_tokenizer, dataset_captions, tiny_albef_config

__all__ = ["albef_processor", "build_tokenizer", "dataset_captions", "tiny_albef_config"]
