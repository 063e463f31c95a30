"""Model FLOPs utilisation: achieved training FLOP/s over the device's peak bf16 FLOP/s."""
from __future__ import annotations

# Dense bf16 tensor-core peaks from the vendors' datasheets (SXM parts), in FLOP/s.
PEAK_BF16 = {
    "H200": 989.4e12,
    "H100": 989.4e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
}


def flops_per_token(n_params: int, n_layers: int, d_model: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the weights plus attention's 12·L·d·T (PaLM, app. B)."""
    return 6.0 * n_params + 12.0 * n_layers * d_model * seq_len


def device_peak_flops(device_name: str) -> float | None:
    """Peak bf16 FLOP/s for a known accelerator name, else None (no MFU is reported)."""
    for key, peak in PEAK_BF16.items():
        if key in device_name:
            return peak
    return None


def mfu(tokens_per_s: float, per_token: float, peak: float | None) -> float | None:
    return None if not peak else tokens_per_s * per_token / peak
