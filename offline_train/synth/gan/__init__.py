"""The Multistage GAN defect generator (after the texture-conditioned, two-stage GAN of IEEE TIP 2020).

- `texture`: the texture code of a defect-free patch: Gram matrices of multi-layer features (a local
  VGG16 file or a seeded random-filter network), upper triangle, signed square root, a seeded
  random projection to a fixed width.
- `nets`: stage 1 `DefectGenerator` (noise + class + texture code -> defect patch and soft mask),
  stage 2 `FusionNet` (pasted patch + mask -> fused patch, composited inside the dilated mask only),
  and the `Critic` both stages train against; small residual blocks, no normalization.
- `losses`: R3GAN's relativistic pairing loss with zero-centred R1/R2 penalties (gamma scheduled),
  or the classic non-saturating loss; `augment`: differentiable augmentation for small data.
- `data`: real (patch, mask, class, texture patch) samples from a `loomsight dataset` directory's
  exact label masks, or from a folder of defect crops; clean fabric patches for stage 2.
- `checkpoint`, `train`: resumable training with sample grids; `synthesizer.GanSynthesizer` plugs a
  checkpoint into the synthesizer interface (name "gan"); `commands`: `loomsight gan train`.

Nothing here imports torch until a module below is imported.
"""
