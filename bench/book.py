"""A book fanned out over 1, 2 and 4 GPU workers, and the cost of its assembly.

Part 1: a 20-chapter EPUB (built here with tests/book_files.make_epub; chapters of varied length, paragraphs of several
sentences) is submitted through BookClient and runs end to end on real processes: Redis, moto S3, N prefork GPU
workers (one child each, the placeholder model sleeping ECHOFORGE_PLACEHOLDER_RTF seconds per second of audio, as a
GPU keeps a worker busy) and one service worker that assembles the M4B. For each worker count: wall time from submit
to the book's `succeeded`, and its phases read from the records (the anchor's job, the chapters' jobs, the book):
until the anchor was narrated, until the last chapter finished, and the assembly (last chapter's success -> book's
success). Target: 4 workers >= 3.5x one worker.

Part 2: the assembly alone, each step in a child process (a fresh interpreter), on synthetic chapter WAVs (float,
24 kHz mono, written in blocks) totalling 1 hour and 2 hours of audio: the chapters' AAC encoding that a book does
while it is narrated (off the critical path); the assembly as the last chapter leaves it (every chapter but the
last already encoded: the last is encoded, the rest copied packet by packet), and, as the baseline in the same run,
the assembly with nothing encoded ahead (every chapter encoded at assembly, as before). Each: seconds, seconds per
hour of audio against the narration time at the RTF (1 h at RTF 0.1 = 360 s), and the child's peak RSS (VmHWM)
after its imports and at the end. Target: assembly <= 2 % of the narration time, memory flat in the book's length.

    ./dev bench book [--rtf 0.1] [--repeats 1] [--workers 1 2 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from producer.books.client import BookClient
from producer.books.record import ANCHOR
from producer.books.source import read_book
from producer.client import NarrationClient
from producer.job import Job
from producer.settings import Settings
from producer.states import JobState
from tests import services
from tests.book_files import make_epub

CHAPTERS = 20
# Each chapter's length is drawn from this range (seeded; a chapter ends at a paragraph's end, so 1,054-2,364 chars):
# 34,042 chars, ~2,400 s of audio, ~240 s of simulated GPU time at RTF 0.1, so the default run takes ~9-10 minutes.
CHAPTER_CHARS = (1_000, 2_200)
CHARS_PER_SECOND = 15.0  # what the placeholder speaks
SAMPLE_RATE = 24_000
CHAPTER_WAV_S = 180  # part 2: chapters of 3 minutes
SUBJECTS = ["The keeper", "Mara", "The old ferryman", "A gull", "The harbour master", "Her brother", "The lamp"]
VERBS = ["watched", "counted", "remembered", "followed", "mended", "carried", "answered", "crossed"]
OBJECTS = ["the grey line of the tide", "the lanterns along the quay", "a letter that had come too late",
           "the nets drying on the rocks", "the bell of the drowned church", "the long road to the village",
           "every ship that rounded the point", "the storm that had taken the pier"]
CLAUSES = ["before the dawn came up", "while the wind turned to the north", "as her father had done",
           "without a word to anyone", "long after the others had gone home", "in the grey hour after the rain"]


# ----------------------------------------------------------------------------------------------------------- the book

def sentence(rng: random.Random) -> str:
    text = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
    if rng.random() < 0.6:
        text += f", {rng.choice(CLAUSES)}"
    return text + rng.choice([".", ".", ".", "!", "?"])


def chapter_text(rng: random.Random, chars: int) -> str:
    """About `chars` characters: paragraphs of 3 to 7 sentences, separated by blank lines."""
    paragraphs: list[str] = []
    total = 0
    while total < chars:
        paragraph = " ".join(sentence(rng) for _ in range(rng.randint(3, 7)))
        paragraphs.append(paragraph)
        total += len(paragraph) + 2
    return "\n\n".join(paragraphs)


def book_chapters(count: int, chars: tuple[int, int], seed: int = 7) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [(f"Chapter {i + 1}: {rng.choice(OBJECTS).capitalize()}", chapter_text(rng, rng.randint(*chars)))
            for i in range(count)]


# ------------------------------------------------------------------------------------------------ part 1: the fan-out

def wait_book(books: BookClient, book_id: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        book = books.books.get(book_id)
        if book.state is JobState.SUCCEEDED:
            return
        if book.state is not None or books.status(book_id)["state"] == "failed":
            raise RuntimeError(f"book {book_id} did not succeed: {books.status(book_id)['error']}")
        time.sleep(0.1)
    raise TimeoutError(f"book {book_id} still {books.status(book_id)['state']} after {timeout:.0f} s")


def max_in_flight(jobs: list[Job]) -> int:
    """The most chapters running at the same moment (from their started_at..finished_at)."""
    events = sorted([(j.started_at or 0.0, 1) for j in jobs] + [(j.finished_at or 0.0, -1) for j in jobs])
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def phases(books: BookClient, book_id: str, t0: float, rtf: float) -> dict[str, Any]:
    """The book's timings from its records: t0 is the wall-clock time (time.time) the submit began."""
    book = books.books.get(book_id)
    parts = books.parts(book)
    chapters = [parts[str(c["index"])] for c in book.chapters]
    last = max(j.finished_at or 0.0 for j in chapters)
    audio = [float((j.result or {}).get("duration_s", 0.0)) for j in chapters]
    per_worker: dict[str, list[float]] = {}  # worker -> [chapters, simulated GPU seconds]
    for job, seconds in zip(chapters, audio, strict=True):
        share = per_worker.setdefault((job.worker or "?").split("@")[0], [0, 0.0])
        share[0] += 1
        share[1] += seconds * rtf
    return {"total_s": (book.finished_at or 0.0) - t0,
            "anchor_s": (parts[ANCHOR].finished_at or 0.0) - t0,
            "first_chapter_started_s": min(j.started_at or 0.0 for j in chapters) - t0,
            "chapters_done_s": last - t0,
            "assembly_s": (book.finished_at or 0.0) - last,
            "audio_s": sum(audio), "longest_chapter_gpu_s": max(audio) * rtf,
            "in_flight": max_in_flight(chapters), "gpu_s_per_worker": per_worker,
            "attempts": max(j.attempts for j in chapters)}


