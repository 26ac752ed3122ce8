"""Generated documentation: a model card, instructions for use (AI Act Art. 13(3)) and an Annex IV
technical documentation draft, rendered from a run's files and its ledger events only.

Every figure carries the ledger event it came from (``0.465 [event #35]``). A figure that the run wrote
to ``sections.json`` but that no event stores verbatim is cited with a dagger (``[event #35†]``): the
event of the step that produced it (the evaluate step records its slice and OOD tables in its event, so
those cite exactly). What no fact supports is marked ``TO BE COMPLETED BY THE PROVIDER`` with a hint —
never invented. Each document prints the ledger head (hash and sequence number) it was generated from and
whether the chain verified; when it did not, the documents carry a warning at the top.

The package: ``_model`` (document shape and rendering), ``_facts`` (citable facts), ``_sections``
(sections shared by the documents), ``_build`` (the three documents, built and written).
"""

from __future__ import annotations

from nnforge.govern.documents._build import build_documents, write_documents
from nnforge.govern.documents._model import DOCUMENTS, FORMATS, TODO, Block, Document, Section, Span, render_document

__all__ = ["TODO", "DOCUMENTS", "FORMATS", "Span", "Block", "Section", "Document", "build_documents",
           "render_document", "write_documents"]
