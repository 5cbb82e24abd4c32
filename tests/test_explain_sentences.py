"""Every sentence ``difflab explain`` prints about a result is made from the numbers beside it. The cases here are
the numbers the old fixed sentences contradicted (guidance 15 "still on-prompt" at 62.5%) and both sides of every
comparison a topic makes, so a sentence cannot say more, or other, than its table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from difflab.cli import app
from difflab.eval.t2i import SweepRow
from tests.engine.conftest import tiny_sd_folder  # noqa: F401  (the fixture, re-exported here)

runner = CliRunner()


def _rows(*values: tuple[float, float, float]) -> list[SweepRow]:
    return [SweepRow(guidance=g, shape_and_color=a, color=1.0, shape=a, pixel_diversity=d, attribute_entropy=1.0)
            for g, a, d in values]


def test_guidance_sentence_follows_the_table_it_was_wrong_about() -> None:
    from difflab.explain.guidance import sentences

    # the run of issue 23: 87.5%, 87.5%, 100%, 62.5% for s = 1, 3, 7.5, 15
    text = sentences(_rows((1, 0.875, 0.225), (3, 0.875, 0.291), (7.5, 1.0, 0.172), (15, 0.625, 0.183)), 8)
    assert "still on-prompt" not in text and "often off-prompt" not in text
    assert "At s = 1, 87.5% come out with the asked shape and colour" in text
    assert "highest, 100.0%, at s = 7.5." in text
    assert "At s = 15 it is 62.5%, lower than at the best scale" in text
    assert "one image is 12.5%" in text
    assert "differ most at s = 3 (pixel diversity 0.291) and least at s = 7.5 (0.172)" in text
    assert "At s = 15 they differ less than at s = 1 (0.183 against 0.225): stronger guidance pulls" in text


def test_guidance_sentence_when_the_largest_scale_is_best() -> None:
    from difflab.explain.guidance import sentences

    text = sentences(_rows((1, 0.25, 0.30), (7.5, 0.75, 0.20), (15, 0.75, 0.10)), 4)
    assert "highest, 75.0%, at s = 7.5 and 15." in text and "lower than" not in text
    assert "Raising s from 1 to 15 made the images follow the prompt more often" in text
    assert "pulls the seeds towards the same picture" in text  # most varied at 1, least at 15
    text = sentences(_rows((1, 0.5, 0.10), (15, 0.5, 0.20)), 4)
    assert "At s = 15 they differ no less than at s = 1 (0.200 against 0.100)" in text and "pulls" not in text


def test_forward_sentence_says_whether_the_error_grows() -> None:
    from difflab.explain.forward_process import sentences

    rising = sentences([(0, 1.0, 0.004), (100, 0.895, 0.076), (999, 0.0, 0.386)])
    assert "off by 0.076" in rising and "by 0.386" in rising and "grows with every step" in rising
    bumpy = sentences([(0, 1.0, 0.004), (100, 0.895, 0.2), (500, 0.078, 0.1), (999, 0.0, 0.386)])
    assert "grows with every step" not in bumpy and "smallest at t = 0 (0.004)" in bumpy


def test_schedulers_sentence_names_the_winner_it_measured() -> None:
    from types import SimpleNamespace

    from difflab.explain.schedulers import sentences

    def result(fd: dict[tuple[str, int], float]):
        cells = [SimpleNamespace(sampler=s, steps=n, scores=SimpleNamespace(frechet=v)) for (s, n), v in fd.items()]
        return SimpleNamespace(steps=[5, 20], cells=cells, floor=SimpleNamespace(frechet=180.0),
                               cell=lambda s, n: next(c for c in cells if (c.sampler, c.steps) == (s, n)))

    good = sentences(result({("ddpm", 5): 231.3, ("ddim", 5): 241.1, ("dpmpp-2m", 5): 202.3, ("ddpm", 20): 172.8}))
    assert "At 5 steps dpmpp-2m (FD 202.3) beats DDPM (FD 231.3)" in good
    assert "best cell is ddpm at 20 steps (FD 172.8)" in good
    bad = sentences(result({("ddpm", 5): 150.0, ("ddim", 5): 241.1, ("dpmpp-2m", 5): 202.3}))
    assert "does worse than DDPM" in bad and "smarter step" not in bad


def test_controlnet_sentence_compares_with_and_without() -> None:
    from difflab.explain.controlnet import sentences

    assert "edge F1 0.600 against 0.200 without" in sentences((0.0, 1.0), (0.2, 0.6))
    assert "control did not help" in sentences((0.0, 1.0), (0.3, 0.25))


def test_clip_skip_and_vae_sentences_follow_their_rows() -> None:
    from difflab.explain.clip_skip import ClipSkipRow, sentences as clip_sentences
    from difflab.explain.vae import SizeRow, size_sentences

    rows = [ClipSkipRow(1, 1.0, 0.0, 0.875), ClipSkipRow(2, 0.9, 0.05, 0.75), ClipSkipRow(3, 0.7, 0.09, 0.5)]
    text = clip_sentences(rows, 8)
    assert "falls from 87.5% at clip skip 1 to 50.0% at 3" in text and "keep clip skip 1" in text
    assert "Each layer skipped moves the images further" in text
    text = clip_sentences([ClipSkipRow(1, 1.0, 0.0, 0.5), ClipSkipRow(2, 0.9, 0.05, 0.75)], 8)
    assert "rises from 50.0%" in text and "keep clip skip 1" not in text
    text = size_sentences([SizeRow("large", 0.021, 4, 4, 4), SizeRow("small", 0.035, 4, 2, 4)])
    assert "Small shapes lose more" in text and "(RMS 0.035 against 0.021)" in text
    assert "reads the shape of 2 of 4 decoded small pictures, 2 fewer" in text
    assert "lose less" in size_sentences([SizeRow("large", 0.021, 4, 4, 4), SizeRow("small", 0.017, 4, 4, 4)])


def _table(output: str) -> dict[float, str]:
    """guidance -> its shape+colour cell, from the printed table."""
    rows = {}
    for line in output.splitlines():
        cells = line.split()
        if len(cells) == 6 and cells[1].endswith("%") and re.fullmatch(r"[\d.]+", cells[0]):
            rows[float(cells[0])] = cells[1]
    return rows


def test_explain_guidance_prose_quotes_its_own_table(tiny_sd_folder: Path, tmp_path: Path,  # noqa: F811
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole topic on a tiny model (fewer scales and prompts, to stay fast): every adherence figure the prose
    states is the table's for the scale it names, the highest scale's included (the old fixed sentence quoted
    none and called 15 on-prompt whatever the table said)."""
    from difflab.explain import guidance

    monkeypatch.setattr(guidance, "SCALES", (1.0, 15.0))
    monkeypatch.setattr(guidance, "PROMPTS", ("a red circle", "a blue square"))
    result = runner.invoke(app, ["explain", "guidance", "--model", str(tiny_sd_folder), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    table = _table(result.output)
    assert sorted(table) == [1.0, 15.0]
    prose = " ".join(result.output.splitlines())  # sentences are wrapped: rejoin them
    quoted = re.findall(r"At s = ([\d.]+), ([\d.]+%)", prose) + re.findall(r"At s = ([\d.]+) it is ([\d.]+%)", prose)
    assert quoted, prose
    for scale, share in quoted:
        assert table[float(scale)] == share, (scale, share, table)
    best = re.search(r"highest, ([\d.]+%), at s = ([\d. and]+)\.", prose)
    assert best and best.group(1) == max(table.values(), key=lambda s: float(s[:-1]))
    assert "15" in best.group(2) or f"At s = 15 it is {table[15.0]}" in prose
    assert Path(result.output.strip().splitlines()[-1]).is_file()
