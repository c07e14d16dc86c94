"""DICOM radiographs -> the grey image a radiologist would see, as float32 [h, w, 1] in 0..1 (bone bright).

The rest of cxrlt reads JPEG and PNG with TensorFlow's decoders; a hospital's archive is DICOM. pydicom (with
the pylibjpeg plugins for JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000 and RLE) reads the file here, in
Python, and hands the pipeline the same 0..1 grey image a PNG decode gives, which is then resized exactly like a
PNG (pipeline.decode_grey calls `decode` through tf.numpy_function). The steps, in the DICOM standard's order
(PS3.3 C.11, PS3.4 N.2):

1. pixel data decoded by pydicom (BitsStored honoured: unused high bits masked, the sign applied);
2. Modality LUT: the Modality LUT Sequence or RescaleSlope/RescaleIntercept (`apply_modality_lut`);
3. VOI: by `input.dicom_window` (WINDOWS below):
   - stored: the file's VOI LUT Sequence or its first WindowCenter/WindowWidth (`apply_voi_lut`: the view the
     modality chose for reading), normalised by the LUT's output range or the window's output range; a file
     with neither falls back to `percentile`;
   - full_range: the whole range the stored bits can hold after the Modality LUT (12 bits: 0..4095);
   - minmax: the image's own min..max; percentile: its 0.5..99.5 % values, clipped (the rule 16-bit PNGs get
     with input.intensity percentile: a few burned-in saturated pixels do not squeeze the anatomy);
4. MONOCHROME1 (the lowest value is white) inverted, so bone is bright as in MONOCHROME2 and every JPEG/PNG.

Colour images (RGB, YBR_*) become grey with the luma weights TensorFlow's grey decode uses. Refused, naming the
file: multi-frame images (which frame would be the radiograph?), non-image objects (SR, encapsulated PDF,
RT plans: no Pixel Data), PALETTE COLOR, truncated pixel data, transfer syntaxes no installed plugin decodes.

Privacy: nothing from a DICOM header is copied into any output; errors name the file and the technical
attribute at fault (transfer syntax, photometric interpretation, frame count, SOP class), never a patient,
study, date or UID. A file counts as DICOM by its content (the "DICM" marker at byte 128 of a Part 10 file),
whatever its name; the pipeline only adds the Python decoding step to lists that hold .dcm/.dicom names or
files without an extension (`list_has_dicom`).
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass

import numpy as np

from ..config.schema import DICOM_WINDOWS as WINDOWS, MAX_IMAGE_PIXELS
from ..utils.errors import UserError

MAGIC_OFFSET, MAGIC = 128, b"DICM"
SUFFIXES = (".dcm", ".dicom", ".dic")
PERCENTILES = (0.5, 99.5)  # the 16-bit PNG rule's (pipeline.PERCENTILES)
LUMA = (0.2989, 0.5870, 0.1140)  # tf.image.rgb_to_grayscale's weights: a colour PNG decodes to grey with these
GREY = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")
_SEQUENCE_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # (FFFE,E0DD) with length 0: the end of encapsulated pixel data


class DicomError(UserError):
    """A DICOM file cxrlt cannot turn into a radiograph; the message names the file and what to do."""


# ------------------------------------------------------------------------------------------ recognising

def is_dicom_bytes(head: bytes) -> bool:
    """True for a DICOM Part 10 file's first 132+ bytes (128-byte preamble, then "DICM")."""
    return head[MAGIC_OFFSET:MAGIC_OFFSET + 4] == MAGIC


def is_dicom_file(path) -> bool:
    """True when the file starts like a DICOM Part 10 file (False for a missing or unreadable one)."""
    try:
        with open(path, "rb") as fh:
            return is_dicom_bytes(fh.read(MAGIC_OFFSET + 4))
    except OSError:
        return False


def may_be_dicom(path) -> bool:
    """A name that says DICOM (.dcm, .dicom, .dic), or no extension at all and DICOM content."""
    suffix = os.path.splitext(str(path))[1].lower()
    if suffix in SUFFIXES:
        return True
    return suffix == "" and is_dicom_file(path)


