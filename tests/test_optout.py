"""Opt-out policy, retries, failure and caching, against a stand-in Spawning API on loopback."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from filters.optout import OptOutCache, OptOutList, OptOutServiceError, SpawningConfig, SpawningOptOutChecker
from pipelines.obelics_format import OBELICS_SCHEMA
from tests.conftest import run_command
from tests.http_servers import SpawningStandIn

IMG = "https://img.example/{}.jpg"


def obelics_row(doc: str, images: list[str]) -> dict:
    texts, urls, metadata = [], [], []
    for name in images:
        texts += ["Some prose about the picture.", None]
        urls += [None, IMG.format(name)]
        metadata += [None, {"src": IMG.format(name)}]
    return {"images": urls, "metadata": json.dumps(metadata), "texts": texts,
            "general_metadata": json.dumps({"url": f"https://site.example/{doc}"})}


DOCS = {"d0": ["a"], "d1": ["b", "c"], "d2": ["d"], "d3": ["e"], "d4": ["f", "g", "h"]}
OPTED_OUT = {"https://site.example/d0", IMG.format("c"), IMG.format("d"), IMG.format("g")}


@pytest.fixture
def source(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    import pyarrow as pa
    pq.write_table(pa.Table.from_pylist([obelics_row(d, i) for d, i in DOCS.items()], schema=OBELICS_SCHEMA),
                   folder / "shard.parquet")
    return folder


def run_optout(source, output, api, *extra):
    return run_command("pipelines.obelics", "--input", str(source), "--output", str(output),
                       "--steps", "structure,optout", "--spawning-url", api.url("/api/v2/query/urls"),
                       "--spawning-backoff", "0.01", "--spawning-retries", "2", *extra,
                       env={"SPAWNING_TOKEN": api.token})


def kept_documents(output) -> dict[str, list[str]]:
    rows = pq.read_table(output / "data" / "00000.parquet").to_pylist()
    return {json.loads(r["general_metadata"])["url"].rsplit("/", 1)[1]: [u.rsplit("/", 1)[1][0] for u in r["images"]
                                                                           if u] for r in rows}


def test_policy_keeps_exactly_the_expected_documents_and_images(source, tmp_path):
    with SpawningStandIn(OPTED_OUT) as api:
        result = run_optout(source, tmp_path / "out", api)
        assert result.returncode == 0, result.stderr[-2000:]
    assert kept_documents(tmp_path / "out") == {"d1": ["b"], "d3": ["e"], "d4": ["f", "h"]}
    removed = pq.read_table(tmp_path / "out" / "removed" / "00000.parquet").to_pylist()
    reasons = {json.loads(r["general_metadata"])["url"][-2:]: r["removed_reason"] for r in removed}
    assert reasons == {"d0": "document_opted_out", "d2": "all_images_opted_out"}
    # texts left adjacent by a removed image are merged, so the layout stays valid
    d1 = next(r for r in pq.read_table(tmp_path / "out" / "data" / "00000.parquet").to_pylist()
              if r["general_metadata"].endswith('d1"}'))
    assert d1["texts"] == ["Some prose about the picture.", None, "Some prose about the picture."]


def test_second_run_with_the_same_cache_asks_nothing(source, tmp_path):
    cache = tmp_path / "shared-cache.sqlite"
    with SpawningStandIn(OPTED_OUT) as api:
        assert run_optout(source, tmp_path / "one", api, "--optout-cache", str(cache)).returncode == 0
        first = api.calls
        assert first >= 1 and sorted(api.urls_asked) == sorted(set(api.urls_asked))  # no URL asked twice
        assert run_optout(source, tmp_path / "two", api, "--optout-cache", str(cache)).returncode == 0
        assert api.calls == first
    assert kept_documents(tmp_path / "one") == kept_documents(tmp_path / "two")


def test_persistent_500_fails_the_shard_then_a_rerun_completes(source, tmp_path):
    with SpawningStandIn(OPTED_OUT, mode="500") as api:
        failed = run_optout(source, tmp_path / "out", api)
        assert failed.returncode == 1
        assert "error: shard 00000 failed: OptOutServiceError: " in failed.stderr
        assert "HTTP 500 after 3 tries" in failed.stderr.splitlines()[-2]
        assert not (tmp_path / "out" / "data" / "00000.parquet").exists()  # nothing written unchecked
        api.mode = "ok"
        resumed = run_optout(source, tmp_path / "out", api)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert kept_documents(tmp_path / "out") == {"d1": ["b"], "d3": ["e"], "d4": ["f", "h"]}


def test_single_url_batch_and_429_then_success(tmp_path):
    with SpawningStandIn({"https://x.example/a"}) as api:
        checker = SpawningOptOutChecker(SpawningConfig(url=api.url("/q"), token=api.token, backoff=0.01))
        assert checker.opted_out(["https://x.example/a"]) == {"https://x.example/a"}  # padded, not refused
        api.script = ["429", "ok"]
        assert checker.opted_out(["https://x.example/b", "https://x.example/a"]) == {"https://x.example/a"}
        assert api.calls == 3


def test_batches_match_by_url_and_use_the_cache(tmp_path):
    urls = [f"https://x.example/{i}" for i in range(25)]
    with SpawningStandIn(set(urls[::5])) as api:
        cache = OptOutCache(str(tmp_path / "c.sqlite"))
        checker = SpawningOptOutChecker(SpawningConfig(url=api.url("/q"), token=api.token, batch_size=10), cache)
        assert checker.opted_out(urls) == set(urls[::5])
        assert api.calls == 3
        assert checker.opted_out(urls[:12]) == set(urls[:12:5]) and api.calls == 3
    with pytest.raises(OptOutServiceError, match="401"):
        with SpawningStandIn(set(), token="other") as api:
            SpawningOptOutChecker(SpawningConfig(url=api.url("/q"), token="wrong")).opted_out(urls)


def test_offline_list_matches_urls_and_domains(tmp_path):
    listing = tmp_path / "optout.txt"
    listing.write_text("# comment\nphotos.example  # a whole site\nhttps://a.example/one.jpg\n"
                       "https://b.example/page#section\n")
    checker = OptOutList(str(listing))
    urls = ["https://photos.example/x.jpg", "https://cdn.photos.example/y.jpg", "https://notphotos.example/z.jpg",
            "https://a.example/one.jpg", "https://a.example/two.jpg", "https://photos.example./trailing-dot.jpg",
            "https://b.example/page#section", "https://b.example/page", "http://[::1/malformed"]
    assert checker.opted_out(urls) == {urls[0], urls[1], urls[3], urls[5], urls[6]}
