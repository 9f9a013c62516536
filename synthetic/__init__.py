"""Synthetic corpora (VisionCLIP-style): a conditional diffusion generator trained at a site
(optionally with DP-SGD), a fast sampler that writes images with expert-dictionary captions as a
manifest, a memorisation audit, and an export that refuses corpora failing the audit."""
