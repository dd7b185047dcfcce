"""Evaluation protocols: image-text retrieval, FAISS search of stored galleries, and zero-shot classification with
prompt ensembles; `evaluate` evaluators of both with bootstrap intervals."""

from .evaluators import ImageTextRetrievalEvaluator, ZeroShotImageClassificationEvaluator
from .gallery import Gallery, GalleryMetadata, embed_gallery, load_gallery, search_gallery
from .retrieval import evaluate_retrieval, recall_metrics, retrieval_ranks
from .zero_shot import fill_templates, zero_shot_class_embeddings, zero_shot_classify

__all__ = [
    "Gallery",
    "GalleryMetadata",
    "ImageTextRetrievalEvaluator",
    "ZeroShotImageClassificationEvaluator",
    "embed_gallery",
    "evaluate_retrieval",
    "fill_templates",
    "load_gallery",
    "recall_metrics",
    "retrieval_ranks",
    "search_gallery",
    "zero_shot_class_embeddings",
    "zero_shot_classify",
]
