"""Rank-one and low-rank weight edits (ROME, MEMIT, AlphaEdit), reversible and evaluated offline."""

from .request import EditRequest, EditRequestError

__all__ = ["EditRequest", "EditRequestError"]
