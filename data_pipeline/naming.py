"""FOMM's clip names: `{person_id}#{video_id}#{start:06}#{end:06}` (.mp4, or a folder of PNGs).

The identity is the part before the first '#' (FOMM's id_sampling groups clips by it).
"""

import dataclasses
import re

# YouTube ids may contain '-' and '_'; person ids are like id10001. Start/end are frame numbers.
_NAME = re.compile(r"^(?P<person>[^#]+)#(?P<video>[^#]+)#(?P<start>\d+)#(?P<end>\d+)$")
VIDEO_SUFFIXES = (".mp4",)


@dataclasses.dataclass(frozen=True)
class ClipName:
    """A parsed clip name (the stem, without .mp4)."""

    person_id: str
    video_id: str
    start: int
    end: int

    @property
    def clip_id(self) -> str:
        return fomm_clip_name(self.person_id, self.video_id, self.start, self.end)


def parse_clip_name(stem: str) -> ClipName:
    """'id10001#7w0IBEWc9Qw#000993#001143' -> ClipName; ValueError naming the rule otherwise."""
    match = _NAME.match(stem)
    if not match:
        raise ValueError(
            f"clip name {stem!r} does not parse as {{person_id}}#{{video_id}}#{{start}}#{{end}}"
        )
    start, end = int(match["start"]), int(match["end"])
    if end <= start:
        raise ValueError(f"clip name {stem!r}: end frame {end} is not after start {start}")
    return ClipName(match["person"], match["video"], start, end)


def fomm_clip_name(person_id: str, video_id: str, start: int, end: int) -> str:
    """The stem video-preprocessing writes (start and end zero-padded to 6 digits)."""
    return f"{person_id}#{video_id}#{start:06d}#{end:06d}"
