"""Deprecated location of `vlalign.sources` (where a `--model`/`--tokenizer` argument comes from)."""

import warnings

from ..sources import *  # noqa: F403

warnings.warn("vlalign.hub.sources is deprecated; import vlalign.sources.", FutureWarning, stacklevel=2)
