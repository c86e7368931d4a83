"""The studio page (`GET /`) in a real headless Chromium (Debian's, driven by Playwright) against a real
`echoforge serve`, Redis, S3 server and worker: what a person does there, an accessibility scan, screenshots."""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from producer.api.studio import STATIC_DIR
from producer.audio_formats import FORMATS
from producer.settings import Settings
from tests import services

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package `chromium`; `./dev test` installs it where it is missing
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run"]
ARTIFACTS = services.REPO / "tests" / "artifacts" / "studio"  # screenshots and the axe report (git-ignored)
CHAPTER = """Chapter One. The Keeper

The lighthouse keeper counted the waves as they broke against the rocks below. Each one came in grey and left in white, and he wrote the number in a book that nobody read.

In the evening the supply boat came round the point. The boatman waved, threw the mail sack onto the jetty, and turned back before the tide could change its mind.

Later, with the lamp lit and the kettle singing, the keeper opened the only letter. It was from his sister, who wrote that the town had a new bridge and that everyone missed him, which he doubted.
"""  # noqa: E501  (paragraphs, as a person pastes them)
LONG_CHAPTER = "\n\n".join(f"Part {i}. " + CHAPTER.split("\n\n", 1)[1] for i in range(1, 7))
VOICE_TRANSCRIPT = "This is how I sound on a quiet morning."


@pytest.fixture
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"Debian's chromium is not installed ({CHROMIUM} is missing): `apt-get install chromium`; "
                    "`./dev test` installs it where it can. No browser is downloaded at test time.")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*"):
        old.unlink()
    print(f"\nstudio screenshots and axe report: {ARTIFACTS}")
    return ARTIFACTS


def _token(settings: Settings) -> str:
    done = services.run_cli(settings, "keys", "create", "--tenant", "studio", "--json")
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["secret"])


def _tone(seconds: float, rate: int = 16_000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, 0.3 * np.sin(2 * np.pi * 180 * t), rate, format="WAV")
    return buffer.getvalue()


def _progress_until_done(page: Page, timeout_s: float = 120) -> list[tuple[float, float]]:
    """(value, max) of the progress bar, sampled until the page says the narration ended."""
    seen: list[tuple[float, float]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value, maximum, status = page.evaluate(
            "() => [document.getElementById('progress').value, document.getElementById('progress').max,"
            " document.getElementById('status').textContent]")
        if not seen or seen[-1] != (value, maximum):
            seen.append((value, maximum))
        if re.search(r"succeeded|failed|canceled|expired|ready to play", status):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"the narration did not end within {timeout_s} s; progress seen: {seen}")


def _accessibility_problems(page: Page, report: Path) -> list[str]:
    results = Axe().run(page)
    report.write_text(json.dumps(results.response["violations"], indent=2))
    return [f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']]}"
            for v in results.response["violations"] if v["impact"] in ("serious", "critical")]


def test_the_studio_narrates_follows_plays_with_captions_cancels_and_retries(
        browser: Browser, settings: Settings, start_api: Callable[..., str],
        start_worker: Callable[..., services.Worker], artifacts: Path, tmp_path: Path) -> None:
    url, token = start_api(settings), _token(settings)
    start_worker(settings, extra_env={"ECHOFORGE_USE_PLACEHOLDER": "true", "ECHOFORGE_PLACEHOLDER_RTF": "0.3",
                                      "ECHOFORGE_MAX_CHUNK_CHARS": "120", "ECHOFORGE_BATCH_SIZE": "1"})
    page, console = _open_studio(browser, url, token)
    _save_voice(page)

    page.get_by_label("Text", exact=True).fill(CHAPTER)
    page.get_by_label("Speaker").select_option("2")
    page.get_by_label("Format").select_option("flac")
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/v1/narrations")):
        page.get_by_role("button", name="Narrate").click()
    headers = {"Authorization": f"Bearer {token}"}
    expiring = httpx.post(f"{url}/v1/narrations", json={"text": "A short line.", "queue_ttl_s": 3},
                          headers=headers, timeout=30).json()["id"]  # waits behind the chapter, and expires
    expect(page.locator("#progress-detail")).to_contain_text("chunks", timeout=30_000)
    page.screenshot(path=artifacts / "1-progress.png", full_page=True)
    seen = _progress_until_done(page)
    values = [value for value, _ in seen]
    assert values == sorted(values) and any(0 < v < m for v, m in seen), f"the bar moved by steps: {seen}"
    assert seen[-1][0] == seen[-1][1] > 1, f"full at the end: {seen}"
    _play_and_download(page)
    page.screenshot(path=artifacts / "2-playing.png", full_page=True)

    canceled = _load_submit_and_cancel(page, tmp_path / "chapter-two.md")
    page.screenshot(path=artifacts / "3-canceled.png", full_page=True)
    _retry(page, expiring)
    page.screenshot(path=artifacts / "4-retried.png", full_page=True)

    jobs = {job["id"]: job for job in httpx.get(f"{url}/v1/narrations", headers=headers, timeout=30).json()["data"]}
    chapter = next(job for job in jobs.values() if job["id"] not in (canceled, expiring))
    assert (jobs[canceled]["state"], jobs[expiring]["state"], chapter["state"]) == ("canceled", "succeeded",
                                                                                   "succeeded")
    assert jobs[canceled]["request"]["text_chars"] > 2000 and jobs[expiring]["history"], "retried after expiring"
    assert chapter["request"]["speaker_id"] == 2 and chapter["request"]["output_format"] == "flac"
    assert chapter["request"]["voice_text"] == VOICE_TRANSCRIPT, "narrated in the uploaded voice"

    page.get_by_text("Upload a voice").click()  # opened again, so that the scan sees its form
    problems = _accessibility_problems(page, artifacts / "axe-violations.json")
    assert not problems, "axe-core: serious or critical violations:\n" + "\n".join(problems)
    assert not console, "console errors:\n" + "\n".join(console)


