"""What a client may name: models from the server's catalog, input files from its inputs folder, nothing else.

The CLI trusts its user with any path; a server must not. A request body is untrusted, so before it becomes a
GenerationRequest the server rewrites its names into paths it chose:

- ``model`` / ``refiner``: a preset (``tiny-shapes``, ``sdxl``, ...) or the name of a diffusers folder in the
  server's ``--models-dir``, nothing else. A path is refused, and so is a hub id ``owner/name``: the engine would
  take ``secret/tinycopy`` for a folder under the server's working directory when one exists (issue 19), and
  the answer must not depend on what exists on the server.
- ``init_image`` / ``mask``: a file name inside ``DATA_DIR/inputs`` (where ``POST /v1/inputs`` puts uploads).
- ``loras``: ``NAME[:WEIGHT]`` with NAME a LoRA in the server's LoRA folder (a file or a peft folder).
- ``allow_unsafe_pickle`` cannot be switched on through the server: a pickle can run code on it.
- any other string anywhere in the body that looks like a path leaving its folder (absolute, ``~``, ``..``) is
  refused too, so a field added to GenerationRequest later cannot open a hole by accident.

The other way round, no answer shows a server path: ``without_server_paths`` turns absolute paths in error
messages into their last component, and ``client_view`` gives a stored request back in the client's names.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Optional

MODEL_FIELDS = ("model", "refiner")
LORA_FIELD = "loras"
CONTROL_FIELD = "controls"
REFUSED_IF_TRUE = {"allow_unsafe_pickle": "is not allowed through the server (unpickling can run code)"}
INPUT_FILE_FIELDS = ("init_image", "mask")
# files the engine looks up by name in its own folders ($DIFFLAB_VAE_DIR, $DIFFLAB_UPSCALER_DIR,
# $DIFFLAB_EMBEDDINGS_DIR) and would otherwise also take as paths: through the server, names only
NAME_ONLY_FIELDS = ("vae", "hires_upscaler", "embeddings")
TEXT_FIELDS = ("prompt", "negative_prompt", "scheduler", "long_prompt")  # free text, never opened as files
_FOLDER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}$")
# an absolute POSIX path (/a/b), a home one (~/a) or a Windows one (C:\a); whether the first component is an entry
# of the file system's root decides whether it is a path of this machine (see _last_component)
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~/-])(?:~|(?:[A-Za-z]:)?)((?:[/\\]+[^\s'\"/\\:,;()\[\]{}<>|]+)+)[/\\]?")
_MAX_PATH_LIKE = 1024  # longer strings are data (base64 images), not paths


class FieldError(ValueError):
    """A bad value in one named field of a request body."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def escapes_folder(value: str) -> bool:
    """True for a string that, used as a path, could leave the folder it is joined to."""
    if not value or len(value) > _MAX_PATH_LIKE or "\n" in value:
        return False
    if value.startswith("~") or "\x00" in value:
        return True
    for pure in (PurePosixPath(value), PureWindowsPath(value)):
        if pure.is_absolute() or pure.anchor or ".." in pure.parts:
            return True
    return False


