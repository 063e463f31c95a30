from components.train.flops import device_peak_flops, flops_per_token, mfu


def test_flops_per_token_follows_6n_plus_attention():
    # 124M params, 12 layers, d=768, T=1024: 6*124e6 + 12*12*768*1024 = 744e6 + 113.2e6
    assert flops_per_token(124_000_000, 12, 768, 1024) == 6 * 124e6 + 12 * 12 * 768 * 1024


def test_mfu_only_for_known_devices():
    assert device_peak_flops("NVIDIA H200") == 989e12
    assert device_peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert device_peak_flops("cpu") is None and mfu(1e5, 1e9, None) is None
    assert mfu(100_000, 989e7, 989e12) == 1.0
