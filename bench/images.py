"""The fixed set of JPEGs every system is sent: real-sized scenes, some empty, same bytes on every run."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from model_export.synth import generate_image

SEED = 4242
# Synthetic scenes are about 320 px; these scales make them 256 to 1536 px wide (0.07 to 1.8 megapixels).
SCALES = (1.0, 2.0, 3.0, 4.0)
EMPTY_EVERY = 6  # one image in six has no object


@dataclass(frozen=True)
class ImageSet:
    directory: Path
    bodies: list[bytes]
    sizes: list[tuple[int, int]]  # width, height
    objects: list[int]

    def describe(self) -> dict[str, object]:
        pixels = [w * h for w, h in self.sizes]
        return {
            "count": len(self.bodies),
            "format": "JPEG, quality 90",
            "megapixels_min_mean_max": [
                round(min(pixels) / 1e6, 2),
                round(sum(pixels) / len(pixels) / 1e6, 2),
                round(max(pixels) / 1e6, 2),
            ],
            "kilobytes_mean": round(sum(len(b) for b in self.bodies) / len(self.bodies) / 1024, 1),
            "without_objects": sum(1 for n in self.objects if n == 0),
        }


def write_images(directory: Path, count: int) -> ImageSet:
    """Writes ``count`` JPEGs named 000.jpg, 001.jpg, ... into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    bodies, sizes, objects = [], [], []
    for index in range(count):
        empty = index % EMPTY_EVERY == EMPTY_EVERY - 1
        image, annotations = generate_image(seed=SEED, index=index, size_scale=SCALES[index % len(SCALES)], empty_fraction=float(empty))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        (directory / f"{index:03d}.jpg").write_bytes(buffer.getvalue())
        bodies.append(buffer.getvalue())
        sizes.append(image.size)
        objects.append(len(annotations))
    return ImageSet(directory, bodies, sizes, objects)
