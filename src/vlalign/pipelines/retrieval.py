"""The `zero-shot-image-text-retrieval` pipeline. It lives in the flat models folder (`models/pipeline_retrieval.py`)
so that saved model folders ship it as remote code; importing vlalign registers it with `transformers.pipeline`."""

from ..models.pipeline_retrieval import TASK, ImageTextRetrievalPipeline, register_pipelines

__all__ = ["TASK", "ImageTextRetrievalPipeline", "register_pipelines"]
