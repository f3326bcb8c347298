"""Facts read from a model's files: ``config.json`` dimensions and safetensors weight sizes.

The weight size comes from the safetensors headers (the byte ranges the tensors declare), not
from the file sizes on disk: the two agree for a real checkpoint, and the header is all that a
simulated repository carries, so the planner, the simulated engine and the real one all see the
real model's size through the same function.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FP16_BYTES = 2
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


class ModelFileError(ValueError):
    """A model file is missing a field gpumgr needs, or is not what it claims to be."""


@dataclass(frozen=True)
class ModelDims:
    """The dimensions that decide KV-cache size, from a Hugging Face ``config.json``."""

    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    hidden_size: int
    head_dim: int
    max_position_embeddings: int | None
    quantization_method: str | None

    def kv_bytes_per_token(self, dtype_bytes: int = FP16_BYTES) -> int:
        """2 (K and V) × layers × KV heads × head_dim × bytes per element."""
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * dtype_bytes


def _int_field(cfg: dict[str, Any], key: str) -> int:
    value = cfg.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ModelFileError(f"config.json: {key} must be a positive integer (got {value!r})")
    return value


def model_dims(cfg: dict[str, Any]) -> ModelDims:
    """Dimensions from a parsed ``config.json`` (``text_config`` is used for multimodal models).

    ``num_key_value_heads`` defaults to the attention heads (no grouped KV, as in Llama-1 style
    models such as deepseek-coder); ``head_dim`` defaults to hidden_size / attention heads.
    """
    if isinstance(cfg.get("text_config"), dict):
        cfg = {**cfg, **cfg["text_config"]}
    layers = _int_field(cfg, "num_hidden_layers")
    heads = _int_field(cfg, "num_attention_heads")
    hidden = _int_field(cfg, "hidden_size")
    kv_heads = _int_field(cfg, "num_key_value_heads") if "num_key_value_heads" in cfg else heads
    head_dim = _int_field(cfg, "head_dim") if cfg.get("head_dim") else hidden // heads
    qc = cfg.get("quantization_config")
    method = str(qc.get("quant_method")).lower() if isinstance(qc, dict) else None
    mpe = cfg.get("max_position_embeddings")
    return ModelDims(
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        hidden_size=hidden,
        head_dim=head_dim,
        max_position_embeddings=mpe if isinstance(mpe, int) else None,
        quantization_method=method,
    )


def read_model_dims(config_json: Path) -> ModelDims:
    """Dimensions from a ``config.json`` file (or a snapshot directory holding one)."""
    path = config_json / "config.json" if config_json.is_dir() else config_json
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise ModelFileError(f"{path}: must be a JSON object")
    return model_dims(cfg)


def safetensors_data_bytes(path: Path) -> int:
    """Bytes of tensor data one safetensors file declares (the end of its last byte range)."""
    with open(path, "rb") as f:
        raw_len = f.read(8)
        if len(raw_len) != 8:
            raise ModelFileError(f"{path}: too short to be a safetensors file")
        (header_len,) = struct.unpack("<Q", raw_len)
        if header_len > _MAX_HEADER_BYTES:
            raise ModelFileError(f"{path}: safetensors header of {header_len} bytes is implausible")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFileError(f"{path}: unreadable safetensors header ({exc})") from None
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2):
            raise ModelFileError(f"{path}: tensor {name!r} has no data_offsets")
        end = max(end, int(offsets[1]))
    return end


def weights_bytes(snapshot_dir: Path) -> int:
    """Total tensor bytes of every ``*.safetensors`` file in a snapshot directory."""
    files = sorted(snapshot_dir.glob("*.safetensors"))
    if not files:
        raise ModelFileError(f"{snapshot_dir}: no *.safetensors files")
    return sum(safetensors_data_bytes(f) for f in files)


def header_only_safetensors(data_bytes: int, tensor_name: str = "model.weights") -> bytes:
    """A safetensors header declaring ``data_bytes`` of U8 tensor data, without the data.

    Used by the simulated hub so that a small synthetic repository carries a real model's size.
    """
    header = json.dumps(
        {
            "__metadata__": {"format": "pt", "gpumgr_simulated": "header-only"},
            tensor_name: {"dtype": "U8", "shape": [data_bytes], "data_offsets": [0, data_bytes]},
        }
    ).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header
