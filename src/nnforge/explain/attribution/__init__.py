"""Feature attribution with Captum for every model family: which tokens, characters or pixels a prediction
relied on (integrated gradients with a completeness check, gradient × input, occlusion, layer attribution),
deletion curves that test whether an attribution is faithful, and HTML that shows it.

Every method is a module of ``methods/`` that registers itself in :data:`ATTRIBUTION_METHODS`: a new method
is a new module, and nothing here lists it.
"""

from __future__ import annotations

from nnforge.explain.attribution import methods as _methods
from nnforge.explain.attribution._registry import ATTRIBUTION_METHODS, register_method
from nnforge.explain.attribution.api import Attribution, attribute
from nnforge.explain.attribution.config import AttributionConfig
from nnforge.explain.attribution.deletion import DeletionCurve, deletion_curve
from nnforge.explain.attribution.render import attribution_html, explanation_page
from nnforge.registry import import_submodules

__all__ = ["ATTRIBUTION_METHODS", "register_method", "Attribution", "AttributionConfig", "attribute",
           "DeletionCurve", "deletion_curve", "attribution_html", "explanation_page"]

import_submodules(_methods.__name__, _methods.__path__)  # registers every method of methods/
