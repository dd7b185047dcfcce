"""Evaluation protocols: image-text retrieval, FAISS search of stored galleries, zero-shot classification with
prompt ensembles, and visual question answering (VQA accuracy, the evaluation server's result file); `evaluate`
evaluators of retrieval and zero-shot classification with bootstrap intervals."""

from .evaluators import ImageTextRetrievalEvaluator, ZeroShotImageClassificationEvaluator
from .gallery import Gallery, GalleryMetadata, embed_gallery, load_gallery, search_gallery
from .retrieval import evaluate_retrieval, recall_metrics, retrieval_ranks
from .vqa import evaluate_vqa, majority_answer_baseline, write_vqa_results
from .zero_shot import fill_templates, zero_shot_class_embeddings, zero_shot_classify

__all__ = [
    "Gallery",
    "GalleryMetadata",
    "ImageTextRetrievalEvaluator",
    "ZeroShotImageClassificationEvaluator",
    "embed_gallery",
    "evaluate_retrieval",
    "evaluate_vqa",
    "fill_templates",
    "load_gallery",
    "majority_answer_baseline",
    "recall_metrics",
    "retrieval_ranks",
    "search_gallery",
    "write_vqa_results",
    "zero_shot_class_embeddings",
    "zero_shot_classify",
]
