"""Import the official ALBEF code (or SIMLA, which is built on it) from a local checkout for the side-by-side
benchmarks, with environment shims only: nothing of it is copied. The shims: transformers 4.30 renamed a docstring
decorator's keyword; the training scripts import YAML and dataset modules (and their OpenCV) that the benchmarks never
call; the ViT's width and depth, which the official constructors hard-code to ViT-B, come from the spec; BERT is built
from its config instead of downloaded."""

from __future__ import annotations

import importlib
import sys
import types


def import_official(src: str, module: str) -> types.ModuleType:
    sys.path.insert(0, src)
    import transformers.file_utils

    transformers.file_utils.add_code_sample_docstrings = lambda *args, **kwargs: lambda function: function
    unused = {"ruamel_yaml": (), "dataset": ("create_dataset", "create_sampler", "create_loader")}
    for name, attributes in unused.items():
        if name not in sys.modules:
            sys.modules[name] = stub = types.ModuleType(name)
            for attribute in attributes:
                setattr(stub, attribute, None)
    return importlib.import_module(module)


def size_official_model(module: types.ModuleType, vision: dict) -> None:
    """Make the model module's ViT take `vision`'s width, depth and heads, and its BERT build from the config."""
    official_vit = module.VisionTransformer

    def vit(*args, **kwargs):
        kwargs.update(embed_dim=vision["width"], depth=vision["depth"], num_heads=vision["heads"])
        return official_vit(*args, **kwargs)

    module.VisionTransformer = vit
    for name in ("BertForMaskedLM", "BertModel"):
        if hasattr(module, name):
            getattr(module, name).from_pretrained = classmethod(
                lambda cls, _name, config, **kwargs: cls(config=config, **kwargs)
            )
