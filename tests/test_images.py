"""Box maths against hand-computed boxes, the resize policy, and safe loading of real files."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mini_o3.agent.images import (
    BoxError,
    ImageLoadError,
    ResizePolicy,
    as_pil,
    check_image_file,
    check_box,
    compose,
    data_url,
    load_image,
    relative_to_pixels,
    resize_for_model,
    target_size,
    zoom_box_in_original,
)


def test_relative_to_pixels_truncates_and_clamps() -> None:
    # 0.33 * 1000 = 330.0, 0.257 * 700 = 179.9 -> 179, 1.2 clamps to w-1 / h-1.
    assert relative_to_pixels((0.33, 0.257, 0.5, 0.75), 1000, 700) == (330, 179, 500, 525)
    assert relative_to_pixels((-0.1, 0.0, 1.2, 1.0), 1000, 700) == (0, 0, 999, 699)


def test_check_box_rules() -> None:
    check_box((0, 0, 1, 1))
    with pytest.raises(BoxError, match="0x10"):
        check_box((5, 0, 5, 10))
    with pytest.raises(BoxError):
        check_box((10, 0, 5, 10))  # reversed
    with pytest.raises(BoxError, match="aspect"):
        check_box((0, 0, 400, 2))  # 200:1
    check_box((0, 0, 398, 2))  # 199:1 is allowed


def test_nested_zoom_on_an_observation() -> None:
    # Observation 1 is pixels (400, 300)-(2000, 1500) of a 4000x3000 original: 1600x1200.
    first = zoom_box_in_original((0.1, 0.1, 0.5, 0.5), (0, 0, 4000, 3000))
    assert first == (400, 300, 2000, 1500)
    # Its right-bottom quarter: int(0.5*1600)=800, int(0.5*1200)=600; 1.0 clamps to 1599/1199.
    second = zoom_box_in_original((0.5, 0.5, 1.0, 1.0), first)
    assert second == (1200, 900, 1999, 1499)
    # And a third level inside that 799x599 crop.
    third = zoom_box_in_original((0.25, 0.5, 0.75, 1.0), second)
    assert third == (1200 + 199, 900 + 299, 1200 + 599, 900 + 598)


def test_nested_crop_equals_crop_of_crop() -> None:
    rng = np.random.default_rng(0)
    original = Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8))
    outer = zoom_box_in_original((0.2, 0.1, 0.9, 0.8), (0, 0, 400, 300))
    crop = original.crop(outer)
    inner_relative = (0.3, 0.3, 0.6, 0.9)
    nested = zoom_box_in_original(inner_relative, outer)
    inner = relative_to_pixels(inner_relative, crop.width, crop.height)
    assert np.array_equal(np.asarray(original.crop(nested)), np.asarray(crop.crop(inner)))


def test_compose() -> None:
    assert compose((10, 20, 110, 220), (5, 5, 50, 60)) == (15, 25, 60, 80)


@pytest.mark.parametrize(
    "size,expected",
    [
        ((1000, 1000), (1000, 1000)),  # inside the limits: untouched
        ((4000, 3000), (1632, 1224)),  # 12M -> sqrt(2M/12M) = 0.408
        ((100, 100), (200, 200)),  # 10k -> scaled up to 40k
        ((2000, 10), (2829, 15)),  # scaled up for min pixels (sqrt 2 -> ceil), then short side...
    ],
)
def test_target_size(size: tuple[int, int], expected: tuple[int, int]) -> None:
    result = target_size(*size)
    if size == (2000, 10):
        # short side must reach 28 px and the aspect stay under 200
        assert min(result) >= 28 and max(result) / min(result) < 200
    else:
        assert result == expected


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 20000), st.integers(1, 20000))
def test_target_size_invariants(width: int, height: int) -> None:
    policy = ResizePolicy()
    new_w, new_h = target_size(width, height, policy)
    assert min(new_w, new_h) >= policy.min_side
    assert max(new_w, new_h) / min(new_w, new_h) < policy.max_aspect
    aspect = max(width, height) / min(width, height)
    if width * height > policy.max_pixels and aspect < policy.max_aspect:
        assert new_w * new_h <= policy.max_pixels
    if width * height < policy.min_pixels and aspect < policy.max_aspect:
        assert new_w * new_h >= policy.min_pixels
    if policy.min_pixels <= width * height <= policy.max_pixels and min(width, height) >= policy.min_side and aspect < policy.max_aspect:
        assert (new_w, new_h) == (width, height)


def test_resize_keeps_aspect_and_caps_pixels() -> None:
    image = Image.new("RGB", (8000, 6000), "red")
    shown = resize_for_model(image, first=True)
    assert shown.width * shown.height <= 2_000_000
    assert math.isclose(shown.width / shown.height, 8000 / 6000, rel_tol=0.01)


def write(tmp_path: Path, image: Image.Image, name: str, **kwargs) -> Path:
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def test_load_modes_to_rgb(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent red -> white
    assert load_image(write(tmp_path, rgba, "a.png")).getpixel((0, 0)) == (255, 255, 255)
    grey = Image.new("L", (10, 10), 128)
    assert load_image(write(tmp_path, grey, "g.png")).getpixel((0, 0)) == (128, 128, 128)
    palette = Image.new("P", (10, 10), 0)
    palette.putpalette([0, 0, 255] + [0] * 765)
    assert load_image(write(tmp_path, palette, "p.png")).getpixel((0, 0)) == (0, 0, 255)
    cmyk = Image.new("CMYK", (10, 10), (0, 255, 255, 0))
    assert load_image(write(tmp_path, cmyk, "c.jpg", quality=100)).getpixel((0, 0))[0] > 200
    deep = Image.fromarray(np.full((10, 10), 65535, dtype=np.uint16))
    assert load_image(write(tmp_path, deep, "d.png")).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (40, 20), "white")
    image.paste((255, 0, 0), (0, 0, 10, 20))  # red strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = write(tmp_path, image, "rot.jpg", exif=exif, quality=100)
    loaded = load_image(path)
    assert loaded.size == (20, 40)
    assert loaded.getpixel((10, 2))[0] > 200 and loaded.getpixel((10, 2))[1] < 60  # red now on top


def test_missing_corrupt_and_huge_files(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="not found: .*nope.png"):
        load_image(tmp_path / "nope.png")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        load_image(broken)
    full = write(tmp_path, Image.new("RGB", (200, 200), "blue"), "full.jpg")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(full.read_bytes()[:300])
    with pytest.raises(ImageLoadError, match="truncated.jpg"):
        load_image(truncated)
    big = write(tmp_path, Image.new("L", (3000, 3000)), "big.png")
    with pytest.raises(ImageLoadError, match="over the limit"):
        load_image(big, pixel_limit=1_000_000)


def test_as_pil_takes_a_view_a_pil_image_or_a_path_and_nothing_else(tmp_path: Path) -> None:
    from mini_o3.agent.sample import Sample
    from mini_o3.agent.env import ZoomEnv

    picture = Image.new("RGBA", (30, 20), (255, 0, 0, 0))
    assert as_pil(picture) is picture
    view = ZoomEnv(Sample(id="s", image=Image.new("RGB", (300, 200)), question="?", answer="a")).views[0]
    assert as_pil(view) is view.image
    path = write(tmp_path, picture, "p.png")
    for given in (path, str(path)):
        loaded = as_pil(given)
        assert loaded.size == (30, 20) and loaded.mode == "RGB"  # loaded safely, alpha on white
    with pytest.raises(ImageLoadError, match="not found"):
        as_pil(tmp_path / "absent.png")
    with pytest.raises(TypeError, match="View, a PIL image or a path, got int"):
        as_pil(42)


def test_importing_keeps_the_users_pillow_settings() -> None:
    script = "from PIL import ImageFile; ImageFile.LOAD_TRUNCATED_IMAGES = True; import mini_o3.agent.images; assert ImageFile.LOAD_TRUNCATED_IMAGES"
    subprocess.run([sys.executable, "-c", script], check=True)


def test_data_url_round_trip() -> None:
    import base64
    import io

    image = Image.new("RGB", (30, 20), (10, 200, 30))
    url = data_url(image, "PNG")
    assert url.startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert decoded.size == (30, 20) and decoded.getpixel((0, 0)) == (10, 200, 30)


# ---------------------------------------------------------------- hostile inputs (issue 13)


@pytest.mark.parametrize("value", [1e308, -1e308, 1.7e308])
def test_a_coordinate_whose_pixels_overflow_is_a_box_error_not_a_crash(value: float) -> None:
    for box in ((0.0, 0.0, value, 1.0), (value, 0.0, 1.0, 1.0)):
        with pytest.raises(BoxError, match="too large"):
            zoom_box_in_original(box, (0, 0, 4000, 3000))


def test_huge_but_representable_coordinates_are_clamped_as_the_reference_does() -> None:
    assert zoom_box_in_original((-1e300, 0.0, 1e300, 1.0), (0, 0, 40, 30)) == (0, 0, 39, 29)


def test_a_folder_is_named_as_a_folder_not_as_missing(tmp_path: Path) -> None:
    (tmp_path / "photo.jpg").mkdir()
    for check in (load_image, check_image_file):
        with pytest.raises(ImageLoadError, match="is a folder, not an image file"):
            check(tmp_path / "photo.jpg")


def _png_header(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_the_header_check_refuses_what_cannot_be_an_image_without_decoding(tmp_path: Path) -> None:
    cases = {
        "empty.jpg": (b"", "empty"),
        "text.jpg": (b"I am a text file\n", "not an image"),
        "corrupt.jpg": (b"\xff\xd8\xff\xe0" + b"\x00" * 64, "not an image"),
        "bomb.png": (_png_header(20_000, 20_000), "over the limit of 300,000,000 pixels; raise --image-pixel-limit"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageLoadError, match=message.replace("(", r"\(")) as caught:
            check_image_file(tmp_path / name)
        assert name in str(caught.value)
    # 196M pixels: over Pillow's own guard (179M), under ours; the header says so without a decode.
    (tmp_path / "big.png").write_bytes(_png_header(14_000, 14_000))
    assert check_image_file(tmp_path / "big.png") == (14_000, 14_000)
    good = write(tmp_path, Image.new("RGB", (64, 48), "red"), "good.jpg")
    assert check_image_file(good) == (64, 48)


def test_our_pixel_limit_is_the_only_one_and_pillows_setting_is_left_as_the_user_set_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mini_o3.agent.env import ZoomEnv
    from mini_o3.agent.policy import Generation
    from mini_o3.agent.sample import Sample

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # Pillow would refuse anything over 2,000 pixels
    path = write(tmp_path, Image.new("RGB", (300, 200), "green"), "g.png")
    assert load_image(path, pixel_limit=100_000).size == (300, 200)
    with pytest.raises(ImageLoadError, match="over the limit of 50,000 pixels; raise --image-pixel-limit"):
        load_image(path, pixel_limit=50_000)
    env = ZoomEnv(Sample(id="g", image=path, question="?", answer="a"), pixel_limit=100_000)
    env.step(Generation('<grounding>{"bbox_2d": [0, 0, 1, 1], "source": "original_image"}</grounding>'))
    assert env.trajectory.turns[0].feedback == "observation"  # a crop of 60,000 pixels, over Pillow's 2,000
    assert Image.MAX_IMAGE_PIXELS == 1_000


def test_image_bytes_are_decoded_with_the_same_checks(tmp_path: Path) -> None:
    import io

    from mini_o3.agent.images import decode_image_bytes

    buffer = io.BytesIO()
    Image.new("RGBA", (30, 20), (255, 0, 0, 0)).save(buffer, format="PNG")
    decoded = decode_image_bytes(buffer.getvalue(), "the upload")
    assert decoded.size == (30, 20) and decoded.mode == "RGB"
    for data, words in ((b"", "the upload is empty"), (b"GIF89a", "the upload is not an image"), (_png_header(20_000, 20_000), "over the limit")):
        with pytest.raises(ImageLoadError, match=words):
            decode_image_bytes(data, "the upload")
    with pytest.raises(ImageLoadError, match="cannot decode the upload"):
        decode_image_bytes(buffer.getvalue()[:-30], "the upload")
