"""Drawing the detections on a copy of the photo: a box per detection in its label's colour, the
landmarks it has, and a caption "label 0.93" above it."""

import io
import zlib
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from .labels import FACE

BOX_COLOUR = (0, 255, 0)  # faces: the colour they always had
LANDMARK_COLOUR = (255, 0, 0)
# Other labels: one of these, fixed per label (a crc32 of its name, the same in every process and
# release), bright enough to see on most photos and neither the faces' green nor the landmarks' red.
PALETTE = (
    (255, 140, 0),  # orange
    (30, 144, 255),  # blue
    (255, 0, 255),  # magenta
    (255, 255, 0),  # yellow
    (0, 255, 255),  # cyan
    (255, 105, 180),  # pink
    (186, 85, 211),  # violet
    (255, 255, 255),  # white
)
JPEG_QUALITY = 90


def label_colour(label: str) -> tuple[int, int, int]:
    """The box colour of a label: green for faces, else a palette colour chosen by its name."""
    if label == FACE:
        return BOX_COLOUR
    return PALETTE[zlib.crc32(label.encode("utf-8")) % len(PALETTE)]


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    # Black on light colours, white on dark ones (relative luminance, Rec. 709 weights).
    r, g, b = background
    return (0, 0, 0) if 0.2126 * r + 0.7152 * g + 0.0722 * b >= 128 else (255, 255, 255)


def annotate_jpeg(image: Image.Image, faces: Sequence) -> bytes:
    """A JPEG of ``image`` (RGB) with each detection's box, landmarks and caption drawn on it.

    ``faces`` are jobs.models.Face rows (or anything with box_x, box_y, box_width, box_height,
    confidence, landmarks and, optionally, label: "face" when absent). Line widths and the
    caption's size follow the image size so boxes stay visible; each caption ("face 0.98", "cat
    0.93") sits on a band of its box's colour just above the box, or inside its top edge when
    there is no room above, and always inside the image.
    """
    canvas = image.copy()
    draw = ImageDraw.Draw(canvas)
    width, height = canvas.size
    line = max(2, round(min(canvas.size) / 200))
    radius = max(2, line)
    font = ImageFont.load_default(size=max(12, line * 6))
    pad = max(1, line // 2)
    for face in faces:
        label = getattr(face, "label", FACE) or FACE
        colour = label_colour(label)
        x0, y0 = face.box_x, face.box_y
        x1, y1 = x0 + face.box_width, y0 + face.box_height
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=line)
        for px, py in face.landmarks.values():
            draw.ellipse((px - radius, py - radius, px + radius, py + radius), fill=LANDMARK_COLOUR)
        caption = f"{label} {face.confidence:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
        band_w, band_h = right - left + 2 * pad, bottom - top + 2 * pad
        # Above the box when it fits, else just inside its top edge; never past the image's edges.
        band_y = y0 - band_h if y0 - band_h >= 0 else y0
        band_y = max(0, min(band_y, height - band_h))
        band_x = max(0, min(x0, width - band_w))
        draw.rectangle((band_x, band_y, band_x + band_w - 1, band_y + band_h - 1), fill=colour)
        draw.text((band_x + pad - left, band_y + pad - top), caption, fill=_text_colour(colour), font=font)
    out = io.BytesIO()
    canvas.save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()