@dataclass(frozen=True)
class Catalog:
    models_dir: Optional[Path]
    inputs_dir: Path
    loras_dir: Optional[Path] = None

    def loras(self) -> dict[str, Path]:
        """LoRAs in ``loras_dir`` by name: ``x.safetensors`` files (name ``x``) and peft/diffusers folders."""
        if self.loras_dir is None or not self.loras_dir.is_dir():
            return {}
        found = {}
        for path in sorted(self.loras_dir.iterdir()):
            name = path.stem if path.suffix == ".safetensors" else path.name
            if (path.is_dir() or path.suffix == ".safetensors") and _FOLDER_NAME.match(name):
                if path.resolve().is_relative_to(self.loras_dir.resolve()):  # no symlinks out of the folder
                    found[name] = path
        return found

    def lora_spec(self, field: str, spec: str) -> str:
        """``NAME[:WEIGHT]`` -> ``/server/path[:WEIGHT]`` for a LoRA in the server's folder."""
        name, sep, weight = spec.strip().rpartition(":")
        if not sep or not _is_number(weight):
            name, weight = spec.strip(), ""
        loras = self.loras()
        if name not in loras:
            choices = ", ".join(loras) or "none (the server's LoRA folder is empty)"
            raise FieldError(field, f"must be NAME[:WEIGHT] with NAME one of the server's LoRAs: {choices}; "
                                    f"got {spec[:100]!r}")
        return str(loras[name].resolve()) + (f":{weight}" if weight else "")

    def folder_models(self) -> dict[str, Path]:
        """Diffusers folders in ``models_dir``, by folder name."""
        if self.models_dir is None or not self.models_dir.is_dir():
            return {}
        return {path.name: path for path in sorted(self.models_dir.iterdir())
                if (path / "model_index.json").is_file() and _FOLDER_NAME.match(path.name)}

    def model_path(self, field: str, name: str) -> str:
        """The engine's model string for a client's model name; FieldError naming ``field`` otherwise."""
        from difflab.engine.registry import PRESETS

        if name in PRESETS:
            return name
        folders = self.folder_models()
        if name in folders:
            return str(folders[name].resolve())
        # the same answer whatever the name is (a path, a hub id, a folder that exists somewhere or not)
        choices = ", ".join([*PRESETS, *folders])
        raise FieldError(field, f"must be a preset or a model in the server's models folder ({choices}); "
                                f"got {name[:100]!r}")

    def input_path(self, field: str, name: str) -> str:
        if escapes_folder(name) or not _FOLDER_NAME.match(name):
            raise FieldError(field, f"must be a file name from POST /v1/inputs (no folders); got {name[:100]!r}")
        path = self.inputs_dir / name
        if not path.is_file():
            raise FieldError(field, f"no uploaded input named {name!r} (upload it with POST /v1/inputs)")
        return str(path.resolve())

    def control_spec(self, field: str, item: Any) -> Any:
        """A ControlNet's image must be an uploaded input, and its model a registry name or a cached hub id: a
        relative path would otherwise resolve against the server's working folder."""
        from difflab.engine.control import parse_control

        if isinstance(item, str):
            try:
                item = parse_control(item)
            except ValueError as error:
                raise FieldError(field, str(error)) from None
        if not isinstance(item, dict):
            return item  # the request model reports the type error
        item = dict(item)
        if isinstance(item.get("image"), str):
            item["image"] = self.input_path(f"{field}.image", item["image"])
        model = item.get("model")
        if isinstance(model, str) and not (_FOLDER_NAME.match(model) or _HUB_ID.match(model)) or (
                isinstance(model, str) and (escapes_folder(model) or ".." in model or Path(model).exists())):
            raise FieldError(f"{field}.model", f"must be a ControlNet kind name or a cached hub id; got {model[:100]!r}")
        return item

    def rewrite(self, body: dict[str, Any]) -> dict[str, Any]:
        """The body with client names replaced by server paths; FieldError for anything outside the catalog."""
        if not isinstance(body, dict):
            raise FieldError("body", "must be a JSON object")
        body = dict(body)
        for field in MODEL_FIELDS:
            if isinstance(body.get(field), str):
                body[field] = self.model_path(field, body[field])
        for field in INPUT_FILE_FIELDS:
            if isinstance(body.get(field), str):
                body[field] = self.input_path(field, body[field])
        for field, message in REFUSED_IF_TRUE.items():
            if body.get(field):
                raise FieldError(field, message)
        for field in NAME_ONLY_FIELDS:
            values = body.get(field)
            for index, value in enumerate(values if isinstance(values, (list, tuple)) else [values]):
                if isinstance(value, str) and not _is_bare_name(value.rpartition(":")[0] or value
                                                                if field == "embeddings" else value):
                    where = f"{field}.{index}" if isinstance(values, (list, tuple)) else field
                    raise FieldError(where, "give a name from the server's folder, not a path; "
                                            f"got {value[:100]!r}")
        loras = body.get(LORA_FIELD)
        if isinstance(loras, str):
            loras = [part for part in loras.split(",") if part.strip()]
        if isinstance(loras, (list, tuple)):
            body[LORA_FIELD] = [self.lora_spec(f"{LORA_FIELD}.{index}", str(item)) for index, item in enumerate(loras)]
        controls = body.get(CONTROL_FIELD)
        if isinstance(controls, (str, dict)):
            controls = [controls]
        if isinstance(controls, (list, tuple)):
            body[CONTROL_FIELD] = [self.control_spec(f"{CONTROL_FIELD}.{index}", item)
                                   for index, item in enumerate(controls)]
        for field, value in body.items():
            if field not in (*MODEL_FIELDS, *INPUT_FILE_FIELDS, *TEXT_FIELDS, LORA_FIELD, CONTROL_FIELD):
                _refuse_paths(field, value)
        return body

    def client_view(self, body: dict[str, Any]) -> dict[str, Any]:
        """A request as stored (with the server's paths) as a client sees it: models, inputs and LoRAs by name."""
        view, models = {}, {str(path.resolve()): name for name, path in self.folder_models().items()}
        for field, value in body.items():
            if field in TEXT_FIELDS:
                view[field] = value
            elif field in MODEL_FIELDS and value in models:  # a folder may be a symlink: not its target's name
                view[field] = models[value]
            elif field == LORA_FIELD and isinstance(value, (list, tuple)):
                view[field] = [_lora_name(str(item)) for item in value]
            else:
                view[field] = without_server_paths(value)
        return view


