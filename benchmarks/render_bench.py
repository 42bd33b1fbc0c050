"""PDF pages rendered per second per core at 980 px: the `pages` step (pypdfium2) against poppler's `pdftoppm`.

    python benchmarks/render_bench.py [--pdfs 20] [--pages 5] [--lines 45] [--repeat 3]

Both render the same generated text PDFs (scripts/make_pdf_sample.py's writer, US Letter, dense Helvetica text)
to JPEG, quality 90, longest side 980 px, on one core: ours through `PdfPageRenderer` as the pipeline runs it
(page documents from the reader, text from the sample JSON), pdftoppm as a user would run it, one process per
PDF (`pdftoppm -jpeg -jpegopt quality=90 -scale-to 980`, Debian package `poppler-utils`). Best of `--repeat`,
the two alternating. Ours also parses the sample JSON (lines and word boxes); pdftoppm only renders.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from filters.pdf_pages import PdfPageRenderer  # noqa: E402
from pipelines.pdfa_format import sample_to_documents  # noqa: E402
from pipelines.webdataset_source import Sample  # noqa: E402
from scripts.make_pdf_sample import make_pdf, pdfa_json  # noqa: E402


def corpus(pdfs: int, pages: int, lines: int) -> list[Sample]:
    words = "reading documents teaches a vision language model to transcribe dense printed text".split()
    samples = []
    for d in range(pdfs):
        text = [[" ".join(words[(d + p + i + j) % len(words)] for j in range(11)) for i in range(lines)]
                for p in range(pages)]
        samples.append(Sample(f"doc{d:04d}", {"pdf": make_pdf(text), "json": pdfa_json(text)}))
    return samples


def ours(samples: list[Sample]) -> int:
    renderer = PdfPageRenderer(max_side=980, jpeg_quality=90)
    pages = 0
    for number, sample in enumerate(samples):
        for doc in sample_to_documents(sample, f"{number}", "bench.tar"):
            assert renderer.filter(doc) is True and max(doc.media[0].metadata["width"],
                                                        doc.media[0].metadata["height"]) == 980
            pages += 1
    renderer._close()
    return pages


def poppler(samples: list[Sample], folder: Path) -> int:
    for sample in samples:
        pdf = folder / f"{sample.key}.pdf"
        pdf.write_bytes(sample.fields["pdf"])
        subprocess.run(["pdftoppm", "-jpeg", "-jpegopt", "quality=90", "-scale-to", "980", str(pdf),
                        str(folder / sample.key)], check=True)
    return len(list(folder.glob("*.jpg")))


def timed(run) -> tuple[float, int]:
    start = time.perf_counter()
    count = run()
    return time.perf_counter() - start, count


def interleaved(runs: dict, repeat: int) -> dict[str, tuple[float, int]]:
    """Best time of each run, the runs alternating, so a busy neighbour slows both alike."""
    results: dict[str, list[tuple[float, int]]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            results[name].append(timed(run))
    return {name: min(times) for name, times in results.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pdfs", type=int, default=20)
    parser.add_argument("--pages", type=int, default=5)
    parser.add_argument("--lines", type=int, default=45)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    samples = corpus(args.pdfs, args.pages, args.lines)

    def run_poppler() -> int:
        with tempfile.TemporaryDirectory() as folder:
            return poppler(samples, Path(folder))

    runs = {"pypdfium2 (pages step)": lambda: ours(samples)}
    if shutil.which("pdftoppm"):
        runs["pdftoppm (poppler)"] = run_poppler
    results = interleaved(runs, args.repeat)
    pages = results["pypdfium2 (pages step)"][1]
    print(f"{pages} pages ({args.pdfs} PDFs x {args.pages}, {args.lines} lines a page), best of {args.repeat}, "
          f"one core, JPEG q90, longest side 980 px")
    for name, (seconds, count) in results.items():
        assert count == pages, (name, count, pages)
        print(f"{name:24s}: {count / seconds:7.1f} pages/s")
    if "pdftoppm (poppler)" not in results:
        print("pdftoppm: not installed (apt-get install -y poppler-utils): no ratio")
        return 0
    ratio = results["pdftoppm (poppler)"][0] / results["pypdfium2 (pages step)"][0]
    print(f"ratio pypdfium2 / pdftoppm: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
