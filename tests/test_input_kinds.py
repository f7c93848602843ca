"""The input kinds predict scores (`pipeline.inputs.kinds`): the three it knows, and a new one that is
one class registered, which predict scores, names maps for and guards like the others."""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.core.config import ArchiveLimits
from pipeline.core.io import make_folders
from pipeline.inputs.collect import InputFile, collect
from pipeline.inputs.kinds import INPUT_KINDS, FileKind, Job, Scorer
from pipeline.predict import predict
from pipeline.stages.packaging import load_detector


class FakeKind(FileKind):
    """`*.fake` files, each holding its score as text; its map is that text again."""

    def claims(self, item: InputFile) -> bool:
        return item.file.suffix == ".fake"

    def jobs(self, scorer: Scorer, inputs: list[int]) -> list[Job]:
        return [Job(partial(self._score, scorer, order), [order]) for order in inputs]

    def _score(self, scorer: Scorer, order: int) -> list[dict]:
        item = scorer.files[order]
        score = float(item.file.read_text())  # not a number: a ValueError, which predict's guard reports
        if scorer.stems is not None:
            path = scorer.map_path(order, ".map.txt")
            make_folders(path.parent)
            path.write_text(str(score))
        return [
            {
                "order": order,
                "path": item.path,
                "score": score,
                "is_anomaly": bool(scorer.detector.is_anomaly(score)),
            }
        ]


def test_the_registry_holds_the_three_kinds_and_images_take_the_rest() -> None:
    assert INPUT_KINDS.names() == ["image", "series", "volume"]
    assert [name for name, kind in INPUT_KINDS.items() if kind.takes_the_rest] == ["image"]


def test_a_registered_kind_is_scored_by_predict_with_its_maps_and_guard(
    packaged_detector: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(INPUT_KINDS, "_entries", dict(INPUT_KINDS._entries))  # restored after the test
    INPUT_KINDS.register("fake")(FakeKind)
    detector = dataclasses.replace(load_detector(str(packaged_detector)), pixel_threshold=0.1)  # for masks
    inputs, maps = tmp_path / "in", tmp_path / "maps"
    (inputs / "sub").mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8)
    Image.fromarray(pixels).save(inputs / "a.png")
    (inputs / "sub" / "good.fake").write_text("0.5")
    (inputs / "bad.fake").write_text("not a number")

    files = collect(inputs, tmp_path / "unzipped", ArchiveLimits())
    rows = predict(detector, files, "test", maps=maps).set_index("path")
    good = rows.loc[(inputs / "sub" / "good.fake").as_posix()]
    assert good["score"] == 0.5 and good["is_anomaly"] and pd.isna(good["error"])
    assert (maps / "sub" / "good.fake.map.txt").read_text() == "0.5"
    bad = rows.loc[(inputs / "bad.fake").as_posix()]
    assert bad["error"].startswith("cannot be read: unexpected ValueError") and pd.isna(bad["score"])
    image = rows.loc[(inputs / "a.png").as_posix()]
    assert pd.isna(image["error"]) and not pd.isna(image["score"])  # the other kinds are as before
    assert (maps / "a.png.map.png").exists()
