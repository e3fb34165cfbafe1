"""The web page: plain HTML/CSS/JS served by the same app, no build step, no API key needed."""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).parent / "static"
page_router = APIRouter(include_in_schema=False)


@page_router.get("/")
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html")


@page_router.get("/favicon.ico")
async def favicon() -> FileResponse:
    """Browsers ask for it on every page; an SVG is accepted under this name by all of them."""
    return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml",
                        headers={"Cache-Control": "public, max-age=86400"})