def list_has_dicom(paths) -> bool:
    """Whether an image list may hold DICOM files, so its decoder needs the Python step. Stops at the first one;
    only extension-less names are opened."""
    return any(may_be_dicom(p) for p in np.asarray(paths, dtype=str).ravel())


def check_window(window: str) -> str:
    if window not in WINDOWS:
        raise DicomError(f"input.dicom_window must be one of {', '.join(WINDOWS)}, got {window!r}")
    return window


# ------------------------------------------------------------------------------------------ reading

def _pydicom():
    try:
        import pydicom
    except ImportError:  # pragma: no cover - pydicom is in install_requires
        raise DicomError("reading DICOM needs pydicom and the pylibjpeg plugins: pip install cxrlt again "
                         "(they are in its install_requires)") from None
    return pydicom


def read_dataset(source, name: str = "", *, stop_before_pixels: bool = False):
    """pydicom Dataset from a path, bytes or an open binary file (checked by the caller); a file that is not
    DICOM Part 10 or breaks off raises DicomError naming it."""
    pydicom = _pydicom()
    name = name or (str(source) if isinstance(source, (str, os.PathLike)) else "DICOM bytes")
    not_part10 = (f"{name}: not a DICOM Part 10 file (no 'DICM' marker at byte 128); export it from the archive "
                  "as a DICOM file, or as PNG/JPEG")
    if isinstance(source, (bytes, bytearray)):
        if not is_dicom_bytes(bytes(source[:MAGIC_OFFSET + 4])):
            raise DicomError(not_part10)
        source = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)) and not is_dicom_file(source):
        raise DicomError(not_part10)
    try:
        return pydicom.dcmread(source, stop_before_pixels=stop_before_pixels)
    except Exception as err:  # noqa: BLE001 - pydicom raises InvalidDicomError, EOFError, struct/ValueErrors
        raise DicomError(f"{name}: unreadable DICOM ({type(err).__name__}: {str(err)[:160]}); the file is "
                         "damaged or truncated: copy it again from the archive") from None


def transfer_syntax(ds):
    """The file's transfer syntax UID (pydicom UID), Explicit VR Little Endian when the meta lacks one."""
    from pydicom.uid import UID, ExplicitVRLittleEndian

    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return UID(ts) if ts else ExplicitVRLittleEndian


def transfer_syntax_name(ds) -> str:
    ts = transfer_syntax(ds)
    return ts.name if ts.name != str(ts) else f"unknown ({ts})"


def frame_count(ds) -> int:
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1


def refusal(ds, name: str, has_pixels: bool | None = None) -> str | None:
    """Why this dataset holds no usable radiograph, or None. Header attributes only (nothing decoded);
    `has_pixels` for a dataset read without its pixel data (None: look for the element)."""
    if not (("PixelData" in ds) if has_pixels is None else has_pixels):
        sop = ds.get("SOPClassUID")
        what = getattr(sop, "name", None) or (f"SOP class {sop}" if sop else "no SOP class")
        return (f"{name}: DICOM without Pixel Data ({what}): a report, document or other non-image object; leave "
                "it out of the image list")
    frames = frame_count(ds)
    if frames > 1:
        return (f"{name}: multi-frame DICOM ({frames} frames): cxrlt reads one radiograph per file; export the "
                "frame you mean as its own file")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in GREY + COLOUR:
        return (f"{name}: PhotometricInterpretation {photometric or '(missing)'} is not a radiograph's (MONOCHROME1, "
                "MONOCHROME2, or RGB/YBR for a scanned film); convert it to a grey PNG")
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows * columns > MAX_IMAGE_PIXELS:
        return (f"{name}: {columns} x {rows} px is more than cxrlt decodes ({MAX_IMAGE_PIXELS:,} pixels); "
                "downscale it first")
    if rows == 0 or columns == 0:
        return f"{name}: the header gives no image size (Rows x Columns {rows} x {columns})"
    ts = transfer_syntax(ds)
    problem = decoder_problem(ts)
    if problem:
        return f"{name}: {problem}"
    return None


