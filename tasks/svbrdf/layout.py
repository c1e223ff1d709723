"""The SVBRDF map layout, defined once: which channels hold what, and the bounds each channel lives in.

Maps x: (B, 9, H, W). Channels 0:3 diffuse albedo and 3:6 specular albedo (F0), both in gamma space, in [0, 1];
channel 6 roughness, linear, in [MIN_ROUGHNESS, 1]; channels 7:9 the normal (nx, ny) in [-1, 1].
"""
from __future__ import annotations

DIFFUSE, SPECULAR, ROUGHNESS, NORMAL = slice(0, 3), slice(3, 6), slice(6, 7), slice(7, 9)
CHANNELS = 9
MIN_ROUGHNESS = 0.02  # GGX alpha = r ** 2 stays above 4e-4: the specular lobe never degenerates to a spike
LOW = [0.0] * 6 + [MIN_ROUGHNESS, -1.0, -1.0]
HIGH = [1.0] * CHANNELS
