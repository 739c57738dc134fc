"""The SFT data config (`conf/data/sft_*.yaml`): sources with readers, weights and caps, and
how they are encoded and packed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from megatron_chimed.data.records import FILE_TYPES
from megatron_chimed.data.sft.formats import FORMATS, resolve_columns
from megatron_chimed.data.sft.readers import READERS
from megatron_chimed.data.template import TEMPLATES

PACKING_MODES = ("concat", "isolated")


@dataclass
class SourceConfig:
    """One data file, read by a paper preset (`reader`) or a generic `format` (alpaca, sharegpt,
    qa: sft/formats.py) with an optional `file_type` (else the suffix), a `columns` mapping
    (format key -> the file's column) and, for sharegpt, `roles` (speaker name -> user,
    assistant or system). `weight` multiplies its sample count (0.5 = a random half, 2 = every
    sample twice); `max_samples` caps the count first (a random subset); `instruction` is put
    before the first question (the paper's doctor instruction for QA data, Table 3); a record's
    own system prompt replaces it."""

    name: str
    path: str
    reader: str | None = None
    format: str | None = None
    file_type: str | None = None
    columns: dict[str, str | None] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)
    weight: float = 1.0
    max_samples: int | None = None
    instruction: str = ""

    def validate(self, where: str) -> None:
        if (self.reader is None) == (self.format is None):
            raise ValueError(
                f"{where}: set exactly one of reader (a preset: {sorted(READERS)}) and format "
                f"(your own data: {list(FORMATS)})"
            )
        if self.reader is not None and self.reader not in READERS:
            raise ValueError(f"{where}.reader={self.reader!r}: expected one of {sorted(READERS)}")
        if self.reader is not None and (self.columns or self.roles or self.file_type):
            raise ValueError(f"{where}: columns, roles and file_type need a format, not a reader")
        if self.format is not None:
            resolve_columns(self.format, self.columns, where)
            if self.roles and self.format != "sharegpt":
                raise ValueError(f"{where}.roles: only for format 'sharegpt'")
        if self.file_type is not None and self.file_type not in FILE_TYPES:
            raise ValueError(f"{where}.file_type={self.file_type!r}: expected one of {FILE_TYPES}")
        if not self.weight > 0:
            raise ValueError(f"{where}.weight={self.weight}: must be > 0")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"{where}.max_samples={self.max_samples}: must be >= 1")
        if not Path(self.path).is_file():
            raise FileNotFoundError(f"{where}.path={self.path}: no such file")


@dataclass
class SFTDataConfig:
    """`seq_length` is the model's sequence; each packed row holds `seq_length + 1` tokens
    (inputs and labels shifted by one), as megatron's GPT datasets do. A training run sets it
    from `training.seq_length` (config validation refuses a data.seq_length that differs); the
    standalone cache builder (`python -m megatron_chimed.data.sft`) reads it from here."""

    sources: list[SourceConfig] = field(default_factory=list)
    template: str = "ziya"
    seq_length: int = 4096
    packing: str = "isolated"
    truncate_response: bool = False
    seed: int = 1234
    # The packed cache's folder; null: the run's own `<run_dir>/cache/sft` (passed by the stage
    # to `packed_sft_dataset`), so a run writes nothing outside run_dir. Set a path to share one
    # cache between runs.
    cache_dir: str | None = None
    # Processes that encode the records on the rank that builds the cache (the output does not
    # depend on it). Null: that rank's share of the node's cores (the cores it may run on over
    # LOCAL_WORLD_SIZE), or one for a mix of a few MiB, where starting workers costs more.
    workers: int | None = None

    def validate(self) -> None:
        if self.template not in TEMPLATES:
            raise ValueError(f"data.template={self.template!r}: expected one of {list(TEMPLATES)}")
        if self.packing not in PACKING_MODES:
            raise ValueError(f"data.packing={self.packing!r}: expected one of {PACKING_MODES}")
        if self.seq_length < 16:
            raise ValueError(f"data.seq_length={self.seq_length}: too short for a dialogue")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"data.workers={self.workers}: must be >= 1 (null: automatic)")
        if not self.sources:
            raise ValueError("data.sources: empty")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"data.sources: duplicate names in {names}")
        for i, source in enumerate(self.sources):
            source.validate(f"data.sources[{i}]")


def load_data_config(cfg: DictConfig | dict | str | Path) -> SFTDataConfig:
    """A validated SFTDataConfig from a YAML file, a dict or a composed `data` group."""
    if isinstance(cfg, str | Path):
        cfg = OmegaConf.load(cfg)
    merged = OmegaConf.merge(OmegaConf.structured(SFTDataConfig), cfg)
    data: SFTDataConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    data.validate()
    return data