def decoder_problem(ts) -> str | None:
    """Why no installed plugin can decode this transfer syntax, or None."""
    from pydicom.pixels.decoders.base import get_decoder

    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        return (f"transfer syntax {ts.name if ts.name != str(ts) else ts} is not one pydicom decodes; convert the "
                "file to an uncompressed DICOM (dcmdjpeg / gdcmconv --raw) or to PNG")
    if not decoder.is_available:
        return (f"transfer syntax {ts.name} needs a decoder plugin that is not installed "
                f"({'; '.join(decoder.missing_dependencies) or 'none available'}); install it or convert the file "
                "to an uncompressed DICOM (dcmdjpeg / gdcmconv --raw)")
    return None


def has_stored_window(ds) -> bool:
    """A VOI LUT Sequence with data, or WindowCenter and WindowWidth (what apply_voi_lut would use)."""
    seq = ds.get("VOILUTSequence")
    if seq and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None:
        return True
    return ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None


def plan(ds, window: str) -> str:
    """What decoding will do to this file's pixels, in words (the pre-flight check's `action` column)."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    steps = []
    if photometric in COLOUR:
        steps.append(f"{photometric} to grey (luma)")
    if ds.get("ModalityLUTSequence"):
        steps.append("modality LUT")
    elif "RescaleSlope" in ds and "RescaleIntercept" in ds:
        steps.append(f"rescale x{_num(ds.RescaleSlope)} {_num(ds.RescaleIntercept):+}".replace("+-", "-"))
    if photometric in GREY:
        steps.append(_voi_words(ds, window))
    if photometric == "MONOCHROME1":
        steps.append("MONOCHROME1 inverted (bone bright)")
    return "; ".join(steps)


def _num(v) -> float | int:
    v = float(v)
    return int(v) if v.is_integer() else v


def _voi_words(ds, window: str) -> str:
    if window == "stored":
        seq = ds.get("VOILUTSequence")
        if seq and seq[0].get("LUTData") is not None:
            return "stored VOI LUT"
        if has_stored_window(ds):
            return f"stored window C {_num(_first(ds.WindowCenter))} W {_num(_first(ds.WindowWidth))}"
        return "no stored window: percentile stretch (0.5..99.5 %)"
    return {"full_range": f"full range of {ds.get('BitsStored', '?')} stored bits", "minmax": "min..max stretch",
            "percentile": "percentile stretch (0.5..99.5 %)"}[window]


def _first(value):
    try:
        return value[0] if not isinstance(value, (str, bytes)) else value
    except (TypeError, IndexError):
        return value


# ------------------------------------------------------------------------------------------ pixels

def to_grey(ds, window: str = "stored", name: str = "") -> np.ndarray:
    """float32 [h, w, 1] in 0..1, bone bright: modality LUT, VOI (`window`), MONOCHROME1 inverted."""
    check_window(window)
    name = name or "DICOM"
    if "PixelData" not in ds and transfer_syntax(ds).is_encapsulated:
        # pydicom drops compressed pixel data that breaks off before its sequence delimiter (with a warning);
        # a compressed transfer syntax exists only for pixel data, so the element was there and is cut short.
        raise DicomError(f"{name}: truncated DICOM: the compressed pixel data breaks off before its end marker; "
                         "copy the file again from the archive")
    problem = refusal(ds, name)
    if problem:
        raise DicomError(problem)
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    try:
        pixels = ds.pixel_array
    except Exception as err:  # noqa: BLE001 - pydicom/plugins raise ValueError, RuntimeError, AttributeError, ...
        text = str(err)
        if "less than expected" in text or "no 'Pixel Data'" in text:
            raise DicomError(f"{name}: truncated DICOM: the pixel data is shorter than Rows x Columns x bits "
                             "promise; copy the file again from the archive") from None
        raise DicomError(f"{name}: the pixel data cannot be decoded ({transfer_syntax_name(ds)}: "
                         f"{' '.join(text.split())[:240] if text else type(err).__name__}); convert it to an "
                         "uncompressed DICOM (dcmdjpeg / gdcmconv --raw) or to PNG") from None
    if photometric in COLOUR:
        return _colour_to_grey(pixels, ds)
    image = _voi(np.asarray(pixels), ds, window)
    if photometric == "MONOCHROME1":
        image = 1.0 - image
    return image.astype(np.float32)[..., None]


def _colour_to_grey(rgb: np.ndarray, ds) -> np.ndarray:
    """pydicom returns RGB (YBR converted); grey by TensorFlow's luma weights, scaled by the stored bit range."""
    top = float(2 ** int(ds.get("BitsStored", 8)) - 1)
    grey = np.tensordot(rgb.astype(np.float64), np.asarray(LUMA), axes=([-1], [0])) / top
    return np.clip(grey, 0.0, 1.0).astype(np.float32)[..., None]


