"""Routes of the generative module: review (filled in by the generative issue)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
