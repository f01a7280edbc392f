import io
import zlib
from types import SimpleNamespace

from PIL import Image

from detection.annotate import BOX_COLOUR, PALETTE, annotate_jpeg, label_colour


def detection(x, y, w, h, confidence=0.98, label=None, landmarks=None):
    fields = dict(box_x=x, box_y=y, box_width=w, box_height=h, confidence=confidence, landmarks=landmarks or {})
    if label is not None:
        fields["label"] = label
    return SimpleNamespace(**fields)


def drawn(image, detections) -> Image.Image:
    return Image.open(io.BytesIO(annotate_jpeg(image, detections))).convert("RGB")


def near(pixel, colour, tolerance=60) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour))


def test_boxes_and_landmarks_are_drawn_on_a_copy():
    """The input is untouched; the JPEG shows a green box edge and red landmark dots."""
    image = Image.new("RGB", (200, 200), (0, 0, 0))
    face = SimpleNamespace(box_x=50, box_y=60, box_width=80, box_height=90, confidence=0.98, landmarks={"nose": [90.0, 100.0]})
    out = Image.open(io.BytesIO(annotate_jpeg(image, [face]))).convert("RGB")
    assert image.getpixel((50, 100)) == (0, 0, 0)
    r, g, b = out.getpixel((50, 100))
    assert g > 200 and r < 80 and b < 80
    r, g, b = out.getpixel((90, 100))
    assert r > 200 and g < 80
    assert out.size == (200, 200)


def test_faces_keep_their_green_and_other_labels_get_a_fixed_colour_of_their_own():
    """face: green, labelled or not; cat and person: palette colours, the same on every call,
    neither green nor the landmarks' red; each box is drawn in its label's colour."""
    assert label_colour("face") == BOX_COLOUR
    # Chosen by a fixed checksum of the name, so every process (and every restart) agrees; a
    # per-process hash() would not.
    assert label_colour("cat") == PALETTE[zlib.crc32(b"cat") % len(PALETTE)]
    assert label_colour("cat") != label_colour("person")  # as the palette falls for these two
    assert all(colour not in (BOX_COLOUR, (255, 0, 0)) for colour in PALETTE)
    image = Image.new("RGB", (300, 200), (0, 0, 0))
    out = drawn(
        image,
        [detection(20, 60, 80, 100, label="face"), detection(120, 60, 60, 100, label="cat"), detection(200, 60, 60, 100, label="person")],
    )
    assert near(out.getpixel((20, 140)), BOX_COLOUR)
    assert near(out.getpixel((120, 140)), label_colour("cat"))
    assert near(out.getpixel((200, 140)), label_colour("person"))


def caption_band(out: Image.Image, colour, region) -> int:
    """How many pixels of ``region`` (x0, y0, x1, y1) are near ``colour``."""
    x0, y0, x1, y1 = region
    return sum(near(out.getpixel((x, y)), colour) for x in range(x0, x1) for y in range(y0, y1))


def test_a_caption_with_label_and_confidence_sits_above_the_box():
    """A band of the box's colour just above it (12 px font on a small photo), with dark text on
    it: "cat 0.93"; nothing above the band."""
    image = Image.new("RGB", (300, 200), (0, 0, 0))
    colour = label_colour("cat")
    out = drawn(image, [detection(40, 80, 150, 100, confidence=0.93, label="cat")])
    band = (40, 70, 85, 80)
    assert caption_band(out, colour, band) > 150  # the band's fill
    text = sum(max(out.getpixel((x, y))) < 100 for x in range(band[0], band[2]) for y in range(band[1], band[3]))
    assert text > 30  # the caption's dark letters on it
    assert caption_band(out, colour, (40, 55, 100, 67)) == 0


def test_captions_are_wider_with_the_label():
    """The caption names the label: a longer label makes a wider band."""
    image = Image.new("RGB", (400, 200), (0, 0, 0))
    widths = []
    for label in ("cat", "traffic_light"):
        out = drawn(image, [detection(10, 100, 300, 80, label=label)])
        widths.append(max(x for x in range(400) if near(out.getpixel((x, 98)), label_colour(label))))
    assert widths[1] > widths[0] + 30


def test_a_caption_stays_inside_the_image():
    """A box at the top edge: the caption goes inside it, at the top; a box at the right edge:
    the caption is pushed left so that it ends inside the image."""
    image = Image.new("RGB", (200, 120), (0, 0, 0))
    out = drawn(image, [detection(0, 0, 60, 60, label="person")])
    assert caption_band(out, label_colour("person"), (2, 2, 40, 12)) > 100  # inside the box's top
    out = drawn(image, [detection(190, 60, 10, 40, label="person")])
    assert caption_band(out, label_colour("person"), (150, 40, 190, 58)) > 100  # left of the box, above it
    assert out.size == (200, 120)


def test_detections_without_a_label_are_faces():
    """Rows from before labels (or objects without one) are drawn as faces: green."""
    image = Image.new("RGB", (200, 200), (0, 0, 0))
    out = drawn(image, [detection(50, 60, 80, 90)])
    assert near(out.getpixel((50, 100)), BOX_COLOUR)
    assert caption_band(out, BOX_COLOUR, (50, 40, 90, 58)) > 100
