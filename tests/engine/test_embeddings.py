"""Textual inversion embeddings at generation time: difflab's image with an embedding equals plain diffusers'
``load_textual_inversion`` of the same file (tiny random SD and SDXL pipelines), multi-vector tokens expand in
difflab's own weighted encoding too, the embeddings folder is scanned by token, "TI hashes" and the record are
written and replayed, refusals name ``embeddings``, and the cached pipeline draws as before afterwards."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from difflab.engine.pipeline import PipelineCache, run
from difflab.engine.registry import resolve_model
from difflab.engine.request import build_request

from .family_fixtures import build_sdxl

CACHE = PipelineCache()
WIDTH = 16  # the tiny encoders' hidden size


def vectors(count: int, seed: int, width: int = WIDTH) -> torch.Tensor:
    return torch.randn(count, width, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("embeddings")
    multi = vectors(2, 1)
    made = {
        "diffusers": ({"mytok": multi}, "learned_embeds.safetensors"),  # diffusers' layout: {token: tensor}
        "a1111": ({"emb_params": multi}, "a1111.safetensors"),  # A1111's: the file's stem is the token
        "single": ({"emb_params": vectors(1, 2)}, "single.safetensors"),
        "sdxl": ({"clip_l": vectors(3, 3), "clip_g": vectors(3, 4)}, "xl-style.safetensors"),
        "narrow": ({"emb_params": vectors(1, 5, width=8)}, "narrow.safetensors"),
    }
    paths = {}
    for name, (state, file) in made.items():
        save_file(state, str(root / file))
        paths[name] = root / file
    torch.save({"string_to_param": {"*": multi}, "name": "ignored", "step": 10}, root / "a1111-pickle.pt")
    paths["pickle"] = root / "a1111-pickle.pt"
    folder = root / "folder"
    (folder / "styles").mkdir(parents=True)
    save_file({"emb_params": multi}, str(folder / "styles" / "mystyle.safetensors"))  # found in a subfolder
    paths["folder"] = folder
    return paths


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ti-sdxl")
    build_sdxl(root).save_pretrained(root / "pipeline", safe_serialization=True)
    return root / "pipeline"


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def draw(folder: Path, prompt: str, negative: str = "", size: int = 32, **fields) -> np.ndarray:
    request = build_request(prompt=prompt, negative_prompt=negative, model=str(folder), steps=3, guidance=4.0, seed=3,
                            width=size, height=size, **fields)
    return pixels(run(request, CACHE).images[0])


def reference(pipeline_class, folder: Path):
    pipe = pipeline_class.from_pretrained(str(folder), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference_draw(pipe, prompt: str, negative: str = "", size: int = 32) -> np.ndarray:
    return pixels(pipe(prompt, negative_prompt=negative or None, num_inference_steps=3, guidance_scale=4.0, width=size,
                       height=size, generator=[torch.Generator("cpu").manual_seed(3)]).images[0])


def test_sd_embedding_draws_what_diffusers_draws_with_it(tiny_sd_folder: Path, files) -> None:
    import diffusers

    plain = draw(tiny_sd_folder, "a red circle", "blue")
    ours = draw(tiny_sd_folder, "a red mytok circle", "blue", embeddings=[str(files["diffusers"])])
    # the same vectors as an A1111 file, used as "mytok"; the token in any case, as CLIP lower-cases
    a1111 = draw(tiny_sd_folder, "a red MyTok circle", "blue", embeddings=[f"{files['a1111']}:mytok"])
    in_negative = draw(tiny_sd_folder, "a red circle", "mytok", embeddings=[str(files["diffusers"])])
    pipe = reference(diffusers.StableDiffusionPipeline, tiny_sd_folder)
    pipe.load_textual_inversion(str(files["diffusers"]))  # two vectors: mytok, mytok_1
    theirs = reference_draw(pipe, "a red mytok circle", "blue")
    assert np.abs(ours - theirs).max() <= 1
    assert np.abs(a1111 - theirs).max() <= 1
    assert np.abs(in_negative - reference_draw(pipe, "a red circle", "mytok")).max() <= 1
    assert np.abs(ours - plain).max() > 5  # the embedding changed the picture
    assert np.array_equal(draw(tiny_sd_folder, "a red circle", "blue"), plain)  # and left nothing behind


def test_sdxl_embedding_draws_what_diffusers_draws_with_it(sdxl_folder: Path, files) -> None:
    import diffusers
    from safetensors.torch import load_file

    ours = draw(sdxl_folder, "a red xl-style circle", size=16, embeddings=[str(files["sdxl"])])
    pipe = reference(diffusers.StableDiffusionXLPipeline, sdxl_folder)
    state = load_file(str(files["sdxl"]))  # diffusers' documented SDXL recipe: clip_l and clip_g one by one
    pipe.load_textual_inversion(state["clip_l"], token="xl-style", text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(state["clip_g"], token="xl-style", text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    theirs = reference_draw(pipe, "a red xl-style circle", size=16)
    assert np.abs(ours - theirs).max() <= 1
    assert np.abs(ours - draw(sdxl_folder, "a red xl-style circle", size=16)).max() > 2
    with pytest.raises(ValueError, match="embeddings: 'mytok' .* is an SD 1.x/2.x embedding"):
        draw(sdxl_folder, "a mytok", size=16, embeddings=[str(files["diffusers"])])


def test_weighting_reaches_every_vector_of_the_token(tiny_sd_folder: Path, files) -> None:
    """"(MyTok:1.3)" weighs both vectors, as diffusers' pipeline would see "(mytok mytok_1:1.3)" after its own
    expansion; difflab's weighted encoding of the expanded text on diffusers' loaded pipeline is the reference."""
    import diffusers

    from difflab.engine.embeddings import applied_embeddings, resolve_embeddings
    from difflab.engine.prompt_weighting import chunk_tokens, encode_sd

    pipe = CACHE.get(resolve_model(str(tiny_sd_folder)))[0]
    request = build_request(prompt="a red (MyTok:1.3) circle", model=str(tiny_sd_folder),
                            embeddings=[str(files["diffusers"])])
    with applied_embeddings(pipe, "sd", resolve_embeddings(request)), torch.no_grad():
        chunk = chunk_tokens(pipe.tokenizer, request.prompt)[0]
        ids = pipe.tokenizer.convert_tokens_to_ids(["mytok", "mytok_1"])
        weighted = encode_sd(pipe, request.prompt, "")["prompt_embeds"]
        unweighted = encode_sd(pipe, "a red mytok circle", "")["prompt_embeds"]
    assert [chunk.weights[chunk.ids.index(i)] for i in ids] == [1.3, 1.3]
    ref = reference(diffusers.StableDiffusionPipeline, tiny_sd_folder)
    ref.load_textual_inversion(str(files["diffusers"]))
    with torch.no_grad():
        expected = encode_sd(ref, "a red (mytok mytok_1:1.3) circle", "")["prompt_embeds"]
    torch.testing.assert_close(weighted, expected, atol=1e-6, rtol=0)
    assert (weighted - unweighted).abs().max() > 1e-3
    assert not hasattr(pipe.tokenizer, "_difflab_embeddings")  # the cached pipeline has its own tokenizer back


def test_folder_scan_by_token_infotext_record_and_replay(tiny_sd_folder: Path, files, tmp_path: Path,
                                                         monkeypatch) -> None:
    from difflab.engine.metadata import read_png_metadata
    from difflab.engine.outputs import save_result
    from difflab.engine.replay import plan_replay, replay

    monkeypatch.setenv("DIFFLAB_EMBEDDINGS_DIR", str(files["folder"]))
    from_folder = draw(tiny_sd_folder, "a red mystyle circle")
    given = draw(tiny_sd_folder, "a red mystyle circle", embeddings=[f"{files['a1111']}:mystyle"])
    assert np.array_equal(from_folder, given)
    monkeypatch.setenv("DIFFLAB_EMBEDDINGS_DIR", str(tmp_path / "empty"))
    assert np.abs(draw(tiny_sd_folder, "a red mystyle circle") - from_folder).max() > 5  # plain words without it
    monkeypatch.setenv("DIFFLAB_EMBEDDINGS_DIR", str(files["folder"]))
    request = build_request(prompt="a red circle", negative_prompt="(mystyle:0.8)", model=str(tiny_sd_folder),
                            steps=2, width=32, height=32, embeddings=[f"{files['single']}"])
    path = save_result(run(request, CACHE), tmp_path / "out")[0]
    parameters, record = read_png_metadata(path)
    digests = {name: hashlib.sha256(files[name].read_bytes()).hexdigest() for name in ("single",)}
    folder_digest = hashlib.sha256((files["folder"] / "styles" / "mystyle.safetensors").read_bytes()).hexdigest()
    assert f'TI hashes: "single: {digests["single"][:12]}, mystyle: {folder_digest[:12]}"' in parameters
    assert [(e["token"], e["sha256"], e["from"]) for e in record["mode"]["embeddings"]] == [
        ("single", digests["single"], "request"), ("mystyle", folder_digest, "folder")]
    plan = plan_replay(path)
    assert plan.request.embeddings == (str(files["single"]),)
    assert replay(plan, CACHE).comparison.identical


@pytest.mark.parametrize("which,message", [
    ("narrow", r"embeddings: 'narrow' \(narrow.safetensors\) has 8-dimensional vectors; this model's text_encoder "
               r"takes 16"),
    ("existing", r"embeddings: the token 'red' .* is already a word of the model's tokenizer"),
    ("pickle", r"embeddings: .*a1111-pickle.pt' is a pickle"),
    ("sdxl", r"embeddings: 'xl-style' \(xl-style.safetensors\) was made for SDXL \(clip_l/clip_g\); this model is sd"),
    ("missing", r"embeddings: '.*nothere.safetensors': no such file"),
    ("unknown-name", r"embeddings: 'nosuch': not found in the embeddings folder"),
    ("twice", r"embeddings: two embeddings use the token 'mytok'"),
])
def test_refusals_name_embeddings(tiny_sd_folder: Path, files, tmp_path: Path, which: str, message: str) -> None:
    items = {"narrow": [str(files["narrow"])], "existing": [f"{files['single']}:red"], "pickle": [str(files["pickle"])],
             "sdxl": [str(files["sdxl"])], "missing": [str(tmp_path / "nothere.safetensors")],
             "unknown-name": ["nosuch"], "twice": [str(files["diffusers"]), f"{files['a1111']}:mytok"]}[which]
    with pytest.raises(ValueError, match=message):
        draw(tiny_sd_folder, "a red circle", embeddings=items)


def test_pickles_load_only_when_allowed_and_failures_leave_the_pipeline_clean(tiny_sd_folder: Path, files) -> None:
    plain = draw(tiny_sd_folder, "a red circle")
    allowed = draw(tiny_sd_folder, "a red circle a1111-pickle", embeddings=[str(files["pickle"])],
                   allow_unsafe_pickle=True)  # A1111 .pt: string_to_param {'*': ...}, token = the file's stem
    safe = draw(tiny_sd_folder, "a red circle a1111-pickle", embeddings=[f"{files['a1111']}:a1111-pickle"])
    assert np.array_equal(allowed, safe)
    pipe = CACHE.get(resolve_model(str(tiny_sd_folder)))[0]
    tokenizer, layer = pipe.tokenizer, pipe.text_encoder.get_input_embeddings()

    def fail(done: int, total: int) -> None:
        raise RuntimeError("stopped mid-draw")

    request = build_request(prompt="a mytok", model=str(tiny_sd_folder), steps=3, width=32, height=32,
                            embeddings=[str(files["diffusers"])])
    with pytest.raises(RuntimeError, match="stopped mid-draw"):
        run(request, CACHE, on_step=fail)
    assert pipe.tokenizer is tokenizer and pipe.text_encoder.get_input_embeddings() is layer
    assert np.array_equal(draw(tiny_sd_folder, "a red circle"), plain)


def test_flux_and_sd3_are_refused_by_name() -> None:
    from difflab.engine.embeddings import ResolvedEmbedding, check_family

    embedding = ResolvedEmbedding("mytok", Path("x.safetensors"), {None: vectors(1, 0)}, True)
    for family in ("flux", "sd3"):
        with pytest.raises(ValueError, match=f"embeddings: .* work on CLIP text encoders .*this model is {family}"):
            check_family(family, [embedding])


@pytest.mark.parametrize("spec,message", [("x.safetensors:", "the token after ':' is empty"),
                                          ("", "expected FILE"), ("x.safetensors:(tok)", None)])
def test_bad_specs_name_embeddings(spec: str, message: str) -> None:
    from difflab.engine.request import RequestError

    if message is None:  # not a token: the whole text is the file name, looked up when the request runs
        assert build_request(prompt="a circle", embeddings=[spec]).embeddings == (spec,)
        return
    with pytest.raises(RequestError, match=f"embeddings.*{message}"):
        build_request(prompt="a circle", embeddings=[spec])


def test_cli_refusal_is_one_line_exit_2_and_writes_nothing(tiny_sd_folder: Path, files, tmp_path: Path) -> None:
    from difflab.cli import app

    result = CliRunner().invoke(app, ["generate", "a red circle", "--model", str(tiny_sd_folder), "--steps", "2",
                                      "--width", "32", "--height", "32", "--embedding", str(files["narrow"]),
                                      "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "embeddings: 'narrow'" in result.output, result.output
    # the encoder's width is known once the model is loaded: its loading bars come first, the error is one line
    assert result.output.strip().splitlines()[-1].startswith("error: embeddings: 'narrow'")
    assert not (tmp_path / "out").exists()
