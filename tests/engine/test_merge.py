"""``difflab merge``: A1111's weighted sum and add difference, checked tensor by tensor against the formulas on the
weights plain diffusers loads, for folders, single files and a mix; the recipe in A1111's metadata keys."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from difflab.cli import app

runner = CliRunner()


def perturbed_copy(folder: Path, out: Path, seed: int, scale: float = 0.05) -> Path:
    """A copy of ``folder`` with every float weight moved by seeded noise: a 'fine-tune' of it."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(folder, out)
    generator = torch.Generator().manual_seed(seed)
    for file in sorted(out.rglob("*.safetensors")):
        tensors = load_file(str(file))
        moved = {k: (v + scale * torch.randn(v.shape, generator=generator)).to(v.dtype) if v.is_floating_point()
                 else v for k, v in tensors.items()}
        save_file(moved, str(file), metadata={"format": "pt"})
    return out


def weights(pipeline) -> dict[str, torch.Tensor]:
    """Every parameter of the U-Net, text encoder and VAE, as plain diffusers loaded them."""
    return {f"{name}.{key}": value.detach().clone() for name in ("unet", "text_encoder", "vae")
            for key, value in getattr(pipeline, name).state_dict().items()}


def load_folder(path: Path) -> dict[str, torch.Tensor]:
    import diffusers

    return weights(diffusers.StableDiffusionPipeline.from_pretrained(str(path), local_files_only=True))


def load_file(path: Path, config: Path) -> dict[str, torch.Tensor]:
    import diffusers

    return weights(diffusers.StableDiffusionPipeline.from_single_file(str(path), config=str(config),
                                                                     local_files_only=True))


@pytest.fixture(scope="module")
def models(tiny_sd_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("merge-models")
    return {"A": tiny_sd_folder, "B": perturbed_copy(tiny_sd_folder, root / "B", seed=1),
            "D": perturbed_copy(tiny_sd_folder, root / "D", seed=2)}


def assert_formula(merged: dict, expected: dict, atol: float = 1e-6) -> None:
    assert merged.keys() == expected.keys()
    worst = max((merged[k].float() - expected[k].float()).abs().max().item() for k in merged
                if merged[k].is_floating_point())
    assert worst <= atol, worst


def test_weighted_sum_of_folders_is_the_formula_and_loads_in_plain_diffusers(models, tmp_path: Path) -> None:
    from difflab.engine.merge import MergeRecipe, merge_models

    a, b = load_folder(models["A"]), load_folder(models["B"])
    assert max((a[k] - b[k]).abs().max().item() for k in a if a[k].is_floating_point()) > 0.01  # they differ
    for alpha in (0.0, 0.3, 1.0):
        out = merge_models(MergeRecipe("weighted-sum", alpha, (models["A"], models["B"])), tmp_path / f"m{alpha}")
        merged = load_folder(out)
        expected = {k: (1 - alpha) * a[k] + alpha * b[k] if a[k].is_floating_point() else a[k] for k in a}
        assert_formula(merged, expected)
        if alpha in (0.0, 1.0):  # the endpoints are the inputs, bit for bit
            source = a if alpha == 0.0 else b
            assert all(torch.equal(merged[k], source[k]) for k in merged)


def test_add_difference_adds_what_b_learned_from_c(models, tmp_path: Path) -> None:
    from difflab.engine.merge import MergeRecipe, merge_models

    d, b, a = load_folder(models["D"]), load_folder(models["B"]), load_folder(models["A"])
    out = merge_models(MergeRecipe("add-difference", 0.5, (models["D"], models["B"], models["A"])), tmp_path / "m")
    merged = load_folder(out)
    assert_formula(merged, {k: d[k] + 0.5 * (b[k] - a[k]) if d[k].is_floating_point() else d[k] for k in d})


def test_single_files_and_a_mix_merge_into_one_file_with_a1111s_recipe(models, tmp_path: Path) -> None:
    from difflab.engine.merge import MergeRecipe, merge_models
    from difflab.engine.single_file import read_header, save_single_file

    file_a = save_single_file(models["A"], tmp_path / "a.safetensors")
    file_b = save_single_file(models["B"], tmp_path / "b.safetensors")
    a, b = load_folder(models["A"]), load_folder(models["B"])
    expected = {k: 0.25 * a[k] + 0.75 * b[k] if a[k].is_floating_point() else a[k] for k in a}
    for name, inputs in (("files", (file_a, file_b)), ("mixed", (file_a, models["B"]))):
        out = merge_models(MergeRecipe("weighted-sum", 0.75, inputs), tmp_path / f"{name}.safetensors")
        assert_formula(load_file(out, models["A"]), expected)
    _, metadata = read_header(tmp_path / "files.safetensors")
    recipe = json.loads(metadata["sd_merge_recipe"])
    sha = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (file_a, file_b)}
    assert recipe["interp_method"] == "Weighted sum" and recipe["multiplier"] == 0.75
    assert (recipe["primary_model_hash"], recipe["secondary_model_hash"]) == (sha[file_a], sha[file_b])
    assert json.loads(metadata["sd_merge_models"])[sha[file_b]]["name"] == "b.safetensors"
    assert "difflab.configs" in metadata  # A's embedded configs: the merged file loads offline in difflab too


def test_the_cli_merges_and_refuses_bad_input_naming_it(models, tiny_sd_folder: Path, tmp_path: Path) -> None:
    from difflab.engine.merge import MergeRecipe, merge_models

    out = tmp_path / "merged"
    result = runner.invoke(app, ["merge", str(models["A"]), str(models["B"]), "--alpha", "0.5", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "model_index.json").is_file() and str(out) in result.output
    other = tmp_path / "other-arch"  # a U-Net of another width: not the same architecture
    shutil.copytree(tiny_sd_folder, other)
    from safetensors.torch import load_file, save_file

    unet_file = next((other / "unet").glob("*.safetensors"))
    tensors = load_file(str(unet_file))
    key = sorted(tensors)[0]
    tensors[key] = torch.zeros(*tensors[key].shape[:-1], tensors[key].shape[-1] + 1)
    save_file(tensors, str(unet_file))
    cases = [
        ([str(models["A"]), str(models["B"]), "--alpha", "1.5"], "alpha must be a number in [0, 1]"),
        ([str(models["A"]), str(models["B"]), "--mode", "average"], "mode must be one of"),
        ([str(models["A"]), str(models["B"]), "--mode", "add-difference"], "models: add-difference takes A, B and C"),
        ([str(models["A"]), str(models["B"]), str(models["D"])], "models: weighted-sum takes A and B"),
        ([str(models["A"]), str(tmp_path / "nothere")], "B: "),
        ([str(models["A"]), str(other)], f"tensor 'unet/{key}'"),
        ([str(models["A"]), str(models["B"]), "-o", str(out)], "--out"),
    ]
    for arguments, message in cases:
        target = tmp_path / "refused"
        if "-o" not in arguments:
            arguments = [*arguments, "-o", str(target)]
        result = runner.invoke(app, ["merge", *arguments])
        assert result.exit_code == 2, (arguments, result.output)
        assert message in result.output, (message, result.output)
        assert not target.exists()
    with pytest.raises(ValueError, match="already exists"):
        merge_models(MergeRecipe("weighted-sum", 0.5, (models["A"], models["B"])), out)