def test_with_local_storage_the_audio_comes_through_the_api_with_the_key(
        browser: Browser, redis_url: str, start_api: Callable[..., str],
        start_worker: Callable[..., services.Worker], tmp_path: Path) -> None:
    """Local storage (`echoforge up`'s) has no presigned URLs: the page fetches the audio with the key, as a blob."""
    settings = Settings(redis_url=redis_url, storage_url=(tmp_path / "outputs").as_uri())
    url, token = start_api(settings), _token(settings)
    start_worker(settings, extra_env={"ECHOFORGE_USE_PLACEHOLDER": "true"})
    page, console = _open_studio(browser, url, token)
    page.get_by_label("Text", exact=True).fill(CHAPTER)
    page.get_by_role("button", name="Narrate").click()
    expect(page.locator("#status")).to_contain_text("ready to play", timeout=60_000)
    assert page.evaluate("() => document.getElementById('player').src").startswith("blob:")
    page.evaluate("() => { const a = document.getElementById('player'); a.muted = true; return a.play(); }")
    _expect_a_caption_of_the_chapter(page)
    with page.expect_download() as download:
        page.get_by_role("link", name="Audio (WAV)").click()
    audio, rate = sf.read(download.value.path())
    assert download.value.suggested_filename.endswith(".wav") and len(audio) / rate > 30
    assert not console, "console errors:\n" + "\n".join(console)


def _expect_a_caption_of_the_chapter(page: Page) -> None:
    """Playing, the page shows the current cue of the captions track: words of the chapter."""
    caption = page.locator("#caption")
    expect(caption).to_have_text(re.compile(r"\w"), timeout=15_000)
    assert " ".join(caption.inner_text().split()) in " ".join(CHAPTER.split())


def _open_studio(browser: Browser, url: str, token: str) -> tuple[Page, list[str]]:
    """The studio in a new page, the key entered with the keyboard; and the console errors it will log (and any
    request that carries the key in its URL)."""
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text} ({m.location})") if _bad(m) else None)
    page.on("pageerror", lambda error: console.append(f"page error: {error}"))
    page.on("request", lambda r: console.append(f"the key in a URL: {r.url}") if token in r.url else None)
    page.goto(f"{url}/")
    expect(page).to_have_title("EchoForge Studio")
    options = page.locator("#format option")
    expect(options).to_have_count(len(FORMATS))  # filled from the OpenAPI schema once the page has fetched it
    formats = [text.lower() for text in options.all_inner_texts()]
    assert formats == list(FORMATS), "read from the OpenAPI schema"
    page.get_by_role("textbox", name="API key").fill(token)
    page.get_by_role("textbox", name="API key").press("Enter")
    assert page.evaluate("() => sessionStorage.getItem('echoforge.apiKey')") == token
    return page, console


