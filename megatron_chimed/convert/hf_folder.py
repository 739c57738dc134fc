"""Read a HF LLaMA-family folder one tensor at a time, after checking it completely.

Tensors are read with plain file reads at their byte ranges (from the safetensors header, or
found in a `.bin` shard's zip records: `_bin_infos`), straight into the caller's (reused)
tensor: no mapping, so no file pages counted in RSS, and no fresh memory to fault in. A `.bin`
tensor without a known range is copied out of `torch.load(weights_only=True, mmap=True)`, kept
mapped only meanwhile, because pages of a file mapping that stay mapped count in the process's
RSS: a 26 GB model read through long-lived mappings would look (and, under memory pressure,
behave) like 26 GB of RAM.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from megatron_chimed.config.schema import ModelConfig
from megatron_chimed.convert.buffers import read_exact
from megatron_chimed.convert.mapping import ModelMapping, mapping_for
from megatron_chimed.convert.zip_records import record_data_start, storage_records
from megatron_chimed.data.jsonio import read_json

INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
# HF config.json key -> ModelConfig field
CONFIG_KEYS = {
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_attention_heads",
    "intermediate_size": "ffn_hidden_size",
    "vocab_size": "vocab_size",
    "rms_norm_eps": "norm_epsilon",
    "rope_theta": "rotary_base",
    "max_position_embeddings": "max_position_embeddings",
}
DEFAULT_ROPE_THETA = 10000.0


def model_config_from_hf(hf_config: dict, where: str) -> ModelConfig:
    """ModelConfig from a HF LLaMA config.json, naming the key that is missing."""
    fields = {}
    for hf_key, field in CONFIG_KEYS.items():
        if hf_key == "rope_theta":
            value = hf_config.get(hf_key) or hf_config.get("rope_parameters", {}).get(
                "rope_theta", DEFAULT_ROPE_THETA
            )
        elif hf_key not in hf_config:
            raise ValueError(f"{where}: key {hf_key!r} missing")
        else:
            value = hf_config[hf_key]
        fields[field] = value
    fields["num_query_groups"] = hf_config.get("num_key_value_heads", fields["num_attention_heads"])
    fields["untie_embeddings_and_output_weights"] = not hf_config.get("tie_word_embeddings", False)
    fields["init_method_std"] = hf_config.get("initializer_range", 0.02)
    fields["name"] = hf_config.get("_name_or_path") or "hf"
    return ModelConfig(**fields)


def hf_config(
    model: ModelConfig, dtype: str, architecture: str = "LlamaForCausalLM", **extra: object
) -> dict:
    """A HF LLaMA config.json for `model`: the inverse of `model_config_from_hf`, with Ziya's
    special token ids (<unk> 0 pads, <s> 1, </s> 2)."""
    values = {hf_key: getattr(model, field) for hf_key, field in CONFIG_KEYS.items()}
    return {
        "architectures": [architecture],
        "model_type": "llama",
        **values,
        "num_key_value_heads": model.num_query_groups,
        "hidden_act": "silu",
        "tie_word_embeddings": not model.untie_embeddings_and_output_weights,
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": model.init_method_std,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "torch_dtype": dtype,
        **extra,
    }


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int | None = None  # where the bytes start in the file, if known


class HFCheckpoint:
    """A HF folder: config, mapping table, and where each tensor lives (shapes checked)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise FileNotFoundError(f"{self.directory}: no such HF model folder")
        config_path = self.directory / "config.json"
        self.hf_config = read_json(config_path)
        architectures = self.hf_config.get("architectures") or ["<none>"]
        self.mapping: ModelMapping = mapping_for(architectures[0], f"{config_path}")
        self.model = model_config_from_hf(self.hf_config, str(config_path))
        self.tensors = self._tensor_infos()
        self._check_keys_and_shapes()

    def _weight_files(self) -> dict[str, Path] | list[Path]:
        for name in INDEX_FILES:
            index_path = self.directory / name
            if index_path.is_file():
                weight_map = read_json(index_path).get("weight_map")
                if not isinstance(weight_map, dict):
                    raise ValueError(f"{index_path}: key 'weight_map' missing or not an object")
                for file in sorted(set(weight_map.values())):
                    if not (self.directory / file).is_file():
                        raise FileNotFoundError(
                            f"{index_path} lists shard {file!r}, which is missing from "
                            f"{self.directory}"
                        )
                return {key: self.directory / file for key, file in weight_map.items()}
        singles = [self.directory / n for n in SINGLE_FILES if (self.directory / n).is_file()]
        if not singles:
            raise FileNotFoundError(
                f"{self.directory}: no weights ({' / '.join(INDEX_FILES + SINGLE_FILES)})"
            )
        return singles[:1]

    def _tensor_infos(self) -> dict[str, TensorInfo]:
        """Shapes and dtypes of every tensor, from headers only (no tensor data is read)."""
        files = self._weight_files()
        paths = sorted(set(files.values())) if isinstance(files, dict) else files
        infos: dict[str, TensorInfo] = {}
        for path in paths:
            if path.suffix == ".safetensors":
                infos.update(_safetensors_infos(path))
            else:
                infos.update(_bin_infos(path))
        if isinstance(files, dict):
            for key, path in files.items():
                if key not in infos:
                    raise KeyError(f"{path}: tensor {key!r} listed in the index is not in it")
        return infos

    def _check_keys_and_shapes(self) -> None:
        expected: dict[str, tuple[int, ...]] = {}
        for entry, layer in self.mapping.entries(self.model):
            names = self.mapping.hf_names(entry, layer)
            expected.update(zip(names, entry.hf_shapes(self.model)))
        for key in self.tensors:
            if key not in expected and not key.endswith("rotary_emb.inv_freq"):
                raise KeyError(
                    f"{self.tensors[key].file}: unknown tensor {key!r} (not in the "
                    f"{self.mapping.architecture} mapping for {self.model.num_layers} layers)"
                )
        for key, shape in expected.items():
            if key not in self.tensors:
                raise KeyError(f"{self.directory}: tensor {key!r} missing from the weights")
            info = self.tensors[key]
            if info.shape != shape:
                raise ValueError(
                    f"{info.file}: tensor {key!r} has shape {list(info.shape)} but "
                    f"{self.directory / 'config.json'} implies {list(shape)}"
                )

    @property
    def dtype(self) -> torch.dtype:
        """The checkpoint's dtype: that of its embedding (norms may be kept in fp32)."""
        entry = self.mapping.before_layers[0]
        return self.tensors[self.mapping.hf_names(entry, None)[0]].dtype

    def read(self, key: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """One tensor, copied out of its shard (into `out` if given: contiguous, same shape and
        dtype), the shard closed again before returning."""
        info = self.tensors[key]
        if out is None:
            out = torch.empty(info.shape, dtype=info.dtype)
        if info.offset is not None:
            view = out.reshape(-1).view(torch.uint8).numpy().data
            with open(info.file, "rb", buffering=0) as f:
                read_exact(f, info.offset, view, f" in tensor {key!r}")
            return out
        shard = torch.load(info.file, map_location="cpu", weights_only=True, mmap=True)
        return out.copy_(shard[key])

    def nbytes(self, key: str) -> int:
        info = self.tensors[key]
        return info.dtype.itemsize * int(torch.Size(info.shape).numel())


def _safetensors_infos(path: Path) -> dict[str, TensorInfo]:
    """Shapes, dtypes and byte offsets from a safetensors header: an 8-byte little-endian
    length, then that many bytes of JSON; tensor data follows, at offsets relative to it."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", head)
        size = os.fstat(f.fileno()).st_size
        if length > size - 8:  # a damaged file would make the read below try to allocate it
            raise ValueError(
                f"{path}: not a safetensors file (its header claims {length} bytes; the file "
                f"has {size})"
            )
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not a safetensors file (bad header: {err})") from None
    header.pop("__metadata__", None)
    infos = {}
    for key, meta in header.items():
        if meta["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {key!r} has unsupported dtype {meta['dtype']}")
        infos[key] = TensorInfo(
            path,
            tuple(meta["shape"]),
            _SAFETENSORS_DTYPES[meta["dtype"]],
            8 + length + meta["data_offsets"][0],
        )
    return infos


def _bin_infos(path: Path) -> dict[str, TensorInfo]:
    """Shapes, dtypes and, for each contiguous tensor, its byte offset in a `.bin` shard.

    torch.load(mmap=True) makes every storage a slice of one mapping of the whole file, at its
    zip record's offset (zip_records.py). So the mapping's address is that of the storage that
    starts first minus the first record's offset, and a tensor's offset in the file is its
    address minus the mapping's. Both ends of every tensor are compared with the file; any
    doubt leaves the offset out, and that tensor is read through torch.load instead. (Without
    the ranges a `.bin` model, Ziya's own format, cannot be spliced: measured on a 13B-shaped
    one, peak RSS 1.97 GiB instead of 0.87.)
    """
    shard = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    with open(path, "rb") as f:
        with zipfile.ZipFile(f) as archive:
            starts = [record_data_start(f, 0, i) for i in storage_records(archive)]
        storages = [t.untyped_storage().data_ptr() for t in shard.values() if t.numel()]
        base = min(storages) - min(starts) if storages and starts else None
        infos = {}
        for key, t in shard.items():
            offset = None
            if base is not None and t.numel() and t.is_contiguous():
                offset = t.data_ptr() - base
                if not _same_ends(f, offset, t):
                    offset = None
            infos[key] = TensorInfo(path, tuple(t.shape), t.dtype, offset)
    del shard
    return infos


def _same_ends(f: BinaryIO, offset: int, tensor: torch.Tensor, probe: int = 64) -> bool:
    data = tensor.reshape(-1).view(torch.uint8)
    for start in (0, max(0, data.numel() - probe)):
        expected = data[start : start + probe].numpy().tobytes()
        f.seek(offset + start)
        if f.read(len(expected)) != expected:
            return False
    return True


_SAFETENSORS_DTYPES = {
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F32": torch.float32,
    "F64": torch.float64,
}
