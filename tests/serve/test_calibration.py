"""deepmetric calibrate: the threshold chosen on the validation split, stored with the index, used by
search, the API and the CLI to answer "no match"."""
import itertools
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from deepmetric.cli import app
from deepmetric.retrieval.index import SearchIndex
from deepmetric.serve.calibration import ROC_FILE, calibrate_index
from deepmetric.serve.indexing import IndexSearcher

runner = CliRunner()


def test_threshold_is_chosen_on_the_validation_pairs_and_stored(index_copy, tiny_run):
    from deepmetric.inference import embed_checkpoint

    res = calibrate_index(index_copy, fmr=0.01, device="cpu")
    th = res["threshold"]
    # independent reference: every unordered pair of the validation digits, float64, sorted impostors
    emb, y = embed_checkpoint(tiny_run / "best.pt", split="val")
    x = torch.nn.functional.normalize(emb.double(), dim=1).numpy()
    s = x @ x.T
    iu = np.triu_indices(len(y), 1)
    same = (y.numpy()[:, None] == y.numpy()[None, :])[iu]
    gen, imp = s[iu][same], s[iu][~same]
    assert th["split"] == "val" and th["genuine_pairs"] == gen.size and th["impostor_pairs"] == imp.size
    assert th["fmr"] <= 0.01 and np.mean(imp >= th["value"]) == pytest.approx(th["fmr"], abs=2 / imp.size)
    # FMR of the threshold just one impostor lower would exceed the target
    allowed = int(np.floor(0.01 * imp.size))
    assert th["value"] == pytest.approx(np.sort(imp)[::-1][allowed], abs=1e-5)
    assert th["fnmr"] == pytest.approx(np.mean(gen < th["value"]), abs=2 / gen.size)
    stored = SearchIndex.load(index_copy)
    assert stored.threshold == th["value"] and stored.metadata["threshold"]["criterion"] == "fmr"
    assert (index_copy / ROC_FILE).read_bytes()[:4] == b"\x89PNG"
    assert set(res["fnmr_at_fmr"]) == {"fnmr@fmr=0.1", "fnmr@fmr=0.01", "fnmr@fmr=0.001"}
    assert res["fnmr_at_fmr"]["fnmr@fmr=0.1"] <= res["fnmr_at_fmr"]["fnmr@fmr=0.01"] <= res["fnmr_at_fmr"]["fnmr@fmr=0.001"]


def test_search_says_no_match_below_the_threshold(index_copy):
    from PIL import Image

    query = Image.open(index_copy / "thumbs" / "000003.png")
    searcher = IndexSearcher(index_copy, device="cpu")
    plain = searcher.search([query], 3)[0]
    assert all(r["match"] is None for r in plain)  # uncalibrated: no decision
    best, second = plain[0]["score"], plain[1]["score"]
    searcher.index.set_threshold({"value": second + (best - second) / 2})
    hits = searcher.search([query], 3)[0]
    assert [r["match"] for r in hits] == [True, False, False]
    searcher.index.set_threshold({"value": float(np.nextafter(np.float32(best), np.float32(2)))})
    assert not any(r["match"] for r in searcher.search([query], 3)[0])
    with pytest.raises(ValueError, match="finite"):
        searcher.index.set_threshold({"value": float("nan")})


def test_api_and_cli_show_the_threshold_and_no_match(index_copy):
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from deepmetric.serve.app import create_app

    r = runner.invoke(app, ["calibrate", "--index", str(index_copy), "--fmr", "0.05"])
    assert r.exit_code == 0, r.output
    t = json.loads((index_copy / "index.json").read_text())["threshold"]["value"]
    assert f"threshold {t:.4f} for FMR <= 0.05 on split 'val'" in r.output and "FNMR@FMR" in r.output
    # a query the gallery cannot match: push the threshold above every score it reaches
    index = SearchIndex.load(index_copy)
    index.set_threshold({**index.metadata["threshold"], "value": 1.5})
    index.save_metadata(index_copy)
    png = (index_copy / "thumbs" / "000003.png").read_bytes()
    with TestClient(create_app(index_copy, device="cpu")) as c:
        assert c.get("/health").json()["threshold"] == 1.5
        assert c.get("/info").json()["threshold"]["split"] == "val"
        body = c.post("/search?k=2", files={"file": ("q.png", png, "image/png")}).json()
        assert body["threshold"] == 1.5 and body["match"] is False and len(body["results"]) == 2
    r = runner.invoke(app, ["search", "--index", str(index_copy), str(index_copy / "thumbs" / "000003.png"), "-k", "2"])
    assert r.exit_code == 0 and "no match" in r.output and "1.5000" in r.output


