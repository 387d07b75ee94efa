"""A measured figure with its target, a benchmark's result (figures plus raw data), and Skip."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class Figure:
    key: str
    label: str
    value: float | None
    target: float | None  # None: reported for information, no target
    better: str = "higher"  # which side of the target passes: "higher" or "lower"
    unit: str = "x"
    detail: str = ""  # the two measurements the ratio came from

    @property
    def met(self) -> bool | None:
        if self.value is None or self.target is None:
            return None
        return self.value >= self.target if self.better == "higher" else self.value <= self.target

    @property
    def target_text(self) -> str:
        if self.target is None:
            return "none"
        return f"{'>=' if self.better == 'higher' else '<='} {self.target:g}{self.unit}"

    @property
    def value_text(self) -> str:
        return "n/a" if self.value is None else f"{self.value:.3g}{self.unit}"

    def line(self) -> str:
        verdict = {True: "met", False: "NOT met", None: "not measured"}[self.met]
        if self.target is None:
            verdict = "information"
        return f"{self.label}: {self.value_text} (target {self.target_text}: {verdict}) {self.detail}".rstrip()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"met": self.met}


@dataclass
class Result:
    name: str
    figures: list[Figure] = field(default_factory=list)
    data: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # context lines printed under the figures
    skipped: str = ""  # why nothing was measured (no GPU, missing package)
    error: str = ""  # the exception that stopped it
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"name": self.name, "figures": [f.to_dict() for f in self.figures], "data": self.data,
                "notes": self.notes, "skipped": self.skipped, "error": self.error, "seconds": round(self.seconds, 1)}


class Skip(Exception):
    """This benchmark cannot run here; the message says why."""
