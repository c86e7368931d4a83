"""A tiny Mimi for moshi, built at test time: the transformers twin's codec weights written as moshi's own file.

moshi's `loaders.get_mimi` builds Mimi from a config dict; the tiny one's is saved beside the weights as
mimi_config.json (moshi's `mimi_config` layout), so the users' loader reads both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_moshi_mimi(codec_model: Any, directory: Path) -> Path:
    """Save transformers' MimiModel `codec_model` as moshi's Mimi weights (+ mimi_config.json) in `directory`."""
    from moshi.models import loaders
    from safetensors.torch import save_file

    from worker.models.moshi_codec import MIMI_CONFIG_NAME, mimi_config_from_transformers, moshi_state_from_transformers

    config = mimi_config_from_transformers(codec_model.config)
    names = list(loaders.get_mimi(None, config, num_codebooks=codec_model.config.num_quantizers).state_dict())
    state = moshi_state_from_transformers(codec_model.state_dict(), codec_model.config, names)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MIMI_CONFIG_NAME).write_text(json.dumps(config))
    path = directory / loaders.MIMI_NAME
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    return path
