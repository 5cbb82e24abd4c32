"""``python -m difflab``: the ``difflab`` command, for launchers that start modules (``accelerate launch -m
difflab ...``, ``torchrun -m difflab ...``)."""

from difflab.cli import app

app(prog_name="difflab")
