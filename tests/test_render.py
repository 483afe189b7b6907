"""Pixel rendering: synthetic datasets checked against the DICOM formulas, real files against their twins."""

from __future__ import annotations

import logging
import math
import warnings

import cv2
import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import (
    apply_modality_lut,
    apply_voi,
    convert_color_space,
    get_decoder,
)
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    generate_uid,
)

from medbeam.dicom import codecs
from medbeam.dicom.render import (
    RenderError,
    RenderOptions,
    decode_pixels,
    has_pixel_data,
    render_frames,
    render_png_frames,
)
from medbeam.imaging.encode import encode_png
from medbeam.imaging.resize import resize_image
from tests.helpers import dicom_file


@pytest.fixture(autouse=True)
def _quiet_pydicom():
    """pydicom logs every failed plugin attempt and warns about odd test files; keep output readable."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    logger.setLevel(level)


def read(name: str, **kwargs) -> Dataset:
    return pydicom.dcmread(dicom_file(name), **kwargs)


def make_dataset(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    frames: bool = False,
    **attributes,
) -> Dataset:
    """An Explicit VR Little Endian image dataset holding `pixels` (frames first when `frames`)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    colour = photometric in ("RGB", "YBR_FULL")
    shape = pixels.shape[1:] if frames else pixels.shape
    if frames:
        ds.NumberOfFrames = pixels.shape[0]
    ds.Rows, ds.Columns = shape[0], shape[1]
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def dicom_linear(x: np.ndarray, center: float, width: float, top: int = 255) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1, written out the way the standard does (piecewise), unrounded."""
    x = np.asarray(x, dtype=np.float64)
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    inside = ((x - (center - 0.5)) / (width - 1) + 0.5) * top
    return np.where(x <= low, 0.0, np.where(x > high, float(top), inside))


def only_frame(ds: Dataset, options: RenderOptions | None = None) -> np.ndarray:
    images = render_frames(ds, options or RenderOptions())
    assert len(images) == 1
    return images[0]


def assert_close(actual: np.ndarray, expected: np.ndarray, tolerance: int = 1) -> None:
    assert actual.shape == expected.shape
    difference = np.abs(actual.astype(np.int64) - np.asarray(expected, dtype=np.int64))
    assert difference.max() <= tolerance, f"max difference {difference.max()}"


# --------------------------------------------------------------------------------------------------
# Greyscale windowing on synthetic data

# Points chosen away from .5 rounding ties, including both clip ends and the exact window edges.
WINDOW_CENTER, WINDOW_WIDTH = 2048, 1001
POINTS = np.array([[0, 1547, 1548, 1552, 1800, 2048, 2300, 2540, 2548, 2549, 3000, 4095]], dtype=np.uint16)
# y = ((x - 2047.5) / 1000 + 0.5) * 255 inside (1547.5, 2547.5], 0 below, 255 above.
POINT_LEVELS = [0, 0, 0, 1, 64, 128, 192, 253, 255, 255, 255, 255]


def test_header_window_gives_the_dicom_linear_values():
    ds = make_dataset(POINTS, bits_stored=12, WindowCenter=WINDOW_CENTER, WindowWidth=WINDOW_WIDTH)
    image = only_frame(ds)
    assert image.dtype == np.uint8 and image.shape == POINTS.shape
    expected = np.rint(dicom_linear(POINTS, WINDOW_CENTER, WINDOW_WIDTH))
    assert expected[0].astype(int).tolist() == POINT_LEVELS  # the helper agrees with the hand values
    assert image[0].tolist() == POINT_LEVELS


def test_header_window_takes_the_first_of_several_values():
    ds = make_dataset(POINTS, bits_stored=12, WindowCenter=[WINDOW_CENTER, 40], WindowWidth=[WINDOW_WIDTH, 80])
    assert only_frame(ds).tolist() == np.rint(dicom_linear(POINTS, WINDOW_CENTER, WINDOW_WIDTH)).astype(int).tolist()


def test_narrow_window_clips_to_zero_not_to_an_absolute_value():
    # A width of 10 stored units: 25 grey levels per unit; values below must be 0, not |negative|.
    values = np.arange(980, 1021, dtype=np.uint16)[np.newaxis]
    ds = make_dataset(values, bits_stored=12, WindowCenter=1000, WindowWidth=11)
    assert_close(only_frame(ds), np.rint(dicom_linear(values, 1000, 11)), tolerance=1)
    assert only_frame(ds)[0, :15].max() == 0


def test_random_image_matches_the_formula_everywhere():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 4096, size=(64, 80), dtype=np.uint16)
    ds = make_dataset(pixels, bits_stored=12, WindowCenter=1500.5, WindowWidth=2200)
    assert_close(only_frame(ds), np.rint(dicom_linear(pixels, 1500.5, 2200)))


def test_monochrome1_is_the_inverse_of_monochrome2():
    mono2 = only_frame(make_dataset(POINTS, bits_stored=12, WindowCenter=WINDOW_CENTER, WindowWidth=WINDOW_WIDTH))
    mono1_ds = make_dataset(
        POINTS, photometric="MONOCHROME1", bits_stored=12, WindowCenter=WINDOW_CENTER, WindowWidth=WINDOW_WIDTH
    )
    assert only_frame(mono1_ds).tolist() == (255 - mono2).tolist()
    for window in ("minmax", "none"):
        options = RenderOptions(window=window)
        assert (
            only_frame(mono1_ds, options).tolist()
            == (255 - only_frame(make_dataset(POINTS, bits_stored=12), options)).tolist()
        )


def test_ct_rescale_is_applied_before_the_window():
    hounsfield = np.array([[-1024, -160, -150, 0, 40, 100, 239, 240, 241, 3071]], dtype=np.int16)
    stored = (hounsfield + 1024).astype(np.uint16)
    ds = make_dataset(stored, bits_stored=12, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400)
    image = only_frame(ds)
    assert_close(image, np.rint(dicom_linear(hounsfield, 40, 400)))
    assert image[0, 0] == 0 and image[0, -1] == 255


def test_rescale_slope_is_folded_in():
    stored = np.array([[0, 100, 200, 300, 400, 500]], dtype=np.uint16)
    ds = make_dataset(stored, RescaleSlope=2.5, RescaleIntercept=-100, WindowCenter=500, WindowWidth=800)
    assert_close(only_frame(ds), np.rint(dicom_linear(stored * 2.5 - 100, 500, 800)))


def test_signed_pixels_with_unused_high_bits_are_sign_extended():
    # 12-bit signed values stored in 16 bits with the high 4 bits left as zeros (as some writers do):
    # -5 is stored as 0x0FFB and must decode as -5, as pydicom's pixel_array does.
    values = np.array([[-2048, -5, 0, 5, 2047]], dtype=np.int16)
    raw = (values.astype(np.int32) & 0x0FFF).astype(np.int16)
    ds = make_dataset(raw, bits_stored=12, WindowCenter=0, WindowWidth=4096)
    decoded = decode_pixels(ds)
    assert decoded.shape == (1, 1, 5) and decoded.dtype == np.int16
    assert decoded[0].tolist() == values.tolist()
    assert decoded[0].tolist() == ds.pixel_array.tolist()
    assert_close(only_frame(ds), np.rint(dicom_linear(values, 0, 4096)))


def test_unsigned_garbage_above_bits_stored_is_masked_like_pydicom():
    values = np.array([[0, 100, 4095]], dtype=np.uint16)
    ds = make_dataset(values | 0xF000, bits_stored=12)
    assert decode_pixels(ds)[0].tolist() == values.tolist() == ds.pixel_array.tolist()


def test_minmax_stretches_the_instance_range():
    pixels = np.array([[100, 150, 200, 300]], dtype=np.uint16)
    ds = make_dataset(pixels, WindowCenter=0, WindowWidth=10)
    image = only_frame(ds, RenderOptions(window="minmax"))
    assert image.tolist() == [[0, 64, 128, 255]]  # 63.75 and 127.5 round to 64 and 128


def test_header_without_window_falls_back_to_minmax():
    pixels = np.array([[100, 150, 200, 300]], dtype=np.uint16)
    assert only_frame(make_dataset(pixels)).tolist() == [[0, 64, 128, 255]]


def test_none_maps_the_representable_range():
    unsigned = make_dataset(np.array([[0, 1000, 2048, 4095]], dtype=np.uint16), bits_stored=12)
    expected = np.rint(np.array([0, 1000, 2048, 4095]) * 255 / 4095).astype(int).tolist()
    assert only_frame(unsigned, RenderOptions(window="none")).tolist() == [expected]
    # A rescale shifts the range and the values together: same picture.
    rescaled = make_dataset(
        np.array([[0, 1000, 2048, 4095]], dtype=np.uint16), bits_stored=12, RescaleSlope=1, RescaleIntercept=-1024
    )
    assert only_frame(rescaled, RenderOptions(window="none")).tolist() == [expected]
    signed = make_dataset(np.array([[-2048, 0, 2047]], dtype=np.int16), bits_stored=12)
    assert only_frame(signed, RenderOptions(window="none")).tolist() == [[0, 128, 255]]


def test_explicit_window_overrides_the_header():
    ds = make_dataset(POINTS, bits_stored=12, WindowCenter=100, WindowWidth=50)
    options = RenderOptions(window_center=WINDOW_CENTER, window_width=WINDOW_WIDTH, window="minmax")
    assert (
        only_frame(ds, options).tolist()
        == np.rint(dicom_linear(POINTS, WINDOW_CENTER, WINDOW_WIDTH)).astype(int).tolist()
    )


def test_sixteen_bit_output():
    ds = make_dataset(POINTS, bits_stored=12, WindowCenter=WINDOW_CENTER, WindowWidth=WINDOW_WIDTH)
    image = only_frame(ds, RenderOptions(bit_depth=16))
    assert image.dtype == np.uint16
    assert_close(image, np.rint(dicom_linear(POINTS, WINDOW_CENTER, WINDOW_WIDTH, top=65535)))
    assert image[0, 0] == 0 and image[0, -1] == 65535


@pytest.mark.parametrize(("center", "width"), [(40, 100), (40, 2), (-30000, 50), (30000, 50)])
def test_narrow_windows_into_16_bit_stay_exact(center, width):
    # Large slopes (65535 / width per stored unit) must not lose the rounding in float32 arithmetic.
    rng = np.random.default_rng(5)
    stored = rng.integers(-32768, 32768, size=(50, 60), dtype=np.int16)
    stored[0, :5] = [-32768, 32767, center, center - width // 2, center + width // 2]
    ds = make_dataset(stored, RescaleSlope=1, RescaleIntercept=0)
    options = RenderOptions(window_center=center, window_width=width, bit_depth=16)
    assert_close(only_frame(ds, options), np.rint(dicom_linear(stored, center, width, top=65535)))


def test_sigmoid_voi_function():
    ds = make_dataset(POINTS, bits_stored=12, WindowCenter=2048, WindowWidth=1000, VOILUTFunction="SIGMOID")
    expected = np.rint(255 / (1 + np.exp(-4 * (POINTS.astype(float) - 2048) / 1000)))
    assert_close(only_frame(ds), expected)
    assert only_frame(ds)[0, 5] == 128  # the centre maps to half way


def test_linear_exact_voi_function():
    ds = make_dataset(POINTS, bits_stored=12, WindowCenter=2048, WindowWidth=1000, VOILUTFunction="LINEAR_EXACT")
    expected = np.clip(np.rint(((POINTS.astype(float) - 2048) / 1000 + 0.5) * 255), 0, 255)
    assert_close(only_frame(ds), expected)


def test_float_pixel_data_renders_with_minmax():
    values = np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32)
    ds = make_dataset(values.astype(np.uint8))  # image module attributes, then swap in float pixels
    del ds.PixelData
    ds.BitsAllocated = 32
    del ds.BitsStored, ds.HighBit, ds.PixelRepresentation
    ds.FloatPixelData = values.tobytes()
    assert has_pixel_data(ds)
    assert only_frame(ds, RenderOptions(window="none")).tolist() == [[0, 64, 128, 255]]


# --------------------------------------------------------------------------------------------------
# Colour


def palette_dataset(indices: np.ndarray, red: list[int], green: list[int], blue: list[int]) -> Dataset:
    ds = make_dataset(indices.astype(np.uint8), photometric="PALETTE COLOR")
    for colour, entries in (("Red", red), ("Green", green), ("Blue", blue)):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [len(entries), 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", np.asarray(entries, dtype="<u2").tobytes())
    return ds


def test_palette_color_maps_through_the_lut():
    ds = palette_dataset(
        np.array([[0, 1], [2, 3]]),
        red=[0, 65535, 0, 32896],
        green=[0, 0, 65535, 32896],
        blue=[65535, 0, 0, 32896],
    )
    image = only_frame(ds)
    assert image.dtype == np.uint8 and image.shape == (2, 2, 3)
    assert image.tolist() == [[[0, 0, 255], [255, 0, 0]], [[0, 255, 0], [128, 128, 128]]]
    assert only_frame(ds, RenderOptions(bit_depth=16))[1, 1].tolist() == [32896] * 3


def test_palette_with_8_bit_values_in_16_bit_entries():
    ds = palette_dataset(np.array([[0, 1]]), red=[0, 255], green=[0, 128], blue=[0, 0])
    assert only_frame(ds).tolist() == [[[0, 0, 0], [255, 128, 0]]]


def test_rgb_passes_through_and_scales_to_16_bit():
    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [10, 20, 30]]], dtype=np.uint8)
    ds = make_dataset(rgb, photometric="RGB", WindowCenter=10, WindowWidth=2)  # colour ignores windows
    assert only_frame(ds).tolist() == rgb.tolist()
    assert only_frame(ds, RenderOptions(bit_depth=16)).tolist() == (rgb.astype(np.uint16) * 257).tolist()
    assert decode_pixels(ds).shape == (1, 2, 2, 3)


def test_ybr_full_is_converted_to_rgb_once():
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, size=(8, 10, 3), dtype=np.uint8)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    image = only_frame(make_dataset(ybr, photometric="YBR_FULL"))
    assert_close(image, rgb, tolerance=2)


# --------------------------------------------------------------------------------------------------
# Frames and resizing


def test_multi_frame_gives_one_image_per_frame():
    pixels = np.stack([np.full((4, 5), value, dtype=np.uint16) for value in (0, 2048, 4095)])
    ds = make_dataset(pixels, bits_stored=12, frames=True, WindowCenter=2048, WindowWidth=4096)
    assert decode_pixels(ds).shape == (3, 4, 5)
    images = render_frames(ds, RenderOptions())
    assert [image.shape for image in images] == [(4, 5)] * 3
    assert [int(image[0, 0]) for image in images] == [0, 128, 255]
    pngs = render_png_frames(ds, RenderOptions())
    assert len(pngs) == 3 and all(png.startswith(b"\x89PNG") for png in pngs)


def test_single_frame_still_has_a_frame_axis():
    assert decode_pixels(make_dataset(np.zeros((4, 5), np.uint16))).shape == (1, 4, 5)


def checkerboard(size: int, low: int, high: int, dtype=np.uint8) -> np.ndarray:
    board = (np.indices((size, size)).sum(axis=0) % 2).astype(bool)
    return np.where(board, high, low).astype(dtype)


def test_resize_is_anti_aliased():
    ds = make_dataset(checkerboard(64, 0, 255))
    for size in ((32, 32), (24, 20), (7, 9)):
        image = only_frame(ds, RenderOptions(window="none", resize=size))
        assert image.shape == size
        # Bilinear/nearest sampling of a 1-px checkerboard gives 0s and 255s; area averaging gives grey.
        assert image.min() >= 120 and image.max() <= 135, (size, image.min(), image.max())


def test_resize_enlarges_and_keeps_colour():
    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    image = only_frame(make_dataset(rgb, photometric="RGB"), RenderOptions(resize=(8, 12)))
    assert image.shape == (8, 12, 3)
    assert (image[..., 0] == 200).all() and (image[..., 1:] == 0).all()


def test_resize_before_window_windows_the_averaged_values():
    # Stored 0/4000 checkerboard, window 500-1500: per pixel 0 or 255, so window-then-resize averages
    # to grey; resize-then-window first averages to 2000, above the window, so white.
    ds = make_dataset(checkerboard(16, 0, 4000, np.uint16), bits_stored=12, WindowCenter=1000, WindowWidth=1000)
    reference = only_frame(ds, RenderOptions(resize=(8, 8)))
    fast = only_frame(ds, RenderOptions(resize=(8, 8), resize_before_window=True))
    assert reference.shape == fast.shape == (8, 8)
    assert reference.min() >= 126 and reference.max() <= 129
    assert (fast == 255).all()


def test_resize_orders_agree_on_smooth_images():
    ramp = np.tile(np.linspace(0, 4095, 200), (120, 1)).astype(np.uint16)
    ds = make_dataset(ramp, bits_stored=12, WindowCenter=2000, WindowWidth=3000)
    reference = only_frame(ds, RenderOptions(resize=(30, 50)))
    fast = only_frame(ds, RenderOptions(resize=(30, 50), resize_before_window=True))
    assert_close(fast, reference, tolerance=2)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.int32, np.float64])
def test_resize_image_keeps_dtype_and_averages(dtype):
    board = checkerboard(20, 0, 100, dtype)
    small = resize_image(board, 10, 10)
    assert small.dtype == np.dtype(dtype) and small.shape == (10, 10)
    assert np.allclose(small.astype(float), 50, atol=1)
    assert resize_image(board, 30, 40).shape == (30, 40)
    assert resize_image(board, 10, 40).shape == (10, 40)  # one axis shrinks, the other grows


def test_resize_image_channels_and_errors():
    assert resize_image(np.zeros((10, 10, 3), np.uint8), 5, 4).shape == (5, 4, 3)
    assert resize_image(np.zeros((10, 10, 1), np.uint16), 5, 4).shape == (5, 4, 1)
    same = np.zeros((5, 5), np.uint8)
    assert resize_image(same, 5, 5) is same
    with pytest.raises(ValueError):
        resize_image(same, 0, 5)
    with pytest.raises(ValueError):
        resize_image(np.zeros((5, 5), bool), 2, 2)


def test_resize_image_matches_single_step_area_closely():
    rng = np.random.default_rng(3)
    image = cv2.GaussianBlur(rng.integers(0, 256, (500, 410), dtype=np.uint8), (0, 0), 2)
    for height, width in ((250, 205), (100, 82), (333, 400)):  # no halving first: at most 1 level off
        reference = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        assert_close(resize_image(image, height, width), reference, tolerance=1)
    # Far reductions are halved first (2x2 block means): a shade more blur on fine texture, little else.
    reference = cv2.resize(image, (61, 73), interpolation=cv2.INTER_AREA)
    halved_first = resize_image(image, 73, 61)
    assert_close(halved_first, reference, tolerance=2)
    assert np.abs(halved_first.astype(int) - reference).mean() < 0.5


def test_halving_first_is_exact_at_integer_factors_and_close_on_smooth_images():
    rng = np.random.default_rng(5)
    texture = rng.integers(0, 4096, (480, 360), dtype=np.uint16)
    blocks = texture.reshape(60, 8, 45, 8).mean(axis=(1, 3))
    assert_close(resize_image(texture, 60, 45), np.rint(blocks), tolerance=1)  # 8x8 means, by 2x2 thrice
    rows, cols = np.indices((2500, 2048))
    smooth = (2000 + 900 * np.sin(rows / 150) * np.cos(cols / 110)).astype(np.uint16)  # X-ray-like scale
    reference = cv2.resize(smooth, (299, 299), interpolation=cv2.INTER_AREA)
    assert_close(resize_image(smooth, 299, 299), reference, tolerance=1)


# --------------------------------------------------------------------------------------------------
# PNG encoding and options


def test_encode_png_round_trips_grey_rgb_and_16_bit():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[..., 0] = 255  # red
    deep = (np.arange(12, dtype=np.uint16) * 5000).reshape(3, 4)
    for image in (grey, deep):
        decoded = cv2.imdecode(np.frombuffer(encode_png(image), np.uint8), cv2.IMREAD_UNCHANGED)
        assert decoded.dtype == image.dtype and decoded.tolist() == image.tolist()
    decoded = cv2.imdecode(np.frombuffer(encode_png(rgb, compression=9), np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded[..., ::-1].tolist() == rgb.tolist()  # cv2 decodes to BGR: red is the last channel


@pytest.mark.parametrize(
    ("image", "compression"),
    [
        (np.zeros((3, 3), np.float32), 1),
        (np.zeros((3, 3, 2), np.uint8), 1),
        (np.zeros((3, 3), np.uint8), 10),
        (np.zeros((0, 3), np.uint8), 1),
    ],
)
def test_encode_png_rejects_what_png_cannot_hold(image, compression):
    with pytest.raises(ValueError):
        encode_png(image, compression)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window": "auto"},
        {"window_center": 40},
        {"window_center": 40, "window_width": 0.5},
        {"bit_depth": 12},
        {"resize": (0, 10)},
        {"resize": (10,)},
        {"png_compression": 10},
    ],
)
def test_render_options_are_validated(kwargs):
    with pytest.raises(ValueError):
        RenderOptions(**kwargs)


def test_render_options_accept_a_list_for_resize():
    assert RenderOptions(resize=[299, 300]).resize == (299, 300)


# --------------------------------------------------------------------------------------------------
# Real files


LOSSLESS_TWINS = [
    "MR_small_RLE.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_implicit.dcm",
    "MR_small_expb.dcm",
]


@pytest.mark.parametrize("name", LOSSLESS_TWINS)
def test_lossless_variants_render_like_the_uncompressed_file(name):
    reference = render_frames(read("MR_small.dcm"), RenderOptions())
    assert len(reference) == 1 and reference[0].shape == (64, 64)
    images = render_frames(read(name), RenderOptions())
    assert len(images) == 1 and np.array_equal(images[0], reference[0])


def test_mr_small_uses_its_header_window():
    ds = read("MR_small.dcm")
    expected = np.rint(dicom_linear(ds.pixel_array, float(ds.WindowCenter), float(ds.WindowWidth)))
    assert_close(only_frame(ds), expected)


def test_deflated_file_renders():
    image = only_frame(read("image_dfl.dcm"))
    assert image.shape == (512, 512) and image.dtype == np.uint8 and image.max() > image.min()


@pytest.mark.parametrize("name", ["SC_rgb_rle.dcm", "SC_rgb_jpeg_gdcm.dcm", "SC_rgb_expb.dcm", "SC_rgb_16bit.dcm"])
def test_rgb_lossless_variants_match(name):
    assert np.array_equal(only_frame(read(name)), only_frame(read("SC_rgb.dcm")))


@pytest.mark.parametrize(
    "name",
    [
        "SC_rgb_jpeg_dcmtk.dcm",
        "SC_rgb_jpeg_lossy_gdcm.dcm",
        "SC_rgb_dcmtk_+eb+cy+np.dcm",
        "SC_ybr_full_422_uncompressed.dcm",
    ],
)
def test_rgb_lossy_and_ybr_variants_are_close(name):
    reference = only_frame(read("SC_rgb.dcm")).astype(int)
    image = only_frame(read(name))
    assert image.shape == reference.shape == (100, 100, 3)
    assert np.abs(image.astype(int) - reference).mean() < 5


def test_jpeg_lossless_plugin_is_registered_idempotently():
    assert codecs.register_decoder_plugins() is True
    assert codecs.register_decoder_plugins() is True
    for tsyntax in (JPEGLossless, JPEGLosslessSV1, JPEGExtended12Bit):
        assert codecs.PLUGIN_NAME in get_decoder(tsyntax).available_plugins


def test_jpeg_lossless_file_decodes_like_pylibjpeg():
    ds = read("JPEG-LL.dcm")
    ours = pydicom.pixels.pixel_array(ds, decoding_plugin=codecs.PLUGIN_NAME)
    theirs = pydicom.pixels.pixel_array(ds, decoding_plugin="pylibjpeg")
    assert ours.dtype == theirs.dtype == np.int16
    assert np.array_equal(ours, theirs)
    assert np.array_equal(decode_pixels(ds)[0], theirs)


@pytest.mark.parametrize(
    ("tsyntax", "bits", "signed"),
    [(JPEGLosslessSV1, 12, False), (JPEGLossless, 16, False), (JPEGLosslessSV1, 12, True)],
)
def test_self_made_jpeg_lossless_decodes_exactly(tsyntax, bits, signed):
    rng = np.random.default_rng(4)
    frames = rng.integers(0, 2**bits, size=(2, 40, 30), dtype=np.uint16)
    ds = make_dataset(frames.astype(np.int16) if signed else frames, bits_stored=bits, frames=True)
    ds.PixelData = encapsulate(
        [imagecodecs.jpeg8_encode(f, lossless=True, predictor=1, bitspersample=bits) for f in frames]
    )
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = tsyntax
    expected = frames.astype(np.int64)
    if signed:  # two's complement in `bits` bits, as pydicom sign-extends
        expected = np.where(expected >= 2 ** (bits - 1), expected - 2**bits, expected)
    decoded = decode_pixels(ds)
    assert decoded.shape == (2, 40, 30)
    assert np.array_equal(decoded.astype(np.int64), expected)
    assert np.array_equal(pydicom.pixels.pixel_array(ds, decoding_plugin="pylibjpeg").astype(np.int64), expected)


def test_broken_12_bit_lossy_jpeg_falls_back_to_imagecodecs():
    # NEMA NM1_JPLY: GDCM and Pillow refuse 12-bit lossy JPEG, pylibjpeg rejects its scan header.
    broken = decode_pixels(read("JPEG-lossy.dcm"))
    fixed = decode_pixels(read("JPGExtended.dcm"))
    assert broken.shape == fixed.shape == (1, 1024, 256)
    assert_close(broken, fixed, tolerance=1)


@pytest.mark.parametrize(
    ("name", "frames", "shape"),
    [
        ("examples_palette.dcm", 1, (350, 800, 3)),
        ("examples_ybr_color.dcm", 30, (240, 320, 3)),
        ("SC_ybr_full_422_uncompressed.dcm", 1, (100, 100, 3)),
        ("emri_small.dcm", 10, (64, 64)),
        ("emri_small_jpeg_ls_lossless.dcm", 10, (64, 64)),
        ("rtdose.dcm", 15, (10, 10)),
        ("liver.dcm", 3, (512, 512)),
    ],
)
def test_real_files_render_one_image_per_frame(name, frames, shape):
    images = render_frames(read(name), RenderOptions())
    assert len(images) == frames
    assert all(image.shape == shape and image.dtype == np.uint8 for image in images)


def test_multi_frame_variants_agree():
    reference = render_frames(read("emri_small.dcm"), RenderOptions())
    for name in ("emri_small_RLE.dcm", "emri_small_big_endian.dcm", "emri_small_jpeg_2k_lossless.dcm"):
        assert all(
            np.array_equal(a, b) for a, b in zip(render_frames(read(name), RenderOptions()), reference, strict=True)
        )


def test_palette_byte_order_variants_agree():
    # The big-endian copy stores 8-bit palette values in 16-bit entries; both must look the same.
    little = only_frame(read("OBXXXX1A.dcm"))
    big = only_frame(read("OBXXXX1A_expb.dcm"))
    assert_close(big, little, tolerance=1)


def test_enhanced_ct_uses_functional_group_rescale_and_window():
    ds = read("eCT_Supplemental.dcm")  # shared groups: intercept -1024, window 49/102
    stored = ds.pixel_array
    images = render_frames(ds, RenderOptions())
    assert len(images) == 2
    for frame, image in zip(stored, images, strict=True):
        assert_close(image, np.rint(dicom_linear(frame.astype(float) - 1024, 49, 102)))


def test_modality_lut_sequence():
    ds = read("mlut_18.dcm")
    values = apply_modality_lut(ds.pixel_array, ds).astype(float)
    low, high = values.min(), values.max()
    assert_close(only_frame(ds), np.rint((values - low) / (high - low) * 255))


def test_voi_lut_sequence():
    ds = read("vlut_04.dcm")
    expected = np.rint(apply_voi(ds.pixel_array, ds).astype(float) / 65535 * 255)
    assert_close(only_frame(ds), expected)


def test_jpeg2000_pixel_representation_mismatch_renders():
    image = only_frame(read("J2K_pixelrep_mismatch.dcm"))
    assert image.shape == (512, 512) and 0 < image.mean() < 255


def test_monochrome1_file_renders_inverted():
    ds = read("RG3_UNCR.dcm")  # MONOCHROME1, window 550/1024
    stored = ds.pixel_array
    assert_close(only_frame(ds), 255 - np.rint(dicom_linear(stored, 550, 1024)))


@pytest.mark.parametrize(
    "name",
    [
        "MR_small.dcm",
        "CT_small.dcm",
        "image_dfl.dcm",
        "emri_small.dcm",
        "rtdose.dcm",
        "693_UNCR.dcm",
        "MR_small_implicit.dcm",
    ],
)
def test_fast_native_decode_equals_pydicom(name):
    ds = read(name)
    expected = ds.pixel_array
    decoded = decode_pixels(read(name))
    assert decoded.dtype == expected.dtype
    assert np.array_equal(decoded.reshape(expected.shape), expected)


def test_truncated_pixel_data_raises_render_error():
    with pytest.raises(RenderError, match="Explicit VR Little Endian"):
        render_frames(read("MR_truncated.dcm"), RenderOptions())


def test_non_image_dataset_has_no_pixel_data():
    ds = read("rtplan.dcm")
    assert not has_pixel_data(ds)
    with pytest.raises(RenderError, match="no Pixel Data"):
        render_frames(ds, RenderOptions())


def test_has_pixel_data_does_not_load_deferred_pixels():
    ds = read("MR_small.dcm", defer_size=256)
    assert has_pixel_data(ds)
    assert ds._dict[0x7FE00010].value is None  # noqa: SLF001 - still deferred (get_item would read it)
    assert only_frame(ds).shape == (64, 64)


def test_undecodable_pixels_raise_render_error():
    ds = make_dataset(np.zeros((4, 4), np.uint16))
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([b"\xff\xd8not a jpeg\xff\xd9"])
    ds["PixelData"].VR = "OB"
    with pytest.raises(RenderError, match="JPEG Lossless"):
        render_frames(ds, RenderOptions())


def test_unsupported_transfer_syntax_raises_render_error():
    ds = make_dataset(np.zeros((4, 4), np.uint8))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 Main Profile: video, no decoder
    ds.PixelData = encapsulate([b"\x00" * 16])
    with pytest.raises(RenderError, match="MPEG2"):
        render_frames(ds, RenderOptions())


def test_render_png_frames_are_pngs_of_the_rendered_frames():
    ds = read("MR_small.dcm")
    options = RenderOptions(resize=(32, 32), png_compression=6)
    (png,) = render_png_frames(ds, options)
    decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(decoded, only_frame(ds, options))
    assert math.isclose(decoded.shape[0], 32)


# ---------------------------------------------------------------------------------------------------
# Pixel padding and the min-max window


def _padded_ct(**attributes) -> tuple[Dataset, np.ndarray]:
    """A CT head: -3024 HU padding outside a circular field, air (-1000 HU) and tissue (+40 HU) inside."""
    size = 64
    yy, xx = np.mgrid[:size, :size]
    inside = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.44) ** 2
    hu = np.full((size, size), -3024, np.int16)
    hu[inside] = -1000
    hu[inside & (np.abs(yy - size / 2) < 12) & (np.abs(xx - size / 2) < 12)] = 40
    stored = (hu + 1024).astype(np.int16)  # RescaleIntercept -1024
    ds = make_dataset(
        stored, Modality="CT", RescaleSlope=1, RescaleIntercept=-1024, PixelPaddingValue=-2000, **attributes
    )
    return ds, inside


def test_minmax_window_ignores_pixel_padding():
    ds, inside = _padded_ct()
    assert (~inside).mean() > 0.2  # padding is a fifth of the image, as in the reported CT head
    image = only_frame(ds, RenderOptions(window="minmax"))
    air = image[inside & (image < 128)]
    assert air.size and air.max() == 0  # air inside the field is black, not mid-grey
    assert image[inside].max() == 255
    assert (image[~inside] == 0).all()  # padding lies below the image's minimum


def test_minmax_window_ignores_a_pixel_padding_range():
    ds, inside = _padded_ct()
    ds.PixelPaddingValue, ds.PixelPaddingRangeLimit = -2000, -2100  # stored -2000 (= -3024 HU) … -2100
    image = only_frame(ds, RenderOptions(window="minmax"))
    assert image[inside].min() == 0 and image[inside].max() == 255


def test_header_window_fallback_ignores_pixel_padding():
    ds, inside = _padded_ct()  # no WindowCenter/Width: "header" falls back to min-max
    header, minmax = only_frame(ds, RenderOptions(window="header")), only_frame(ds, RenderOptions(window="minmax"))
    assert np.array_equal(header, minmax)
    assert only_frame(ds)[inside].min() == 0


# ---------------------------------------------------------------------------------------------------
# Resize modes: stretch (distorts), pad (letterbox), crop (cover)


def test_resize_plans_keep_the_aspect_ratio_unless_stretching():
    from medbeam.imaging.resize import plan_resize

    assert plan_resize(480, 640, 299, 299, "stretch").inner == (299, 299)
    pad = plan_resize(480, 640, 299, 299, "pad")
    assert pad.inner == (224, 299) and pad.pad == (37, 38, 0, 0)
    crop = plan_resize(480, 640, 299, 299, "crop")
    assert crop.crop == (0, 80, 480, 480) and crop.inner == (299, 299)
    with pytest.raises(ValueError, match="resize mode"):
        plan_resize(480, 640, 299, 299, "squash")


def test_pad_and_crop_render_an_ultrasound_undistorted():
    # A 480x640 frame holding a centred disc: stretched it becomes an ellipse; padded or cropped it stays round.
    yy, xx = np.mgrid[:480, :640]
    disc = ((yy - 240) ** 2 + (xx - 320) ** 2 < 200**2).astype(np.uint8) * 200 + 50
    ds = make_dataset(disc, Modality="US", WindowCenter=127.5, WindowWidth=256)

    def extent(mask: np.ndarray) -> tuple[int, int]:
        rows, cols = np.nonzero(mask)
        return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1

    stretch = only_frame(ds, RenderOptions(resize=(299, 299)))
    pad = only_frame(ds, RenderOptions(resize=(299, 299), resize_mode="pad"))
    crop = only_frame(ds, RenderOptions(resize=(299, 299), resize_mode="crop"))
    fast_pad = only_frame(ds, RenderOptions(resize=(299, 299), resize_mode="pad", resize_before_window=True))
    assert all(image.shape == (299, 299) for image in (stretch, pad, crop, fast_pad))
    height, width = extent(stretch > 128)
    assert height / width > 1.25  # squeezed sideways into an ellipse
    for image in (pad, crop):
        height, width = extent(image > 128)
        assert abs(width - height) <= 2
    assert (pad[:37] == 0).all() and (pad[-38:] == 0).all() and pad[37:-38].min() > 0  # black letterbox
    assert (fast_pad[:37] == 0).all() and (fast_pad[-38:] == 0).all()
    with pytest.raises(ValueError, match="resize mode"):
        RenderOptions(resize=(8, 8), resize_mode="squash")