def warm_up(client: NarrationClient, count: int) -> None:
    """A short job per worker, so every worker has imported and connected before the timed book."""
    ids = [client.submit({"text": "The lamp was lit at dusk, as on every evening of the year."}).id
           for _ in range(count)]
    for job_id in ids:
        client.wait(job_id, timeout=120)


def run_book(books: BookClient, epub: bytes, rtf: float, timeout: float) -> dict[str, Any]:
    source = read_book(epub, "book.epub")
    t0 = time.time()
    book = books.submit(source, {})
    wait_book(books, book.id, timeout)
    return {"book": book.id, **phases(books, book.id, t0, rtf)}


def fan_out(settings: Settings, tmp: Path, args: argparse.Namespace, epub: bytes,
            expected_gpu_s: float) -> dict[int, list[dict[str, Any]]]:
    """Each worker count in turn (workers added to the ones already running), `repeats` books each."""
    env = {"ECHOFORGE_USE_PLACEHOLDER": "true", "ECHOFORGE_PLACEHOLDER_RTF": str(args.rtf)}
    client = NarrationClient(settings)
    books = BookClient(client)
    workers = [services.start_webhook_worker(settings, tmp, name="assembler")]
    runs: dict[int, list[dict[str, Any]]] = {}
    try:
        for count in sorted(args.workers):
            while len(workers) - 1 < count:
                workers.append(services.start_worker(settings, tmp, name=f"gpu{len(workers)}", extra_env=env))
            warm_up(client, count)
            runs[count] = []
            for repeat in range(args.repeats):
                run = run_book(books, epub, args.rtf, timeout=60 + 3 * expected_gpu_s)
                runs[count].append(run)
                print(f"{count} worker(s), run {repeat + 1}: {run['total_s']:.1f} s (anchor {run['anchor_s']:.1f}, "
                      f"chapters done {run['chapters_done_s']:.1f}, assembly {run['assembly_s']:.2f}; "
                      f"{run['in_flight']} chapters in flight at most)", file=sys.stderr, flush=True)
    finally:
        for worker in workers:
            worker.stop()
        client.close()
    return runs


# ---------------------------------------------------------------------------------------------- part 2: the assembly

