"""Real inputs for the zoo: text rendered with Debian's DejaVu fonts, and photos bundled in scikit-image's wheel.

Text comes from the licence texts Debian ships in /usr/share/common-licenses (real English prose); photos are
scikit-image's ``skimage/data`` images (astronaut, coffee, chelsea, ...), read from its wheel with PIL.  No
random tensors: randomness only picks which line, font, size, page layout and crop, from a seeded generator.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from models.zoo.fetch import Wheel, ZooFetchError, fetch_wheel

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
LICENCE_DIR = Path("/usr/share/common-licenses")
LICENCES = ("Apache-2.0", "GPL-3", "MPL-2.0", "LGPL-2.1", "Artistic", "GFDL-1.3")
SKIMAGE = Wheel("scikit-image", "0.26.0")
PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "camera.png",
          "coins.png", "moon.png", "page.png", "text.png", "retina.jpg", "hubble_deep_field.jpg")
INK_MAX = 70          # text is dark ink on light paper, as in scans
PAPER_MIN = 215


@dataclass(frozen=True)
class Sources:
    """The material every zoo input is cut from."""

    lines: tuple[str, ...]
    fonts: tuple[Path, ...]
    photos: tuple[np.ndarray, ...]   # RGB uint8 [H, W, 3]


def licence_lines(max_chars: int = 40) -> tuple[str, ...]:
    """Licence text split into printable ASCII lines of at most ``max_chars`` characters, on word boundaries."""
    words: list[str] = []
    for name in LICENCES:
        path = LICENCE_DIR / name
        if path.is_file():
            words.extend(re.sub(r"[^\x20-\x7e]", " ", path.read_text(errors="replace")).split())
    if not words:
        raise ZooFetchError(f"no licence texts under {LICENCE_DIR} to render")
    lines, current = [], ""
    for word in words:
        if current and len(current) + 1 + len(word) > max_chars:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}".strip()
    return tuple(line for line in lines if len(line) >= 4)


def dejavu_fonts() -> tuple[Path, ...]:
    fonts = tuple(sorted(p for p in FONT_DIR.glob("DejaVu*.ttf") if "ExtraLight" not in p.name
                         and "MathTeX" not in p.name))
    if not fonts:
        raise ZooFetchError(f"no DejaVu fonts in {FONT_DIR} (Debian package fonts-dejavu-core)")
    return fonts


def skimage_photos(cache: Path | None = None) -> tuple[np.ndarray, ...]:
    with zipfile.ZipFile(fetch_wheel(SKIMAGE, cache)) as archive:
        return tuple(np.asarray(Image.open(io.BytesIO(archive.read(f"skimage/data/{name}"))).convert("RGB"))
                     for name in PHOTOS)


def load_sources(cache: Path | None = None, photos: bool = True) -> Sources:
    """Lines, fonts and (when ``photos``; fetching scikit-image's wheel) the photos."""
    return Sources(licence_lines(), dejavu_fonts(), skimage_photos(cache) if photos else ())


def _font(sources: Sources, rng: np.random.Generator, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(sources.fonts[rng.integers(len(sources.fonts))]), size)


def text_line(sources: Sources, rng: np.random.Generator, text: str | None = None) -> tuple[np.ndarray, str]:
    """One text line cropped as a detector would hand it to a recogniser: RGB uint8 and its text."""
    text = text if text is not None else sources.lines[rng.integers(len(sources.lines))]
    font = _font(sources, rng, int(rng.integers(22, 40)))
    left, top, right, bottom = font.getbbox(text)
    pad_x, pad_y = int(rng.integers(2, 10)), int(rng.integers(2, 8))
    paper = tuple(int(v) for v in rng.integers(PAPER_MIN, 256, 3))
    image = Image.new("RGB", (right - left + 2 * pad_x, bottom - top + 2 * pad_y), paper)
    ink = tuple(int(v) for v in rng.integers(0, INK_MAX, 3))
    ImageDraw.Draw(image).text((pad_x - left, pad_y - top), text, font=font, fill=ink)
    return np.asarray(image), text


def _paste_photo(page: Image.Image, sources: Sources, rng: np.random.Generator, box: tuple[int, int, int, int]):
    photo = Image.fromarray(sources.photos[rng.integers(len(sources.photos))])
    page.paste(photo.resize((box[2] - box[0], box[3] - box[1])), box[:2])


def _paste_table(draw: ImageDraw.ImageDraw, sources: Sources, rng: np.random.Generator,
                 box: tuple[int, int, int, int], font: ImageFont.FreeTypeFont) -> None:
    rows, cols = int(rng.integers(3, 6)), int(rng.integers(2, 5))
    x0, y0, x1, y1 = box
    for r in range(rows + 1):
        draw.line([(x0, y0 + r * (y1 - y0) // rows), (x1, y0 + r * (y1 - y0) // rows)], fill=(0, 0, 0), width=2)
    for c in range(cols + 1):
        draw.line([(x0 + c * (x1 - x0) // cols, y0), (x0 + c * (x1 - x0) // cols, y1)], fill=(0, 0, 0), width=2)
    for r in range(rows):
        for c in range(cols):
            word = sources.lines[rng.integers(len(sources.lines))].split()[0][:8]
            draw.text((x0 + c * (x1 - x0) // cols + 6, y0 + r * (y1 - y0) // rows + 4), word, font=font,
                      fill=(0, 0, 0))


def document_page(sources: Sources, rng: np.random.Generator, size: tuple[int, int] = (1000, 760)) -> np.ndarray:
    """A page laid out like a report: a bold title, paragraphs, and a figure (a photo) or a table. RGB uint8."""
    height, width = size
    page = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(235, 256, 3)))
    draw = ImageDraw.Draw(page)
    margin, y = int(width * 0.08), int(height * 0.06)
    title = ImageFont.truetype(str(FONT_DIR / "DejaVuSans-Bold.ttf"), int(rng.integers(26, 38)))
    draw.text((margin, y), sources.lines[rng.integers(len(sources.lines))][:30], font=title, fill=(0, 0, 0))
    y += int(title.size * 2)
    body = _font(sources, rng, int(rng.integers(14, 20)))
    line_height = int(body.size * 1.5)
    while y < height - margin - line_height:
        if rng.random() < 0.18 and y < height * 0.6:
            block = (margin, y, width - margin, y + int(rng.integers(height // 6, height // 3)))
            if rng.random() < 0.5:
                _paste_photo(page, sources, rng, block)
            else:
                _paste_table(draw, sources, rng, block, body)
            y = block[3] + line_height
            continue
        for _ in range(int(rng.integers(3, 8))):
            if y >= height - margin - line_height:
                break
            draw.text((margin, y), sources.lines[rng.integers(len(sources.lines))], font=body, fill=(20, 20, 20))
            y += line_height
        y += line_height
    return np.asarray(page)


def photo_with_glyphs(sources: Sources, rng: np.random.Generator, size: int = 416) -> np.ndarray:
    """A photo crop with 3-6 large characters drawn on it (a click-captcha scene). RGB uint8 [size, size, 3]."""
    photo = sources.photos[rng.integers(len(sources.photos))]
    scale = size / min(photo.shape[:2])
    image = Image.fromarray(photo).resize((max(size, int(photo.shape[1] * scale) + 1),
                                           max(size, int(photo.shape[0] * scale) + 1))).crop((0, 0, size, size))
    draw = ImageDraw.Draw(image)
    letters = "".join(sources.lines[rng.integers(len(sources.lines))].split())
    for k in range(int(rng.integers(3, 7))):
        font = _font(sources, rng, int(rng.integers(36, 64)))
        x, y = (int(v) for v in rng.integers(10, size - 70, 2))
        draw.text((x, y), letters[k % len(letters)], font=font,
                  fill=tuple(int(v) for v in rng.integers(0, 256, 3)), stroke_width=2, stroke_fill=(0, 0, 0))
    return np.asarray(image)


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((int(width), int(height)), Image.BILINEAR))
