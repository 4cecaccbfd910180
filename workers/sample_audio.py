"""A small, real WAV file (a sine tone) for the NanoGPT simulator and the tests; stdlib only.

The simulator serves it as a finished job's audio, so downloaders and storage are exercised with
bytes that real audio tools can open, and tests can compare sha256 digests end to end.
"""

from __future__ import annotations

import array
import functools
import io
import math
import struct
import sys
import wave

DEFAULT_DURATION_S = 0.4  # a real file (12.8 kB) that still drips through a test in well under 1 s
DEFAULT_SAMPLE_RATE_HZ = 16_000  # speech-quality rate; keeps the file small
DEFAULT_FREQUENCY_HZ = 440.0  # concert A: audible and obviously synthetic
WAV_HEADER_BYTES = 44  # the canonical RIFF + fmt + data header of a PCM WAV
_SAMPLE_WIDTH_BYTES = 2  # 16-bit PCM, the most widely readable sample format
_PEAK_FRACTION = 0.5  # half of full scale, so rounding can never clip
_INT16_MAX = 32_767


@functools.lru_cache(maxsize=8)
def make_wav(
    duration_s: float = DEFAULT_DURATION_S,
    sample_rate_hz: int = DEFAULT_SAMPLE_RATE_HZ,
    frequency_hz: float = DEFAULT_FREQUENCY_HZ,
) -> bytes:
    """Return a complete 16-bit mono PCM WAV file holding a sine tone.

    The result is cached (bytes are immutable), so every caller asking for the default file gets
    the very same bytes, which is what lets tests compare digests of served audio.

    Raises:
        ValueError: a negative or non-finite duration or frequency, or a sample rate below 1 Hz.
    """
    if not math.isfinite(duration_s) or duration_s < 0:
        raise ValueError(f"duration_s must be a finite number >= 0, got {duration_s!r}")
    if sample_rate_hz < 1:
        raise ValueError(f"sample_rate_hz must be >= 1, got {sample_rate_hz!r}")
    if not math.isfinite(frequency_hz) or frequency_hz < 0:
        raise ValueError(f"frequency_hz must be a finite number >= 0, got {frequency_hz!r}")

    n_frames = round(duration_s * sample_rate_hz)
    peak = _PEAK_FRACTION * _INT16_MAX
    radians_per_frame = 2 * math.pi * frequency_hz / sample_rate_hz
    samples = array.array(
        "h", (round(peak * math.sin(radians_per_frame * i)) for i in range(n_frames))
    )
    if sys.byteorder == "big":
        samples.byteswap()  # WAV sample data is little-endian whatever the host is

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(_SAMPLE_WIDTH_BYTES)
        wav.setframerate(sample_rate_hz)
        wav.writeframes(samples.tobytes())
    return buffer.getvalue()


def wav_header(data_bytes: int, sample_rate_hz: int = DEFAULT_SAMPLE_RATE_HZ) -> bytes:
    """Return the 44-byte header of a 16-bit mono PCM WAV whose data chunk is `data_bytes` long.

    Used to serve large bodies that look like WAV files without building them in memory.
    """
    if data_bytes < 0:
        raise ValueError(f"data_bytes must be >= 0, got {data_bytes!r}")
    byte_rate = sample_rate_hz * _SAMPLE_WIDTH_BYTES
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        WAV_HEADER_BYTES - 8 + data_bytes,  # RIFF size excludes the 8-byte RIFF chunk header
        b"WAVE",
        b"fmt ",
        16,  # size of the PCM fmt chunk
        1,  # format tag: PCM
        1,  # channels
        sample_rate_hz,
        byte_rate,
        _SAMPLE_WIDTH_BYTES,  # block align: bytes per frame
        _SAMPLE_WIDTH_BYTES * 8,  # bits per sample
        b"data",
        data_bytes,
    )
