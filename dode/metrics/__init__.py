"""Sample-quality metrics: FID exactly as pytorch-fid computes it, and Fréchet distances on other features."""
