"""Triton kernels for gptoss, each beside the plain-torch reference it is tested against."""