def modality_range(ds) -> tuple[float, float]:
    """The values the Modality LUT can output for this file's stored bits: the range `apply_windowing` maps
    a window onto, and input.dicom_window full_range's 0..1 (PS3.3 C.11.1, C.11.2.1.2)."""
    seq = ds.get("ModalityLUTSequence")
    if seq:
        return 0.0, float(2 ** int(seq[0].LUTDescriptor[2]) - 1)
    bits = int(ds.BitsStored)
    lo, hi = (0, 2 ** bits - 1) if int(ds.get("PixelRepresentation", 0)) == 0 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
    return float(lo), float(hi)


def _voi(stored: np.ndarray, ds, window: str) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing

    values = apply_modality_lut(stored, ds)
    if window == "stored" and has_stored_window(ds):
        seq = ds.get("VOILUTSequence")
        if seq and seq[0].get("LUTData") is not None and seq[0].get("LUTDescriptor") is not None:
            # A LUT indexes integers; a rescale with a fractional slope gives floats: round them first.
            indices = values if np.issubdtype(values.dtype, np.integer) else np.rint(values).astype(np.int64)
            out = apply_voi(indices, ds).astype(np.float64)
            lut = _lut_values(seq[0], ds)
            return _stretch(out, float(lut.min()), float(lut.max()))
        return _stretch(apply_windowing(values, ds), *modality_range(ds))
    values = np.asarray(values, np.float64)
    if window == "full_range":
        return _stretch(values, *modality_range(ds))
    if window == "minmax":
        return _stretch(values, float(values.min()), float(values.max()))
    lo, hi = np.quantile(values, [p / 100.0 for p in PERCENTILES], method="inverted_cdf")  # stored w/o window too
    return _stretch(values, float(lo), float(hi))


def _lut_values(item, ds) -> np.ndarray:
    """A VOI LUT's entries as numbers (US list, or OW bytes in the file's byte order)."""
    data = item.LUTData
    if isinstance(data, (bytes, bytearray)):
        little = transfer_syntax(ds).is_little_endian
        return np.frombuffer(bytes(data), dtype="<u2" if little else ">u2")
    return np.asarray(data if isinstance(data, (list, tuple)) else [data], dtype=np.float64)


