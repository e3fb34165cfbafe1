"""The web page: plain HTML/CSS/JS served by the same app, no build step, no API key needed."""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).parent / "static"
page_router = APIRouter(include_in_schema=False)


@page_router.get("/")
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html")
