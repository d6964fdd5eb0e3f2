"""almostlinear: linear levers for reading, steering, editing and merging neural networks.

Importing the package has no side effects: no network, no threads, no model loading. The names
below are the public surface; everything else lives in the family packages.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .core.artifact import Artifact, Provenance, load as load_artifact
from .core.collect import Activations, Batch, collect, stream
from .core.hooks import add, intervene, project_out, record, replace
from .core.locate import Structure, locate
from .core.models import DEFAULT_MODEL, LoadedModel, fingerprint, load
from .core.sites import SITE_NAMES, Site
from .core.stats import RunningMoments

__all__ = [
    "DEFAULT_MODEL", "SITE_NAMES", "Activations", "Artifact", "Batch", "LoadedModel", "Provenance",
    "RunningMoments", "Site", "Structure", "__version__", "add", "collect", "fingerprint", "intervene",
    "load", "load_artifact", "locate", "project_out", "record", "replace", "stream",
]
