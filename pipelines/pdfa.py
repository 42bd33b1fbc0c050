"""`python -m pipelines.pdfa`: PDF documents (PDFA, OCR-IDL) into one training sample per page.

Steps, in order: `pages` (render each page with PDFium, text from the sample's JSON lines or the PDF's text
layer; encrypted, corrupt, empty and over-long PDFs removed with their reason), `min_text` (pages with too little
text), `language` (fastText, OBELICS's rule; in the default steps only with `--format idl`: PDFA is English
by construction), `decontam` (a page whose image or text matches an evaluation set is removed). PDFA's and IDL's
samples carry no URL, so there is no `optout` step. Kept pages: `data/NNNNN.tar` (`<key>_<page>.jpg` + `.json`);
removed: `removed/NNNNN.tar` (one `.json` record each, plus the `.pdf` of a PDF removed whole).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace

from filters.decontam.step import POLICIES
from filters.min_text import DEFAULT_MIN_WORDS, MinTextFilter
from filters.pdf_pages import DEFAULT_MAX_PAGES, JSON_FORMATS, PdfPageRenderer
from pipelines.cli import PipelineSpec, main
from pipelines.decontam_report import write_report
from pipelines.decontam_steps import DecontamOptions, build_decontam
from pipelines.language_steps import LANGUAGE
from pipelines.options import UsageError, option
from pipelines.pdfa_format import IDL_HUB_INPUT, PDF_PAGES_SOURCE, PDFA_HUB_INPUT
from pipelines.steps import RunContext, StepSpec


@dataclass
class PageOptions:
    format: str = option("pdfa", "sample JSON layout: pdfa (pixparse/pdfa-eng-wds) or idl (pixparse/idl-wds)",
                         flag="--format", choices=JSON_FORMATS)
    max_pages: int = option(DEFAULT_MAX_PAGES, "remove PDFs with more pages (the IDL card's longest have 3,000)",
                            flag="--max-pages")
    max_side: int = option(980, "rendered longest side (Idefics2 stage 2 trains on images up to 980 px)",
                           unit="px", flag="--max-side")
    dpi: float | None = option(None, "render at most this many dots per inch (default: only --max-side bounds)",
                               flag="--dpi")
    jpeg_quality: int = option(90, "JPEG quality of the page images", flag="--jpeg-quality")


def build_pages(options: PageOptions, ctx: RunContext) -> PdfPageRenderer:
    for flag, value, low in (("--max-pages", options.max_pages, 1), ("--max-side", options.max_side, 16),
                             ("--dpi", options.dpi, 1), ("--jpeg-quality", options.jpeg_quality, 1)):
        if value is not None and value < low:
            raise UsageError(f"{flag} {value}: must be at least {low}")
    if options.max_side > 10_000 or options.jpeg_quality > 95:
        raise UsageError("--max-side is at most 10000 px and --jpeg-quality at most 95 (PIL's useful range)")
    return PdfPageRenderer(options.max_pages, options.max_side, options.dpi, options.jpeg_quality, options.format,
                           exclusion_writer=ctx.recorder("pages"))


@dataclass
class MinTextOptions:
    min_words: int = option(DEFAULT_MIN_WORDS, "remove pages with fewer words", flag="--min-words", minimum=0)


def build_min_text(options: MinTextOptions, ctx: RunContext) -> MinTextFilter:
    return MinTextFilter(options.min_words, exclusion_writer=ctx.recorder("min_text"))


@dataclass
class PageDecontamOptions(DecontamOptions):
    policy: str = option("document", "document: a matching page is removed; image: only its image",
                         flag="--decontam-policy", choices=POLICIES)


PAGES = StepSpec("pages", build_pages, PageOptions, title="page rendering (step pages)", required=True)
MIN_TEXT = StepSpec("min_text", build_min_text, MinTextOptions, title="text per page (step min_text)")
PAGE_DECONTAM = StepSpec("decontam", build_decontam, PageDecontamOptions, title="decontamination (step decontam)")

SPEC = PipelineSpec(
    name="pdfa",
    description="PDF documents (pixparse/pdfa-eng-wds, pixparse/idl-wds) into one rendered page per sample.",
    default_input=PDFA_HUB_INPUT,
    source=PDF_PAGES_SOURCE,
    # language by default only for IDL (scanned, multilingual); pdfa-eng-wds is English by construction
    steps=(PAGES, MIN_TEXT, replace(LANGUAGE, default=lambda args: args.format == "idl"), PAGE_DECONTAM),
    examples=(
        "python -m pipelines.pdfa --output s3://bucket/pdfa --shards 0-1799 --executor slurm "
        "--decontam-index eval_index",
        f"python -m pipelines.pdfa --input {IDL_HUB_INPUT} --format idl --output ./idl-pages --steps pages,min_text",
    ),
    reports=(write_report,),
)


if __name__ == "__main__":
    sys.exit(main(SPEC))
