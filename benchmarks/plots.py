"""Line plots for the benchmarks' PNGs (PIL: matplotlib is not installed)."""

from pathlib import Path

from PIL import Image, ImageDraw

PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127))  # fmt: skip

Series = tuple[list[float], list[float]]  # (x values, y values)


def line_panels(
    panels: list[tuple[str, dict[str, Series]]],
    colours: dict[str, tuple[int, int, int]],
    path: Path,
    *,
    width: int = 900,
    height: int = 260,
    legend: dict[str, tuple[int, int, int]] | None = None,
) -> None:
    """One panel per (title, {label: (xs, ys)}), stacked; each label drawn in its colour, the
    y range from the panel's values, the x range from their steps. `legend` ({name: colour},
    default `colours`) is drawn in every panel's title line."""
    legend = colours if legend is None else legend
    pad = 50
    image = Image.new("RGB", (width, height * len(panels)), "white")
    draw = ImageDraw.Draw(image)
    for row, (title, series) in enumerate(panels):
        top = row * height
        xs = [x for x_values, _ in series.values() for x in x_values]
        ys = [y for _, y_values in series.values() for y in y_values]
        x_lo, x_hi = min(xs), max(xs)
        x_hi = x_hi if x_hi > x_lo else x_lo + 1
        lo, hi = min(ys), max(ys)
        hi = hi if hi > lo else lo + 1

        def xy(x, y, top=top, lo=lo, hi=hi, x_lo=x_lo, x_hi=x_hi):
            px = pad + (width - 2 * pad) * (x - x_lo) / (x_hi - x_lo)
            return px, top + height - pad + (pad * 1.5 - height) * (y - lo) / (hi - lo)

        draw.rectangle([pad, top + pad // 2, width - pad, top + height - pad], outline="black")
        draw.text((pad, top + 5), f"{title}   (x: {x_lo:g}..{x_hi:g})", fill="black")
        right = width - pad
        for name, colour in reversed(legend.items()):
            right -= draw.textlength(name) + 4
            draw.text((right, top + 5), name, fill="black")
            right -= 14
            draw.rectangle([right, top + 7, right + 10, top + 15], fill=colour)
            right -= 16
        draw.text((5, top + pad // 2), f"{hi:.3g}", fill="black")
        draw.text((5, top + height - pad - 10), f"{lo:.3g}", fill="black")
        for label, (x_values, y_values) in series.items():
            points = [xy(x, y) for x, y in zip(x_values, y_values, strict=True)]
            if len(points) > 1:
                draw.line(points, fill=colours[label], width=1)
            for px, py in points if len(points) < 20 else ():
                draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colours[label])
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
