"""Reading PAIRS, writing and resuming OUT, the CLI's summary and the report's content,
against the stand-in service of ``standin.py`` (a FAKE; the real service is in
``test_client_service.py``)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from similarity_client import PairResult, health
from similarity_client.cli import main
from similarity_client.output import OutputError, ResultWriter, read_records
from similarity_client.pairs import PairsError, read_pairs
from similarity_client.report import build_report

from testing.procs import free_port
from tests.client.standin import StandIn, fake_distance, serve
from tests.client.test_client_unit import png


def write_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        (folder / name).write_bytes(png((i * 40 % 256, 100, 200), size=16 + i))


def test_csv_and_jsonl_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    write_images(tmp_path / "data", ["a.png", "b.png"])
    csv_file = tmp_path / "data" / "pairs.csv"
    csv_file.write_text("reference,generated,pair_id\na.png,b.png,x\n"
                        "a.png,https://h/b.png,\n/abs/c.png,\"data:image/png;base64,AA\",z\n")
    pairs = read_pairs([csv_file]).pairs
    assert [(p.reference, p.generated, p.pair_id) for p in pairs] == [
        (str(tmp_path / "data" / "a.png"), str(tmp_path / "data" / "b.png"), "x"),
        (str(tmp_path / "data" / "a.png"), "https://h/b.png", 1),
        ("/abs/c.png", "data:image/png;base64,AA", "z")]
    jsonl = tmp_path / "data" / "pairs.jsonl"
    jsonl.write_text('{"reference": "a.png", "generated": "b.png", "pair_id": 5}\n\n'
                     '{"reference_image": "a.png", "generated_image": "a.png"}\n')
    pairs = read_pairs([jsonl]).pairs
    assert [p.pair_id for p in pairs] == [5, 1]
    assert pairs[1].generated == str(tmp_path / "data" / "a.png")


@pytest.mark.parametrize(("content", "message"), [
    ("ref,gen\na,b\n", "header must name 'reference' and 'generated'"),
    ("reference,generated,pair_id\na,b,1\nc,d,1\n", "pair_id '1' is used by pairs 0 and 1"),
    ("reference,generated\na,\n", "line 2: no 'generated'"),
    ("reference,generated\na,b,c\n", "line 2: more values than the header has columns"),
])
def test_bad_pairs_files_say_where_and_why(tmp_path: Path, content: str, message: str) -> None:
    f = tmp_path / "p.csv"
    f.write_text(content)
    with pytest.raises(PairsError, match=message):
        read_pairs([f])
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"reference": "a", "generated": "b"}\n{oops\n')
    with pytest.raises(PairsError, match="p.jsonl, line 2: not valid JSON"):
        read_pairs([bad])


def test_folders_are_matched_by_file_name(tmp_path: Path) -> None:
    write_images(tmp_path / "ref", ["001.png", "002.png", "003.png", "notes.txt"])
    write_images(tmp_path / "gen", ["001.jpg", "002.png", "004.png"])
    result = read_pairs([tmp_path / "ref", tmp_path / "gen"])
    assert [(Path(str(p.reference)).name, Path(str(p.generated)).name, p.pair_id)
            for p in result.pairs] == [("001.png", "001.jpg", "001"), ("002.png", "002.png",
                                                                        "002")]
    assert any("003.png" in w for w in result.warnings)
    assert any("004.png" in w for w in result.warnings)
    write_images(tmp_path / "ref", ["001.jpg"])
    with pytest.raises(PairsError, match="001.jpg and 001.png have the same name"):
        read_pairs([tmp_path / "ref", tmp_path / "gen"])


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_output_resumes_and_cuts_a_partial_last_line(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"out{suffix}"
    with ResultWriter(out) as w:
        w.write(PairResult("a", "r.png", "g,1.png", distance=0.25, similarity=0.8))
        w.write(PairResult(2, "r.png", "g.png", error="not an image", field="generated_image"))
    with out.open("a") as f:
        f.write('{"pair_id": "c", "dist' if suffix == ".jsonl" else "c,r.png,g.p")
    w = ResultWriter(out)
    assert w.repaired_bytes > 0 and w.done == {"a", "2"}
    w.close()
    records = read_records(out)
    assert [str(r["pair_id"]) for r in records] == ["a", "2"]
    assert records[0]["distance"] == 0.25 and records[0]["generated"] == "g,1.png"
    assert records[1]["error"] == "not an image" and records[1]["field"] == "generated_image"
    w = ResultWriter(out, retry_errors=True)
    assert w.dropped_errors == 1 and w.done == {"a"}
    w.close()
    assert [str(r["pair_id"]) for r in read_records(out)] == ["a"]


def test_output_refuses_files_it_did_not_write(tmp_path: Path) -> None:
    (tmp_path / "x.jsonl").write_text("not json\n")
    with pytest.raises(OutputError, match="line 1: not valid JSON"):
        ResultWriter(tmp_path / "x.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(OutputError, match="header"):
        ResultWriter(tmp_path / "x.csv")
    with pytest.raises(OutputError, match="must end in .jsonl"):
        ResultWriter(tmp_path / "x.txt")


def test_cli_scores_resumes_without_duplicates_and_summarises(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    names = [f"{i:03d}.png" for i in range(12)]
    write_images(tmp_path / "ref", names)
    write_images(tmp_path / "gen", names[::-1])
    (tmp_path / "gen" / "005.png").write_bytes(b"bad")  # the stand-in's undecodable image
    (tmp_path / "gen" / "006.png").write_bytes(b"")  # empty: refused by the client itself
    out = tmp_path / "scores.jsonl"
    with serve(StandIn(pair_limit=4)) as s:
        args = ["score", str(tmp_path / "ref"), str(tmp_path / "gen"), "--url", s.url,
                "--out", str(out), "--chunk-size", "5", "--concurrency", "2",
                "--target-seconds", "0"]  # fixed chunks of 5: over the limit of 4
        assert main([*args, "--report", str(tmp_path / "r.html")]) == 0
        first = capsys.readouterr()
        records = read_records(out)
        assert sorted(r["pair_id"] for r in records) == [n[:3] for n in names]
        by_id = {r["pair_id"]: r for r in records}
        ref = (tmp_path / "ref" / "001.png").read_bytes()
        gen = (tmp_path / "gen" / "001.png").read_bytes()
        assert by_id["001"]["distance"] == fake_distance(base64.b64encode(ref).decode(),
                                                         base64.b64encode(gen).decode())
        assert by_id["005"]["error"] == "not an image (cannot identify image file)"
        assert by_id["006"]["error"] == "the file is empty"
        assert "done in" in first.out and "10 pair(s) scored, 2 failed" in first.out
        assert "median" in first.out and "p95" in first.out
        assert "the service's pair limit: 4" in first.out
        assert "1 x generated_image: the file is empty" in first.out
        assert "pair/s" in first.err  # the progress bar
        sent = len(s.received)
        # Again: nothing left to do, nothing sent, nothing duplicated.
        assert main(args) == 0
        again = capsys.readouterr()
        assert "12 already in" in again.err and len(s.received) == sent
        assert len(read_records(out)) == 12
        # --retry-errors: only the two failed pairs are tried again.
        (tmp_path / "gen" / "006.png").write_bytes(png((1, 2, 3)))
        assert main([*args, "--retry-errors", "--no-progress"]) == 0
        assert "2 error line(s) removed" in capsys.readouterr().err
    records = read_records(out)
    assert len(records) == 12 and len({r["pair_id"] for r in records}) == 12
    assert [r["pair_id"] for r in records if r.get("error")] == ["005"]
    page = (tmp_path / "r.html").read_text()
    assert page.count('class="card"') == 10 and "<svg" in page


def test_cli_exit_codes_for_usage_and_service_errors(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["score", str(tmp_path / "nope.csv"), "--url", "http://127.0.0.1:9",
                 "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "not found" in capsys.readouterr().err
    pairs = tmp_path / "p.jsonl"
    pairs.write_text(json.dumps({"reference": "https://h/a.png", "generated": "https://h/b.png"})
                     + "\n")
    with serve(StandIn(script=[(503, {}, {"detail": "down", "errors": []})] * 3)) as s:
        assert main(["score", str(pairs), "--url", s.url, "--out", str(tmp_path / "o.jsonl"),
                     "--max-retries", "1", "--max-backoff", "0.1"]) == 1
        out = capsys.readouterr().out
        assert "not scored (service unavailable; run again to retry)" in out
        assert "1 pair(s) still missing" in out
        assert read_records(tmp_path / "o.jsonl") == []  # retryable: not written
        assert main(["score", str(pairs), "--url", s.url + "/x", "--out",
                     str(tmp_path / "o.jsonl")]) == 2
        assert "HTTP 404" in capsys.readouterr().err


def test_report_content_and_without_pillow(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    write_images(tmp_path, ["a.png", "b.png"])
    records = [{"pair_id": i, "reference": str(tmp_path / "a.png"),
                "generated": str(tmp_path / "b.png") if i else "https://h/x.png",
                "distance": i / 10, "similarity": 1 / (1 + i / 10)} for i in range(5)]
    records.append({"pair_id": "bad", "reference": "r", "generated": "g",
                    "error": "not an image <script>", "field": "generated_image"})
    page = build_report(records, source="s.jsonl", top=3)
    assert page.count('class="card"') == 3 and page.count('class="bar"') == 30
    assert page.index('data-pair-id="4"') < page.index('data-pair-id="3"')
    assert "data:image/jpeg;base64," in page  # downscaled with Pillow
    assert "not an image &lt;script&gt;" in page and "<script>" not in page
    assert "median" in page and "0.2000" in page  # median of 0, .1, .2, .3, .4
    page = build_report(records[:1], source="s.jsonl")
    assert "URL (not fetched by the client)" in page
    monkeypatch.setitem(sys.modules, "PIL", None)
    page = build_report(records[1:2], source="s.jsonl")
    assert "data:image/png;base64," in page and "data:image/jpeg" not in page


@pytest.mark.slow
def test_the_client_builds_alone_and_imports_without_torch_kserve_or_pillow(
        tmp_path: Path) -> None:
    import shutil
    import subprocess
    import zipfile

    root = Path(__file__).resolve().parents[2]
    # Built from a copy: setuptools leaves build/ and *.egg-info beside the sources it builds,
    # and tests must not write into the source tree.
    source = tmp_path / "client-src"
    shutil.copytree(root / "client", source,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "-q", "-w", str(tmp_path / "wheel"),
                            str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "wheel").glob("similarity_client-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith("METADATA"))).decode()
        entry = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "similarity_client/cli.py" in names and "similarity_client/py.typed" in names
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist")]
    assert not any(dep in line for line in requires for dep in ("torch", "kserve"))
    plain = sorted(line.split()[1].split(">")[0] for line in requires if "extra ==" not in line)
    assert plain == ["httpx", "tqdm"], plain  # `pip install similarity-client` brings no more
    extras = {line.split("extra ==")[1].strip().strip("'\"") for line in requires
              if "extra ==" in line}
    assert {"eval", "parquet"} <= extras, extras
    for dep in ("numpy", "scipy", "faiss-cpu", "prdc", "vendi-score"):
        assert any(line.startswith(f"Requires-Dist: {dep}") and "extra == \"eval\"" in line
                   for line in requires), (dep, requires)
    assert any(line.startswith("Requires-Dist: pyarrow") and "extra == \"parquet\"" in line
               for line in requires), requires
    assert "similarity-client = similarity_client.cli:main" in entry
    probe = ("import sys, similarity_client, similarity_client.cli, similarity_client.report, "
             "similarity_client.evalcli; "
             "print(sorted(m for m in ('torch', 'kserve', 'PIL', 'numpy') if m in sys.modules))")
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                              env={"PYTHONPATH": str(wheel)}, timeout=120)
    assert imported.returncode == 0 and imported.stdout.strip() == "[]", imported.stderr


def _pairs_file(tmp_path: Path, n: int, bad: tuple[int, ...] = ()) -> Path:
    """``n`` pairs of small PNGs in a JSONL (pair ``k`` in ``bad`` gets the stand-in's
    undecodable image as its generated side)."""
    write_images(tmp_path / "img", [f"{i}.png" for i in range(n)])
    (tmp_path / "img" / "bad.png").write_bytes(b"bad")
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"reference": f"img/{i}.png",
                                        "generated": "img/bad.png" if i in bad
                                        else f"img/{(i + 1) % n}.png", "pair_id": f"p{i}"})
                            + "\n" for i in range(n)))
    return path


def test_cli_says_cannot_connect_at_once_for_a_wrong_url(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pairs = _pairs_file(tmp_path, 3)
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    # Without the /health check this retried (here briefly) and ended "not scored", exit 1.
    assert main(["score", str(pairs), "--url", url, "--out", str(tmp_path / "o.jsonl"),
                 "--max-retries", "2", "--max-backoff", "0.1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"cannot connect to {url}" in err and "check --url" in err
    assert read_records(tmp_path / "o.jsonl") == []


def test_cli_waits_visibly_for_a_loading_service_and_gives_up_when_told(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "POLL_EVERY_S", 0.05)
    pairs = _pairs_file(tmp_path, 3)
    out = tmp_path / "o.jsonl"
    with serve(StandIn(health=[503, 503])) as s:
        assert main(["score", str(pairs), "--url", s.url, "--out", str(out),
                     "--no-progress"]) == 0
        assert s.health_calls == 3
    assert "waiting for the service at" in capsys.readouterr().err
    assert len(read_records(out)) == 3
    with serve(StandIn(health=[503] * 10_000)) as s:
        assert main(["score", str(pairs), "--url", s.url, "--out", str(tmp_path / "o2.jsonl"),
                     "--wait-ready", "0.3", "--no-progress"]) == 1
        assert s.received == []  # nothing sent to a service that is not ready
    assert "still not ready" in capsys.readouterr().err


def test_cli_summary_counts_error_lines_after_resume_and_fail_on_errors(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pairs = _pairs_file(tmp_path, 6, bad=(2, 4))
    out = tmp_path / "o.jsonl"
    with serve(StandIn()) as s:
        args = ["score", str(pairs), "--url", s.url, "--out", str(out), "--no-progress"]
        assert main(args) == 0
        first = capsys.readouterr().out
        assert "4 pair(s) scored, 2 failed" in first
        assert "2 pair(s) in" in first and "--retry-errors" in first
        assert main(args) == 0  # resumed: nothing to score, but the errors are still there
        again = capsys.readouterr().out
        assert "6 pair(s) were already in" in again and "2 of them error lines" in again
        assert "2 pair(s) in" in again and "--retry-errors" in again
        assert main([*args, "--fail-on-errors"]) == 1
        assert "--fail-on-errors" in capsys.readouterr().err
    fine = _pairs_file(tmp_path / "fine", 3)
    with serve(StandIn()) as s:
        assert main(["score", str(fine), "--url", s.url, "--out", str(tmp_path / "f.jsonl"),
                     "--no-progress", "--fail-on-errors"]) == 0
    assert "error line" not in capsys.readouterr().out


def test_cli_writes_the_first_small_chunk_while_the_rest_is_computing(tmp_path: Path) -> None:
    # The first request holds 4 pairs (the adaptive start); the service then holds the
    # second one until the test releases it: the 4 scores must be in OUT meanwhile (with
    # 32-pair chunks, nothing was written before the whole chunk came back).
    release = threading.Event()

    def hold(pairs: list[dict[str, object]]) -> None:
        if any(p["pair_id"] not in {"p0", "p1", "p2", "p3"} for p in pairs):
            release.wait(60)

    pairs = _pairs_file(tmp_path, 40)
    out = tmp_path / "o.jsonl"
    with serve(StandIn(hold=hold)) as s:
        proc = subprocess.Popen(
            [sys.executable, "-m", "similarity_client", "score", str(pairs), "--url", s.url,
             "--out", str(out), "--concurrency", "1", "--no-progress"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (
                    out.exists() and len(out.read_text().splitlines()) >= 4):
                time.sleep(0.1)
            written = len(out.read_text().splitlines()) if out.exists() else 0
            assert written == 4 and not release.is_set(), written
        finally:
            release.set()
            output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    assert len(read_records(out)) == 40 and s.sizes()[0] == 4
    assert max(s.sizes()) <= 32
