"""The build report: what went into the data set and what was skipped (and why)."""

import dataclasses
import json
import logging
from pathlib import Path

log = logging.getLogger("data_pipeline")


@dataclasses.dataclass
class SplitCounts:
    clips: int = 0
    frames: int = 0
    identities: int = 0


@dataclasses.dataclass
class BuildReport:
    dataset: str
    splits: dict[str, SplitCounts] = dataclasses.field(default_factory=dict)
    skipped: list[dict] = dataclasses.field(default_factory=list)  # {'path', 'reason'}
    # Staged clips made again because their source or a build option changed: {'path', 'reason'}
    restaged: list[dict] = dataclasses.field(default_factory=list)
    dropped: list[str] = dataclasses.field(default_factory=list)  # staged clips of gone sources
    removed_incomplete: list[str] = dataclasses.field(default_factory=list)  # killed builds'
    empty_partitions: list[str] = dataclasses.field(default_factory=list)
    has_coeffs: bool = False
    dataset_dir: str = ""
    assembled: bool = False  # False when the TFDS data set was already up to date

    def skip(self, path: str | Path, reason: str) -> None:
        """Records a skipped file and warns, naming it."""
        log.warning("skipping %s: %s", path, reason)
        self.skipped.append({"path": str(path), "reason": reason})

    def restage(self, path: str | Path, reason: str) -> None:
        log.info("restaging %s: %s", path, reason)
        self.restaged.append({"path": str(path), "reason": reason})

    def summary(self) -> str:
        lines = [f"{self.dataset}: {self.dataset_dir}"]
        for split, c in self.splits.items():
            lines.append(
                f"  {split}: {c.clips} clips, {c.frames} frames, {c.identities} identities"
            )
        lines.append(f"  3DMM coefficients: {'yes' if self.has_coeffs else 'no'}")
        lines.append(f"  skipped: {len(self.skipped)} files")
        lines += [f"    {s['path']}: {s['reason']}" for s in self.skipped]
        if self.restaged:
            lines.append(f"  restaged: {len(self.restaged)} clips (source or options changed)")
            lines += [f"    {s['path']}: {s['reason']}" for s in self.restaged]
        if self.dropped:
            lines.append(f"  dropped: {len(self.dropped)} staged clips whose source is gone")
            lines += [f"    {p}" for p in self.dropped]
        if self.removed_incomplete:
            lines.append(f"  removed {len(self.removed_incomplete)} incomplete folders of an "
                         "interrupted build")  # fmt: skip
        if self.empty_partitions:
            lines.append(f"  empty partitions: {', '.join(self.empty_partitions)}")
        return "\n".join(lines)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=1) + "\n")