def test_calibration_errors_are_one_line(index_copy):
    r = runner.invoke(app, ["calibrate", "--index", str(index_copy), "--fmr", "0.1", "--precision", "0.9"])
    assert r.exit_code == 2 and "not both" in r.output
    r = runner.invoke(app, ["calibrate", "--index", str(index_copy), "--split", "train"])
    assert r.exit_code == 2 and "training split" in r.output
    r = runner.invoke(app, ["calibrate", "--index", str(index_copy), "--fmr", "2"])
    assert r.exit_code == 2 and "(0, 1)" in r.output


def test_eval_detail_prints_topk_fnmr_and_writes_per_class(tiny_run, tmp_path):
    from deepmetric.retrieval.topk_metrics import topk_metrics
    from deepmetric.inference import embed_checkpoint

    out = tmp_path / "pc.json"
    r = runner.invoke(app, ["eval", "--checkpoint", str(tiny_run / "best.pt"), "--split", "val", "--detail", "--per-class", str(out)])
    assert r.exit_code == 0, r.output
    assert "FNMR@0.001 =" in r.output and "mAP@k" in r.output
    emb, y = embed_checkpoint(tiny_run / "best.pt", split="val")
    ref = topk_metrics(emb, y, ks=(1, 5, 10, 20), per_class=True)["per_class"]
    written = json.loads(out.read_text())
    assert set(written) == {str(c) for c in ref}
    assert written["0"]["map@20"] == pytest.approx(ref[0]["map@20"])


def test_eval_rerank_adds_a_row_equal_to_rerank_metrics(tiny_run):
    from deepmetric.retrieval.rerank import rerank_metrics
    from deepmetric.inference import embed_checkpoint

    r = runner.invoke(app, ["eval", "--checkpoint", str(tiny_run / "best.pt"), "--split", "val", "--rerank", "dba"])
    assert r.exit_code == 0, r.output
    emb, y = embed_checkpoint(tiny_run / "best.pt", split="val")
    ref = rerank_metrics(emb, y, method="dba")
    row = next(ln for ln in r.output.splitlines() if "val, dba" in ln)
    assert f"{100 * ref['map@r']:.2f}" in row and f"{100 * ref['recall@1']:.2f}" in row
    r = runner.invoke(app, ["eval", "--checkpoint", str(tiny_run / "best.pt"), "--rerank", "magic"])
    assert r.exit_code == 2 and "not one of" in r.output


def test_eval_index_reports_each_variant(tiny_run):
    r = runner.invoke(app, ["eval", "--checkpoint", str(tiny_run / "best.pt"), "--split", "val", "--index", "hnsw,float16,pca8"])
    assert r.exit_code == 0, r.output
    for name in ("flat (exact)", "hnsw", "float16", "pca8"):
        assert name in r.output
    r = runner.invoke(app, ["eval", "--checkpoint", str(tiny_run / "best.pt"), "--split", "val", "--index", "lsh"])
    assert r.exit_code == 2 and "not one of" in r.output


def test_cli_onnx_export_carries_the_preprocessing(tiny_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from deepmetric.export import read_onnx_metadata

    out = tmp_path / "m.onnx"
    r = runner.invoke(app, ["export", "--checkpoint", str(tiny_run / "best.pt"), "--format", "onnx", "--out", str(out)])
    assert r.exit_code == 0, r.output
    meta = read_onnx_metadata(out)
    assert meta["image_size"] == 8 and meta["channels"] == 1 and meta["image_mode"] == "L"
    assert len(meta["mean"]) == len(meta["std"]) == 1
