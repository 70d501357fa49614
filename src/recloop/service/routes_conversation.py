"""Routes of the generative module: conversation (filled in by the generative issue)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
