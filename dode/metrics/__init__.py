"""Sample-quality metrics: FID exactly as pytorch-fid computes it (``fid``, ``features``), Fréchet distances on
other features (the digits classifier: ``digits``; the guard's independent one: ``guard_features``; the loop
that trains both: ``classifier``), where statistics come from (``sources``, ``reference``) and a sweep's scores
(``scores``).

May import: ``dode.common``, ``dode.core``, ``dode.models``, ``dode.store``.
"""