def _stretch(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """lo..hi -> 0..1, clipped; a flat image (hi <= lo) is zeros, as a flat 16-bit PNG decodes."""
    values = np.asarray(values, np.float64)
    if not hi > lo:
        return np.zeros_like(values)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


# ------------------------------------------------------------------------------------------ entry points

def read(path, window: str = "stored") -> np.ndarray:
    """A DICOM file -> float32 [h, w, 1] in 0..1 (what the pipeline decodes, before the resize)."""
    return to_grey(read_dataset(path), window, str(path))


def decode(data: bytes, window: str = "stored", name: bytes | str = b"") -> np.ndarray:
    """DICOM bytes -> float32 [h, w, 1] in 0..1: the function pipeline.decode_grey runs in tf.numpy_function.
    Raises DicomError (a ValueError: TensorFlow reports it as InvalidArgumentError) naming the file."""
    data, name = _plain(data), _plain(name)  # tf.numpy_function passes a string tensor as a 0-d object array
    name = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
    return to_grey(read_dataset(data, name or "DICOM bytes"), window, name or "DICOM bytes")


def _plain(value):
    if isinstance(value, np.ndarray):
        value = value.item()
    return bytes(value) if isinstance(value, (np.bytes_, bytearray)) else value


# ------------------------------------------------------------------------------------------ header check

@dataclass
class HeaderInfo:
    """What the pre-flight check reports for a DICOM file, from its header (no pixel decoded)."""

    width: int = 0
    height: int = 0
    photometric: str = ""
    transfer_syntax: str = ""
    action: str = ""
    problem: str | None = None   # bad: why
    warning: str | None = None   # usable, but the user should know


def inspect(path, window: str = "stored") -> HeaderInfo:
    """The header check of one DICOM file: attributes up to the pixel data, the pixel data element's own
    header, and (like a JPEG's end-of-image marker) whether the file is long enough to hold the pixels:
    a native element's declared length must fit in the file; encapsulated (compressed) pixel data must end
    with its sequence delimiter. Reads the header and the last 1 KiB; decodes nothing."""
    info = HeaderInfo()
    name = str(path)
    try:
        with open(path, "rb") as fh:
            if not is_dicom_bytes(fh.read(MAGIC_OFFSET + 4)):
                raise DicomError(f"{name}: not a DICOM Part 10 file (no 'DICM' marker at byte 128); export it from "
                                 "the archive as a DICOM file, or as PNG/JPEG")
            fh.seek(0)
            ds = read_dataset(fh, name, stop_before_pixels=True)
            pixels = _pixel_element(fh, ds)  # pydicom stopped at the pixel data element: the file is there
    except DicomError as err:
        info.problem = str(err).removeprefix(f"{name}: ")
        return info
    info.width, info.height = int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0)
    info.photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    info.transfer_syntax = transfer_syntax_name(ds)
    problem = refusal(ds, name, has_pixels=pixels != "missing")
    if problem:
        info.problem = problem.removeprefix(f"{name}: ")
        return info
    if pixels == "truncated":
        info.problem = "truncated DICOM: the file ends before its pixel data does; copy it again from the archive"
        return info
    info.action = plan(ds, window)
    if info.photometric.upper() in COLOUR:
        info.warning = f"{info.photometric} DICOM: a colour image (a scanned film?), decoded to grey"
    return info


def _pixel_element(fh, ds) -> str:
    """present | missing | truncated | unknown (deflated files are compressed as a whole: decoding tells),
    read from the element header at the file's position."""
    ts = transfer_syntax(ds)
    if ts.is_deflated:
        return "unknown"
    at = fh.tell()
    head = fh.read(12)
    size = os.fstat(fh.fileno()).st_size
    if len(head) < 8:
        return "missing"
    endian = "<" if ts.is_little_endian else ">"
    group, element = struct.unpack(endian + "HH", head[:4])
    if (group, element) not in ((0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)):
        return "missing"
    if ts.is_implicit_VR:
        length, start = struct.unpack(endian + "I", head[4:8])[0], at + 8
    elif head[4:6] in (b"OB", b"OW", b"OF", b"OD", b"OL", b"UN"):
        length, start = struct.unpack(endian + "I", head[8:12])[0], at + 12
    else:
        length, start = struct.unpack(endian + "H", head[6:8])[0], at + 8
    if length == 0xFFFFFFFF:  # encapsulated: fragments, then the sequence delimiter
        fh.seek(max(0, size - 1024))
        return "present" if _SEQUENCE_END in fh.read() else "truncated"
    return "present" if start + length <= size else "truncated"


def grey_uint8(path, window: str = "stored") -> np.ndarray:
    """uint8 [h, w] of a DICOM as displayed."""
    return np.round(read(path, window)[..., 0] * 255.0).astype(np.uint8)


def grey_picture(path, window: str = "stored"):
    """Any image file as a PIL grey picture, a DICOM as the pipeline sees it (window, MONOCHROME1 inverted):
    the background of Grad-CAM overlays and report thumbnails."""
    from PIL import Image

    if is_dicom_file(path):
        return Image.fromarray(grey_uint8(path, window))
    with Image.open(path) as img:
        return img.convert("L")