def _save_voice(page: Page) -> None:
    """Upload a recording and its transcript: the new voice is listed and chosen."""
    page.get_by_text("Upload a voice").click()
    page.get_by_label(re.compile("^Recording")).set_input_files(
        files=[{"name": "me.wav", "mimeType": "audio/wav", "buffer": _tone(2.0)}])
    page.get_by_label(re.compile("^Transcript")).fill(VOICE_TRANSCRIPT)
    page.get_by_label("Name (optional)").fill("Morning")
    page.get_by_role("button", name="Save voice").click()
    expect(page.get_by_label("Voice", exact=True)).to_have_value(re.compile(r"\w+"))
    assert page.get_by_label("Voice", exact=True).evaluate("s => s.selectedOptions[0].text") == "Morning (2.0 s)"
    page.get_by_text("Upload a voice").click()  # closed again


def _play_and_download(page: Page) -> None:
    """The finished chapter plays (muted) with its current caption beside it, and its links download it."""
    expect(page.locator("#result")).to_be_visible(timeout=30_000)
    expect(page.locator("#status")).to_contain_text("ready to play")
    page.evaluate("() => { const a = document.getElementById('player'); a.muted = true; return a.play(); }")
    _expect_a_caption_of_the_chapter(page)
    page.wait_for_function("() => document.getElementById('player').currentTime > 1")
    assert page.evaluate("() => document.getElementById('player').duration") > 30
    assert page.locator("#downloads a").all_inner_texts() == ["Audio (FLAC)", "Captions (WebVTT)",
                                                              "Captions (SubRip)"]
    saved = {}
    for link in ("Audio (FLAC)", "Captions (WebVTT)"):
        with page.expect_download() as download:
            page.get_by_role("link", name=link).click()
        saved[link] = download.value
    audio, rate = sf.read(saved["Audio (FLAC)"].path())
    assert re.fullmatch(r"[0-9a-f]{32}\.flac", saved["Audio (FLAC)"].suggested_filename) and len(audio) / rate > 30
    vtt = saved["Captions (WebVTT)"].path().read_text()
    assert vtt.startswith("WEBVTT") and "lighthouse keeper" in vtt


def _load_submit_and_cancel(page: Page, chapter_file: Path) -> str:
    """A long chapter loaded from a .md file, submitted, and canceled from the list (keyboard) once it runs."""
    chapter_file.write_text(LONG_CHAPTER)
    page.get_by_label("Or load a text file").set_input_files(chapter_file)
    expect(page.get_by_label("Text", exact=True)).to_have_value(LONG_CHAPTER)
    page.get_by_role("button", name="Narrate").click()
    rows = page.locator("#jobs tbody tr")
    expect(rows).to_have_count(3)
    job_id = str(rows.first.get_attribute("data-job"))
    row = page.locator(f"#jobs tbody tr[data-job='{job_id}']")
    expect(row.locator("td").nth(2)).to_have_text("running", timeout=30_000)
    expect(page.locator("#progress-detail")).to_contain_text(re.compile(r"^[1-9]\d* of"), timeout=30_000)
    row.get_by_role("button", name=re.compile("^Cancel")).focus()
    page.keyboard.press("Enter")
    expect(row.locator("td").nth(2)).to_have_text("canceled", timeout=30_000)
    expect(page.locator("#status")).to_contain_text("canceled")
    return job_id


def _retry(page: Page, job_id: str) -> None:
    """The job that expired in the queue is retried from the list; the page follows it to its end."""
    row = page.locator(f"#jobs tbody tr[data-job='{job_id}']")
    expect(row.locator("td").nth(2)).to_have_text("expired")
    row.get_by_role("button", name=re.compile("^Retry")).click()
    expect(page.locator("#status")).to_contain_text(f"Narration {job_id[:8]} is ready to play", timeout=30_000)
    expect(row.locator("td").nth(2)).to_have_text("succeeded", timeout=10_000)


def _bad(message: ConsoleMessage) -> bool:
    return message.type in ("error", "assert")


def test_the_page_and_its_assets_are_served_by_the_api_itself(
        settings: Settings, start_api: Callable[..., str]) -> None:
    url = start_api(settings)
    page = httpx.get(f"{url}/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in sorted(STATIC_DIR.iterdir()):
        served = httpx.get(f"{url}/static/{asset.name}", timeout=30)
        assert served.status_code == 200 and served.content == asset.read_bytes(), asset.name
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text), "nothing from another host (no CDN)"
    assert "/" not in httpx.get(f"{url}/openapi.json", timeout=30).json()["paths"], "the page is not an API route"