def write_wav(path: Path, seconds: int, seed: int) -> None:
    """`seconds` of speech-like float audio (a voiced tone whose pitch wanders, syllable swells, short pauses, a
    little noise), written one second at a time."""
    import soundfile

    rng = np.random.default_rng(seed)
    t = np.arange(SAMPLE_RATE, dtype=np.float64) / SAMPLE_RATE
    with soundfile.SoundFile(str(path), "w", samplerate=SAMPLE_RATE, channels=1, subtype="FLOAT") as out:
        for second in range(seconds):
            pitch = 110.0 + 40.0 * rng.random()
            voiced = sum(np.sin(2 * np.pi * pitch * k * (t + second)) / k for k in (1, 2, 3, 5))
            swell = np.clip(np.sin(2 * np.pi * (3.0 + rng.random()) * t), 0.0, None)
            block = 0.15 * voiced * swell + 0.01 * rng.standard_normal(SAMPLE_RATE)
            if second % 7 == 6:
                block[: SAMPLE_RATE // 2] = 0.0  # a pause between sentences
            out.write(block.astype(np.float32))


# Run in a fresh interpreter that imports only the assembly (and PyAV, which it imports on first use), so that its
# peak RSS is its own: argv = mode, out path, then the chapter WAVs. Modes: "pre_encode" encodes every chapter to
# <wav>.m4a as producer/books/pre_encode.py does while a book is narrated (seconds: the sum); "assembly" assembles the
# book as a book's last chapter leaves it: every chapter but the last pre-encoded; "encode_all" assembles it with
# none pre-encoded (every chapter encoded at assembly, as before chapters were pre-encoded). Prints one JSON object.
ASSEMBLE_CHILD = """
import json, sys, time
from pathlib import Path
import av
from producer.books.assembly import ChapterAudio, assemble_m4b
from producer.books.chapter_aac import encode_aac

def peak_mb():  # VmHWM: this process image's peak RSS (ru_maxrss would carry the parent's over from fork and exec)
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024

mode, out, paths = sys.argv[1], Path(sys.argv[2]), [Path(p) for p in sys.argv[3:]]
before = peak_mb()
started = time.perf_counter()
if mode == "pre_encode":
    duration = 0.0
    for path in paths:
        aac = encode_aac(path.name, path, path.with_suffix(".m4a"))
        duration += aac.packets * 1024 / aac.rate
    size = sum(path.with_suffix(".m4a").stat().st_size for path in paths)
else:
    copied = len(paths) - 1 if mode == "assembly" else 0
    chapters = [ChapterAudio(f"Chapter {i + 1}", p, aac=p.with_suffix(".m4a") if i < copied else None)
                for i, p in enumerate(paths)]
    duration = assemble_m4b(chapters, out, title="A long book", author="A. Writer")[-1].end_s
    size = out.stat().st_size
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "rss_before_mb": before, "rss_peak_mb": peak_mb(), "duration_s": duration,
                  "mb": size / 1e6}))
"""


def in_child(mode: str, paths: list[Path], out: Path) -> dict[str, Any]:
    """ASSEMBLE_CHILD in a fresh interpreter: its time, and its peak RSS after its imports and at the end."""
    done = subprocess.run([sys.executable, "-c", ASSEMBLE_CHILD, mode, str(out), *map(str, paths)],
                          capture_output=True, text=True, check=True, timeout=3600,
                          env={**os.environ, "PYTHONPATH": str(services.REPO)})
    out.unlink(missing_ok=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return {**result, "rss_growth_mb": result["rss_peak_mb"] - result["rss_before_mb"]}


def assembly(tmp: Path, hours: list[float], rtf: float) -> dict[float, dict[str, Any]]:
    """On 3-minute chapter WAVs totalling each of `hours` (the longer books reuse the files): the chapters'
    encoding ahead (all of them), the assembly with all but the last encoded ahead, and with none encoded ahead."""
    count = round(max(hours) * 3600 / CHAPTER_WAV_S)
    paths = [tmp / f"chapter-{i:03d}.wav" for i in range(count)]
    for i, path in enumerate(paths):
        write_wav(path, CHAPTER_WAV_S, seed=i)
    found = {}
    for h in hours:
        book = paths[: round(h * 3600 / CHAPTER_WAV_S)]
        run = {mode: in_child(mode, book, tmp / "book.m4b") for mode in ("pre_encode", "assembly", "encode_all")}
        for part in run.values():
            part["s_per_audio_hour"] = part["seconds"] / (part["duration_s"] / 3600)
            part["share_of_narration"] = part["s_per_audio_hour"] / (3600 * rtf)
        run["assembly"]["decoded_mb"] = run["assembly"]["duration_s"] * SAMPLE_RATE * 4 / 1e6  # float32, decoded
        found[h] = run
        print(f"{h:g} h: chapters encoded ahead in {run['pre_encode']['seconds']:.1f} s; assembly "
              f"{run['assembly']['seconds']:.2f} s (peak RSS {run['assembly']['rss_peak_mb']:.0f} MB), with nothing "
              f"encoded ahead {run['encode_all']['seconds']:.1f} s", file=sys.stderr, flush=True)
    for path in paths:
        path.unlink()
        path.with_suffix(".m4a").unlink(missing_ok=True)
    return found


# --------------------------------------------------------------------------------------------------------- reporting

def summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()



def book_figures(runs: dict[int, list[dict[str, Any]]], rtf: float) -> dict[str, Any]:
    """Per worker count: the phases' median (min, max), the scaling against one worker and the ideal."""
    base = statistics.median(r["total_s"] for r in runs[1])
    base_chapters = statistics.median(r["chapters_done_s"] - r["anchor_s"] for r in runs[1])
    base_done = statistics.median(r["chapters_done_s"] for r in runs[1])
    out: dict[str, Any] = {}
    for count, group in sorted(runs.items()):
        gpu = statistics.median(r["audio_s"] for r in group) * rtf
        longest = max(r["longest_chapter_gpu_s"] for r in group)
        total = summary([r["total_s"] for r in group])
        chapters = statistics.median(r["chapters_done_s"] - r["anchor_s"] for r in group)
        out[f"workers_{count}"] = {
            "total_s": total, **{k: summary([r[k] for r in group])
                                 for k in ("anchor_s", "first_chapter_started_s", "chapters_done_s", "assembly_s")},
            "chapters_phase_s": round(chapters, 3), "chapters_ideal_s": round(max(gpu / count, longest), 3),
            "scaling": round(base / total["median"], 3), "chapters_scaling": round(base_chapters / chapters, 3),
            "in_flight": max(r["in_flight"] for r in group), "attempts": max(r["attempts"] for r in group),
            "narration_scaling": round(base_done / statistics.median(r["chapters_done_s"] for r in group), 3),
            "chapters_per_worker": {k: int(v[0]) for k, v in sorted(group[0]["gpu_s_per_worker"].items())},
            "gpu_s_per_worker": {k: round(v[1], 1) for k, v in sorted(group[0]["gpu_s_per_worker"].items())},
        }
        out[f"workers_{count}_s"] = total["median"]
        if count > 1:
            out[f"scaling_{count}"] = round(base / total["median"], 3)
    return out


def assembly_figures(found: dict[float, dict[str, Any]]) -> dict[str, Any]:
    def worst(mode: str, key: str) -> float:  # the slower of the book lengths
        return max(run[mode][key] for run in found.values())

    out: dict[str, Any] = {"assembly": {f"{h:g}h": {mode: {k: round(v, 3) for k, v in part.items()}
                                                    for mode, part in run.items()} for h, run in found.items()},
                           "assembly_s_per_audio_hour": round(worst("assembly", "s_per_audio_hour"), 3),
                           "assembly_share_of_narration": round(worst("assembly", "share_of_narration"), 4),
                           "encode_all_s_per_audio_hour": round(worst("encode_all", "s_per_audio_hour"), 3),
                           "encode_all_share_of_narration": round(worst("encode_all", "share_of_narration"), 4),
                           "pre_encode_s_per_audio_hour": round(worst("pre_encode", "s_per_audio_hour"), 3)}
    for h, run in found.items():
        out[f"assembly_peak_rss_mb_{h:g}h"] = round(run["assembly"]["rss_peak_mb"], 1)
    return out


def print_table(out: dict[str, Any]) -> None:
    print(f"machine: {out['cpu']}, {out['cores']} cores, Python {out['python']}; RTF {out['rtf']}; "
          f"book: {out['chapters']} chapters, {out['chars']:,} chars, {out['audio_s']:.0f} s of audio "
          f"({out['gpu_s']:.0f} s of simulated GPU time); repeats {out['repeats']}")
    print("workers | submit -> succeeded (min-max) | anchor | chapters done | assembly | chapters phase (ideal) | "
          "in flight | vs 1 worker (chapters phase)")
    for count in out["workers"]:
        w = out[f"workers_{count}"]
        t = w["total_s"]
        print(f"{count:7d} | {t['median']:8.1f} s ({t['min']:.1f}-{t['max']:.1f}) | {w['anchor_s']['median']:5.1f} s | "
              f"{w['chapters_done_s']['median']:8.1f} s | {w['assembly_s']['median']:6.2f} s | "
              f"{w['chapters_phase_s']:6.1f} s ({w['chapters_ideal_s']:.1f}) | {w['in_flight']:9d} | "
              f"{w['scaling']:.2f}x ({w['chapters_scaling']:.2f}x)")
    for count in out["workers"]:
        w = out[f"workers_{count}"]
        print(f"{count} worker(s): chapters (simulated GPU s) per worker: " + ", ".join(
            f"{name} {n} ({w['gpu_s_per_worker'][name]:.0f} s)" for name, n in w["chapters_per_worker"].items())
            + f"; submit -> last chapter {w['narration_scaling']:.2f}x one worker's")
    print("alone, on 3-minute chapters | audio | chapters encoded ahead (off the critical path) | assembly, all "
          "but the last encoded ahead: time (per audio hour; share of narration at RTF) | peak RSS (growth) | "
          "assembly with nothing encoded ahead (share)")
    for name, run in out["assembly"].items():
        a, pre, full = run["assembly"], run["pre_encode"], run["encode_all"]
        print(f"{name:>26} | {a['duration_s']:.0f} s | {pre['seconds']:.1f} s | {a['seconds']:.2f} s "
              f"({a['s_per_audio_hour']:.2f} s; {a['share_of_narration'] * 100:.2f} %) | {a['rss_peak_mb']:.0f} MB "
              f"({a['rss_growth_mb']:+.0f} MB) | {full['seconds']:.1f} s ({full['share_of_narration'] * 100:.2f} %)")
    print(f"targets: 4 workers >= 3.5x: {out['target_scaling_ok']} ({out.get('scaling_4', 'n/a')}x); "
          f"assembly <= 2 % of narration: {out['target_assembly_ok']} "
          f"({out['assembly_share_of_narration'] * 100:.2f} %)")
    print("2 CPU cores here: the simulated GPU time is a sleep and overlaps, but the placeholder's tone generation, "
          "the chunk stitching and encoding, the uploads to moto S3, Redis and the assembly all share them.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rtf", type=float, default=0.1, help="ECHOFORGE_PLACEHOLDER_RTF for the GPU workers")
    parser.add_argument("--repeats", type=int, default=1, help="books per worker count (1 by default: it is long)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--chapters", type=int, default=CHAPTERS)
    parser.add_argument("--chapter-chars", type=int, nargs=2, default=list(CHAPTER_CHARS), metavar=("MIN", "MAX"))
    parser.add_argument("--assembly-hours", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--logs", type=Path, help="copy the workers' logs here before the scratch dir is removed")
    args = parser.parse_args()
    if 1 not in args.workers:
        parser.error("--workers must include 1: it is the baseline")
    started, load_before = time.monotonic(), os.getloadavg()[0]
    chapters = book_chapters(args.chapters, tuple(args.chapter_chars))
    epub = make_epub(chapters, title="The Lighthouse Year")
    chars = sum(len(read_book(epub, "book.epub").chapters[i].text) for i in range(len(chapters)))
    with services.bench_services("echoforge-book-") as (tmp, redis_url, s3_url):
        settings = Settings(redis_url=redis_url, storage_url="s3://bench/narrations", s3_endpoint_url=s3_url)
        runs = fan_out(settings, tmp, args, epub, chars / CHARS_PER_SECOND * args.rtf)
        if args.logs:
            args.logs.mkdir(parents=True, exist_ok=True)
            for log in tmp.glob("*.log"):
                shutil.copy(log, args.logs / log.name)
        found = assembly(tmp, sorted(args.assembly_hours), args.rtf)
    audio_s = statistics.median(r["audio_s"] for r in runs[1])
    out = {"cpu": cpu_model(), "cores": multiprocessing.cpu_count(), "python": platform.python_version(),
           "rtf": args.rtf, "repeats": args.repeats, "workers": sorted(args.workers), "chapters": len(chapters),
           "chapter_chars": args.chapter_chars, "chars": chars, "audio_s": round(audio_s, 1),
           "gpu_s": round(audio_s * args.rtf, 1), **book_figures(runs, args.rtf), **assembly_figures(found)}
    out["target_scaling_ok"] = bool(out.get("scaling_4", 0.0) >= 3.5)
    out["target_assembly_ok"] = bool(out["assembly_share_of_narration"] <= 0.02)
    out["run_s"] = round(time.monotonic() - started, 1)
    out["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]  # 1-minute, at start and at end
    if args.json:
        print(json.dumps(out))
        return
    print_table(out)
    print(f"whole run: {out['run_s']:.0f} s; load average {out['load_average'][0]} at the start, "
          f"{out['load_average'][1]} at the end (other processes on these cores slow the CPU-bound assembly)")


if __name__ == "__main__":
    main()
