"""Defect synthesis: put a labelled synthetic defect on a defect-free tile at the model's resolution.

Every synthesizer is `(tile, rng) -> SynthResult | None` (see `base`): Perlin blobs (`perlin`),
warp/weft streaks (`streaks`) and cut-paste of library crops with Poisson blending (`cutpaste`,
`library`); `registry.default_synthesizers` is the set the dataset builder uses.
"""
