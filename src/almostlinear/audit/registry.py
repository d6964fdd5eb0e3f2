"""The one place where audit sections are registered, in report order.

A family adds its section by appending its class here; the planner serves every section from
shared forward passes.
"""

from __future__ import annotations

from ..connectivity.section import WeightSpaceSection
from ..editing.section import EditingSection
from ..erasure.section import ErasureSection
from ..latent.section import LatentPaths
from ..lens.section import LogitLensSection
from ..linearity.blocks_section import BlockLinearitySection
from ..linearity.causal_section import CausalInnerProductSection
from ..linearity.section import InterLayerLinearity
from ..linearity.tangent_section import TangentSection
from ..probes.section import TruthProbes
from ..sae.section import SaeSection
from ..similarity.section import SimilaritySection
from ..spectra.section import SpectraSection
from ..steering.section import SteeringSection
from ..translate.section import CrossModelMaps
from ..truth.section import TruthDirectionsSection
from .model_card import ModelCard
from .plan import Section

SECTIONS: tuple[type[Section], ...] = (
    ModelCard, InterLayerLinearity, BlockLinearitySection, CausalInnerProductSection, LogitLensSection, TruthProbes, TruthDirectionsSection, SpectraSection,
    SimilaritySection, SteeringSection, ErasureSection, EditingSection, SaeSection, TangentSection, WeightSpaceSection, CrossModelMaps, LatentPaths,
)


def section_ids() -> list[str]:
    return [cls.id for cls in SECTIONS]


def make_sections(only: list[str] | None = None) -> list[Section]:
    known = section_ids()
    if only:
        unknown = [s for s in only if s not in known]
        if unknown:
            raise ValueError(f"unknown audit section(s) {unknown}; the sections are {known}")
    return [cls() for cls in SECTIONS if not only or cls.id in only]
