"""The web page in real headless Chromium (Debian's package, driven by Playwright)."""

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.conftest import JFK_TEXT, heard, reference
from tests.support.server import Server, run_server

pytestmark = [pytest.mark.browser, pytest.mark.model, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"AUDIO_LIMIT_SINGLE_CORE": "10", "PARALLEL_CHUNK_DURATION": "20",
           "ALLOW_PRIVATE_URLS": "true", "WHISPER_MODELS": "base"}
    with run_server(tmp_path_factory.mktemp("web"), **env) as running:
        yield running


@pytest.fixture(scope="session")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Screenshots go outside the repo; `make screenshots` points SCREENSHOT_DIR at
    docs/screenshots to refresh the ones the README shows."""
    chosen = os.environ.get("SCREENSHOT_DIR")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, server: Server) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1000, "height": 900}, accept_downloads=True)
    opened = context.new_page()
    opened.goto(server.url)
    yield opened
    context.close()


def test_languages_and_translation_follow_the_chosen_model(page: Page) -> None:
    expect(page.locator("#model option")).to_have_count(2)
    page.select_option("#model", "base")
    expect(page.locator('#language option[value="pt"]')).to_have_text("Portuguese (pt)")
    page.select_option("#language", "pt")
    expect(page.locator('#task option[value="translate"]')).to_be_enabled()
    page.select_option("#model", "tiny.en")  # English only: no Portuguese, no translation
    expect(page.locator("#language option")).to_have_count(2)
    expect(page.locator("#language")).to_have_value("auto")
    expect(page.locator('#task option[value="translate"]')).to_be_disabled()


def test_upload_progress_transcript_download_and_seek(
    page: Page, long_speech: Path, shots: Path
) -> None:
    page.screenshot(path=str(shots / "idle.png"), full_page=True)
    page.set_input_files("#file", str(long_speech))
    page.fill("#line-width", "30")
    page.click("#submit")
    expect(page.locator("#progress-box")).to_be_visible()
    expect(page.locator("#stage")).to_contain_text(re.compile("chunks|transcribing|converting"),
                                                   timeout=30_000)
    # For the screenshot, some chunks done (or, on a fast machine, all of them).
    expect(page.locator("#stage")).to_contain_text(re.compile(r"[1-9]\d*/\d+ chunks"),
                                                   timeout=60_000)
    page.screenshot(path=str(shots / "progress.png"), full_page=True)
    expect(page.locator("#result-box")).to_be_visible(timeout=90_000)
    assert heard(JFK_TEXT, page.locator("#segments").inner_text()) >= 1
    page.screenshot(path=str(shots / "done.png"), full_page=True)

    with page.expect_download() as info:
        page.click("[data-download=srt]")
    srt = Path(info.value.path()).read_text()
    assert re.match(r"1\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n\S", srt)
    assert info.value.suggested_filename == f"{long_speech.stem}.srt"  # named after the input
    lines = [x for x in srt.splitlines() if x and "-->" not in x and not x.isdigit()]
    assert lines and all(len(x) <= 30 or " " not in x for x in lines)  # the page's line width

    third = page.locator("#segments li").nth(2)
    start = float(third.get_attribute("data-start") or "nan")
    assert start > 1.0
    third.click()
    page.wait_for_function("() => document.getElementById('player').currentTime > 0")
    current = page.evaluate("document.getElementById('player').currentTime")
    assert current == pytest.approx(start, abs=1.0)


def test_search_filters_segments(page: Page, server: Server, jfk: Path) -> None:
    page.set_input_files("#file", str(jfk))
    page.select_option("#preset", "fast")
    page.fill("#prompt", "  Fellow Americans. ")
    page.click("#submit")
    expect(page.locator("#result-box")).to_be_visible(timeout=60_000)
    newest = httpx.get(f"{server.url}/api/v1/jobs", params={"limit": 1}).json()["jobs"][0]
    assert newest["request"]["preset"] == "fast"
    assert newest["request"]["prompt"] == "Fellow Americans."
    # A word the model printed (never a word it is expected to print).
    word = max(re.findall(r"[A-Za-z]+", page.locator("#segments li").first.inner_text()), key=len)
    page.fill("#search", word)
    expect(page.locator("#segments li:not(.hidden) mark").first).to_have_text(
        re.compile(word, re.I))


def test_bad_file_shows_the_api_message(page: Page, tmp_path: Path) -> None:
    bad = tmp_path / "notes.mp3"
    bad.write_text("this is text, not audio\n" * 20)
    page.set_input_files("#file", str(bad))
    page.click("#submit")
    expect(page.locator("#error")).to_contain_text("cannot decode", timeout=30_000)


def test_cancel(page: Page, long_speech: Path) -> None:
    page.set_input_files("#file", str(long_speech))
    page.click("#submit")
    expect(page.locator("#cancel")).to_be_enabled()
    page.click("#cancel")
    expect(page.locator("#cancel")).to_be_disabled()  # one DELETE: no second click
    expect(page.locator("#stage")).to_contain_text("cancelled", timeout=30_000)


def test_url_job_plays_the_servers_audio(page: Page, media_host: str) -> None:
    page.fill("#url", f"{media_host}/ljspeech_LJ001-0001.flac")
    page.click("#submit")
    expect(page.locator("#segments li").first).to_be_visible(timeout=60_000)
    said = page.locator("#segments").inner_text()
    assert heard(reference("ljspeech_LJ001-0001.flac"), said) == 1
    player = page.locator("#player")
    expect(player).to_be_visible()
    assert re.search(r"/api/v1/jobs/\w+/audio$", player.get_attribute("src") or "")
    page.wait_for_function("() => document.getElementById('player').duration > 5")
    last = page.locator("#segments li").last
    last.click()
    start = float(last.get_attribute("data-start") or "nan")
    page.wait_for_function(f"() => document.getElementById('player').currentTime >= {start}")


def test_works_with_api_keys(browser: Browser, jfk: Path, tmp_path: Path) -> None:
    with run_server(tmp_path, API_KEYS="sesame") as keyed:
        context = browser.new_context()
        page = context.new_page()
        page.goto(keyed.url)
        expect(page.locator("#jobs")).to_contain_text("missing or invalid API key")
        page.fill("#api-key", "sesame")
        page.locator("#api-key").dispatch_event("change")
        page.set_input_files("#file", str(jfk))
        page.click("#submit")
        expect(page.locator("#segments li").first).to_be_visible(timeout=60_000)
        assert heard(JFK_TEXT, page.locator("#segments").inner_text()) == 1
        expect(page.locator("#jobs")).to_contain_text("jfk.flac · succeeded")
        page.reload()  # the key was kept in the browser's storage
        expect(page.locator("#api-key")).to_have_value("sesame")
        expect(page.locator("#jobs")).to_contain_text("succeeded")
        context.close()


def test_phone_width(browser: Browser, server: Server, shots: Path) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844})
    phone = context.new_page()
    phone.goto(server.url)
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= 390
    phone.screenshot(path=str(shots / "phone.png"), full_page=True)
    context.close()
