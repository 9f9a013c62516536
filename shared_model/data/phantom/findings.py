"""Ground truth of one rendered image: where each lesion is and which signs were drawn.

Positions and sizes are fractions of the image width (x, y from the top-left),
so the same findings describe the image at any resolution.
"""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Lesion:
    """One drawn lesion: ``kind`` (e.g. ``"haemorrhage"``), centre and radius in width fractions."""

    kind: str
    x: float
    y: float
    radius: float
    region: str = ""  # e.g. "superotemporal", "macula", "disc": what a report would say


@dataclass(frozen=True)
class Findings:
    """Everything a report may mention about one image, built from what was actually drawn."""

    modality: str  # "CFP" or "OCT"
    eye: str  # "OD" or "OS"
    labels: tuple[str, ...]
    lesions: tuple[Lesion, ...] = ()
    signs: tuple[str, ...] = ()  # lesion-free findings, e.g. "venous_beading", "drusen"
    cup_disc_ratio: float | None = None
    notch: str | None = None  # "inferior" / "superior" rim notch, glaucoma only
    extras: dict[str, float] = field(default_factory=dict)  # numeric ground truth, e.g. haze

    def count(self, kind: str) -> int:
        """Number of lesions of ``kind``."""
        return sum(1 for lesion in self.lesions if lesion.kind == kind)

    def regions(self, kind: str) -> list[str]:
        """Distinct regions holding lesions of ``kind``, in first-seen order."""
        seen: list[str] = []
        for lesion in self.lesions:
            if lesion.kind == kind and lesion.region not in seen:
                seen.append(lesion.region)
        return seen
