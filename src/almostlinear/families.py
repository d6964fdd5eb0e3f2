"""The manifest of lever families: where their artifact kinds, audit sections and commands live.

Data only (dotted strings, nothing imported), so any layer may read it: the artifact loader finds
every kind here, the audit runner its sections (in this order, which is the report's), and the
command line its subcommands. Adding a family is one folder and one line below; CONTRIBUTING.md
says what goes in the folder.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """One package of ``almostlinear``: its artifact module(s), its sections and its command module."""

    name: str
    artifacts: tuple[str, ...] = ()  # modules that define artifact kinds, relative to the package
    sections: tuple[str, ...] = ()  # "module:Class", in report order
    cli: str | None = None  # a module with ``register(subparsers)``


FAMILIES: tuple[Family, ...] = (
    Family("audit", sections=("audit.model_card:ModelCard",)),
    Family("linearity", sections=("linearity.section:InterLayerLinearity",
                                  "linearity.blocks_section:BlockLinearitySection",
                                  "linearity.causal_section:CausalInnerProductSection",
                                  "linearity.tangent_section:TangentSection")),
    Family("lens", artifacts=("lens.artifact",), sections=("lens.section:LogitLensSection",), cli="lens.cli"),
    Family("probes", artifacts=("probes.artifact",), sections=("probes.section:TruthProbes",), cli="probes.cli"),
    Family("truth", artifacts=("truth.artifact",), sections=("truth.section:TruthDirectionsSection",)),
    Family("spectra", sections=("spectra.section:SpectraSection",)),
    Family("similarity", sections=("similarity.section:SimilaritySection",)),
    Family("steering", artifacts=("steering.artifact",),
           sections=("steering.section:SteeringSection",), cli="steering.cli"),
    Family("calibrate"),
    Family("erasure", artifacts=("erasure.artifact",), sections=("erasure.section:ErasureSection",),
           cli="erasure.cli"),
    Family("editing", artifacts=("editing.artifact",), sections=("editing.section:EditingSection",),
           cli="editing.cli"),
    Family("sae", artifacts=("sae.artifact",), sections=("sae.section:SaeSection",), cli="sae.cli"),
    Family("merging", artifacts=("merging.artifact",), cli="merging.cli"),
    Family("adapters", cli="adapters.cli"),
    Family("connectivity", artifacts=("connectivity.artifact",),
           sections=("connectivity.section:WeightSpaceSection",), cli="connectivity.cli"),
    Family("averaging"),
    Family("translate", artifacts=("translate.artifact",), sections=("translate.section:CrossModelMaps",),
           cli="translate.cli"),
    Family("latent", artifacts=("latent.artifact",), sections=("latent.section:LatentPaths",), cli="latent.cli"),
    Family("export", cli="export.cli"),
    Family("features"),
    Family("data"),
    Family("zoo"),
)


def artifact_modules() -> list[str]:
    """Fully qualified names of every module that defines an artifact kind."""
    return [f"almostlinear.{module}" for family in FAMILIES for module in family.artifacts]


def section_paths() -> list[tuple[str, str]]:
    """``(fully qualified module, class name)`` of every audit section, in report order."""
    return [(f"almostlinear.{path.split(':')[0]}", path.split(":")[1])
            for family in FAMILIES for path in family.sections]


def cli_modules() -> list[str]:
    """Fully qualified names of the modules that add subcommands."""
    return [f"almostlinear.{family.cli}" for family in FAMILIES if family.cli]
