"""`python -m pipelines.push PATH --repo-id ORG/NAME`: publish a mixture, a Cauldron export or a pipeline output to
the Hugging Face Hub as a dataset with a generated card.

PATH is validated first (`mixtures.validate`; a failed check stops the push unless `--force`). The folder that is
pushed is a staging view of PATH: links to the data files and the run's records (mixture.json, summary.json,
manifest.json, the decontamination report), plus the generated card as README.md; logs, caches, scores and removed
documents stay home, and PATH itself is not changed. `--dry-run DIR` writes that view to DIR and stops, so
`datasets.load_dataset(DIR)` shows what `load_dataset("ORG/NAME")` will.

The upload is huggingface_hub's `HfApi.upload_folder`: since huggingface_hub 1.x (2.4 here) it streams files
through the Xet protocol in several commits and resumes an interrupted upload when the same command is run
again (its docstring; `upload_large_folder` is gone from 2.x). The token is the usual one (`hf auth login`, or
HF_TOKEN): it is never passed, printed or written by this command.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

from datatrove.utils.logging import logger

from filters.errors import command
from mixtures.card import dataset_card
from mixtures.validate import MIXTURE_FILE, Report, ValidateError, validate
from pipelines.options import UsageError

EXIT_PUSHED, EXIT_CHECKS_FAILED, EXIT_USAGE, EXIT_UPLOAD_FAILED = 0, 1, 2, 3
RECORDS = (MIXTURE_FILE, "summary.json", "manifest.json", "decontam_report.md", "decontam_report.json",
           "thresholds.json")  # the run's own records, pushed beside the data
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")  # the Hub's id rule

EPILOG = f"""exit status:
  {EXIT_PUSHED}  pushed (or, with --dry-run, the folder to push written)
  {EXIT_CHECKS_FAILED}  mixtures.validate found a failed check: nothing pushed (see its table; --force pushes anyway)
  {EXIT_USAGE}  usage error, PATH cannot be read, or no Hugging Face token
  {EXIT_UPLOAD_FAILED}  the Hub refused or could not be reached: run the same command again to resume"""


def data_files(folder: Path, report: Report) -> list[str]:
    """The files to push, relative to `folder`: the data of its kind and the run's records."""
    if report.kind in ("pretrain", "sft"):
        patterns = [report.info["files"]]
    elif report.kind == "cauldron":  # the subsets validate recognised, and the SFT mixture beside them
        from datatrove.io import get_datafolder

        from mixtures.validate import cauldron_subsets

        subsets = cauldron_subsets(get_datafolder(str(folder)))
        patterns = [p for files in subsets.values() for p in files] + ["sft/" + MIXTURE_FILE, "sft/data/*.parquet"]
    else:
        patterns = ["data/*.parquet", "data/*.tar", "images/*.tar"]
    found = {p.relative_to(folder).as_posix() for pattern in patterns for p in folder.glob(pattern) if p.is_file()}
    found |= {name for name in RECORDS if (folder / name).is_file()}
    return sorted(found)


def stage(folder: Path, files: list[str], card: str, staging: Path) -> None:
    """Links to `files` under `staging` and the card as README.md. A file that leads outside PATH (a link to
    elsewhere) is refused: pushing it would publish something the user did not mean to."""
    root = folder.resolve()
    for name in files:
        source = (folder / name).resolve()
        if not source.is_relative_to(root):
            raise UsageError(f"{folder / name}: leads outside {folder} (to {source}); not pushed")
        target = staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source)
    (staging / "README.md").write_text(card, encoding="utf-8")


def upload(staging: Path, repo_id: str, private: bool, revision: str | None, message: str) -> str:
    """Create the dataset repo (and branch) if needed, then upload the staged folder; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id, repo_type="dataset", branch=revision, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(staging), repo_type="dataset", revision=revision,
                             commit_message=message)
    return str(getattr(info, "commit_url", "") or f"https://huggingface.co/datasets/{repo_id}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.push", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Validate a mixture, Cauldron export or pipeline output and publish it as a Hub dataset with a "
                    "generated card (README.md in the repository: configs for load_dataset, recipe, validation, "
                    "summaries, decontamination report, licences). Uses your Hugging Face login or HF_TOKEN.")
    parser.add_argument("path", metavar="PATH", help="the local folder to push")
    parser.add_argument("--repo-id", required=True, metavar="ORG/NAME", help="the dataset repository")
    parser.add_argument("--private", action="store_true", help="create the repository private (an existing "
                                                                 "repository keeps its visibility)")
    parser.add_argument("--revision", default=None, help="branch to push to (created if missing; default main)")
    parser.add_argument("--message", default=None, help="commit message (default: 'Upload <kind> <name>')")
    parser.add_argument("--force", action="store_true", help="push even when a validation check fails")
    parser.add_argument("--dry-run", metavar="DIR", default=None,
                        help="write the folder that would be pushed (links and README.md) to DIR; upload nothing")
    return parser


def _check_args(args) -> Path:
    if not REPO_ID.match(args.repo_id) or ".." in args.repo_id or "--" in args.repo_id:
        raise UsageError(f"--repo-id {args.repo_id!r}: use ORG/NAME (letters, digits, '-', '_', '.')")
    if "://" in args.path:
        raise UsageError(f"{args.path}: push reads a local folder (copy a remote one first)")
    folder = Path(args.path)
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such folder")
    if args.dry_run and Path(args.dry_run).exists() and any(Path(args.dry_run).iterdir()):
        raise UsageError(f"--dry-run {args.dry_run}: exists and is not empty")
    if not args.dry_run:
        from huggingface_hub import get_token

        if not get_token():
            raise UsageError("no Hugging Face token: log in with `hf auth login` or set HF_TOKEN")
    return folder


def push(args) -> int:
    folder = _check_args(args)
    report = validate(str(folder))
    if report.failures and not args.force:
        for failure in report.failures:
            logger.error(f"check failed: {failure}")
        logger.error(f"{folder}: not pushed (run `python -m mixtures.validate {folder}` to see why; --force pushes)")
        return EXIT_CHECKS_FAILED
    files = data_files(folder, report)
    max_images = max((s.max_images for s in report.sources.values()), default=0)
    card = dataset_card(report, folder, files, args.repo_id, max_images)
    if args.dry_run:
        stage(folder, files, card, Path(args.dry_run))
        logger.info(f"--dry-run: {len(files)} files and README.md staged in {args.dry_run}")
        return EXIT_PUSHED
    staging = Path(tempfile.mkdtemp(prefix="push-"))
    try:
        stage(folder, files, card, staging)
        message = args.message or f"Upload {report.kind} {report.name}".strip()
        logger.info(f"pushing {len(files)} files and README.md to datasets/{args.repo_id}"
                    f"{'@' + args.revision if args.revision else ''}")
        url = _upload_or_explain(staging, args, message)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info(f"pushed: {url}")
    return EXIT_PUSHED


def _upload_or_explain(staging: Path, args, message: str) -> str:
    """The upload, with a refusal or a network failure turned into one line (the token is in neither)."""
    from huggingface_hub.errors import HTTPError  # the HTTP client's base error: refusals and unreachable hosts

    try:
        return upload(staging, args.repo_id, args.private, args.revision, message)
    except (HTTPError, OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise UploadError(f"upload to datasets/{args.repo_id} failed: {type(error).__name__}: {first}")


class UploadError(Exception):
    pass


@command
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return push(args)
    except (UsageError, ValidateError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except UploadError as error:
        print(f"error: {error} (run the same command again to resume)", file=sys.stderr)
        return EXIT_UPLOAD_FAILED


if __name__ == "__main__":
    sys.exit(main())