def without_server_paths(value: Any) -> Any:
    """``value`` (a string, or lists/dicts of them) with every absolute path of this machine replaced by its last
    component: ``'/srv/difflab/data/inputs/ab12.png' is not ...`` -> ``'ab12.png' is not ...``.

    A path is recognised by its first component being an entry of the file system's root (``/tmp``, ``/home``,
    ...), so API paths in messages (``POST /v1/inputs``) stay as they are."""
    if isinstance(value, str):
        return _ABSOLUTE_PATH.sub(_last_component, value) if ("/" in value or "\\" in value) else value
    if isinstance(value, dict):
        return {key: without_server_paths(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_server_paths(item) for item in value]
    return value


def _last_component(match: re.Match) -> str:
    text = match.group(0)
    parts = [part for part in re.split(r"[/\\]", match.group(1)) if part]
    windows = len(text) > 1 and text[1] == ":"
    if not parts or not (windows or text.startswith("~") or parts[0] in _root_entries()):
        return text
    return parts[-1]


@lru_cache(maxsize=1)
def _root_entries() -> frozenset[str]:
    try:
        return frozenset(os.listdir("/"))
    except OSError:
        return frozenset()


def _lora_name(spec: str) -> str:
    """``/server/loras/x.safetensors:0.8`` -> ``x:0.8``, the form a client sends."""
    path, sep, weight = spec.rpartition(":")
    if not sep or not _is_number(weight):
        path, weight = spec, ""
    name = PurePosixPath(without_server_paths(path)).name
    name = name.removesuffix(".safetensors")
    return f"{name}:{weight}" if weight else name


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _is_bare_name(value: str) -> bool:
    """A name, never a path: no folder separators, no leading '.' or '~'."""
    return bool(value) and not any(c in value for c in "/\\\x00") and not value.startswith((".", "~"))


def _refuse_paths(field: str, value: Any) -> None:
    if isinstance(value, str) and escapes_folder(value):
        raise FieldError(field, f"paths outside the server's folders are not allowed; got {value[:100]!r}")
    if isinstance(value, dict):
        for key, item in value.items():
            _refuse_paths(f"{field}.{key}", item)
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _refuse_paths(f"{field}.{index}", item)
