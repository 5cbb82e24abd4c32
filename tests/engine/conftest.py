"""A tiny Stable Diffusion pipeline with random weights, built from configs (no hub): the engine's fixture."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

TINY_T2I = {
    "vae": {"block_out_channels": [8, 8, 8], "norm_num_groups": 4, "mid_block_attention": False},
    "text_encoder": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
                     "max_position_embeddings": 16},
    "unet": {"block_out_channels": [16, 16, 16], "cross_attention": [True, False, False], "norm_num_groups": 8,
             "attention_head_dim": 2},
}


@pytest.fixture(scope="session")
def tiny_sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from difflab.train.t2i import new_text_encoder, new_unet, new_vae, save_pipeline
    from difflab.train.t2i_config import T2IConfig
    from difflab.train.tokenizer import build_tokenizer

    config = T2IConfig.from_dict(TINY_T2I)
    root = tmp_path_factory.mktemp("tiny-sd")
    torch.manual_seed(0)
    tokenizer = build_tokenizer(root / "tokenizer-src", config.text_encoder.max_position_embeddings)
    unet = new_unet(config)
    with torch.no_grad():  # diffusers zero-initialises nothing that matters here, but make outputs clearly non-trivial
        unet.conv_out.weight.normal_(0, 0.2)
    return save_pipeline(root / "pipeline", new_vae(config), new_text_encoder(config, tokenizer), tokenizer, unet, config)
