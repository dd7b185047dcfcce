"""Model families. Each lives in flat `configuration_*`/`modeling_*`/`processing_*` files, laid out like a Hub model
repository, so a saved checkpoint carries its own code and loads with `trust_remote_code=True`. The method registry
(`vlalign.methods`) registers them with the Auto classes."""

from .configuration_albef import AlbefConfig, AlbefTextConfig, AlbefVisionConfig
from .configuration_codis import CodisConfig
from .configuration_fdt import FdtConfig, FdtTextConfig, FdtVisionConfig
from .configuration_simla import SimlaConfig, SimlaTextConfig, SimlaVisionConfig
from .modeling_albef import (
    AlbefForImageTextRetrieval,
    AlbefForPreTraining,
    AlbefModel,
    AlbefPreTrainedModel,
    AlbefTextModel,
    AlbefVisionModel,
)
from .modeling_albef_nlvr import AlbefForTextAssignment, AlbefForVisualReasoning
from .modeling_albef_ve import AlbefForVisualEntailment
from .modeling_albef_vqa import AlbefForQuestionAnswering
from .modeling_codis import (
    CodisCodebook,
    CodisForImageTextRetrieval,
    CodisForPreTraining,
    CodisForQuestionAnswering,
    CodisModel,
    CodisPreTrainedModel,
)
from .modeling_codis_nlvr import CodisForTextAssignment, CodisForVisualReasoning
from .modeling_codis_ve import CodisForVisualEntailment
from .modeling_fdt import FdtForPreTraining, FdtModel, FdtPreTrainedModel, FdtTextModel, FdtVisionModel
from .modeling_simla import (
    SimlaForImageTextRetrieval,
    SimlaForPreTraining,
    SimlaForQuestionAnswering,
    SimlaModel,
    SimlaPreTrainedModel,
)
from .modeling_simla_nlvr import SimlaForTextAssignment, SimlaForVisualReasoning
from .modeling_simla_ve import SimlaForVisualEntailment
from .processing_albef import AlbefImageProcessor, AlbefProcessor
from .processing_codis import CodisImageProcessor, CodisProcessor
from .processing_fdt import FdtImageProcessor, FdtProcessor
from .processing_simla import SimlaImageProcessor, SimlaProcessor
from .tokenization_albef import AlbefTokenizer
from .tokenization_codis import CodisTokenizer
from .tokenization_fdt import FdtTokenizer
from .tokenization_simla import SimlaTokenizer

__all__ = [
    "AlbefConfig",
    "AlbefForImageTextRetrieval",
    "AlbefForPreTraining",
    "AlbefForQuestionAnswering",
    "AlbefForTextAssignment",
    "AlbefForVisualEntailment",
    "AlbefForVisualReasoning",
    "AlbefImageProcessor",
    "AlbefModel",
    "AlbefPreTrainedModel",
    "AlbefProcessor",
    "AlbefTextConfig",
    "AlbefTextModel",
    "AlbefTokenizer",
    "AlbefVisionConfig",
    "AlbefVisionModel",
    "CodisCodebook",
    "CodisConfig",
    "CodisForImageTextRetrieval",
    "CodisForPreTraining",
    "CodisForQuestionAnswering",
    "CodisForTextAssignment",
    "CodisForVisualEntailment",
    "CodisForVisualReasoning",
    "CodisImageProcessor",
    "CodisModel",
    "CodisPreTrainedModel",
    "CodisProcessor",
    "CodisTokenizer",
    "FdtConfig",
    "FdtForPreTraining",
    "FdtImageProcessor",
    "FdtModel",
    "FdtPreTrainedModel",
    "FdtProcessor",
    "FdtTextConfig",
    "FdtTextModel",
    "FdtTokenizer",
    "FdtVisionConfig",
    "FdtVisionModel",
    "SimlaConfig",
    "SimlaForImageTextRetrieval",
    "SimlaForPreTraining",
    "SimlaForQuestionAnswering",
    "SimlaForTextAssignment",
    "SimlaForVisualEntailment",
    "SimlaForVisualReasoning",
    "SimlaImageProcessor",
    "SimlaModel",
    "SimlaPreTrainedModel",
    "SimlaProcessor",
    "SimlaTextConfig",
    "SimlaTokenizer",
    "SimlaVisionConfig",
]
